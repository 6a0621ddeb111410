"""Genome-wide association studies whose outputs equal PLINK 1.9 on the pooled data.

Modules (one concern each):

- :mod:`.plink` — PLINK 1.9's side, ported: its filesets (:mod:`.plink.fileset`), number
  formats, p-values, constants, and the count, QC and regression statistics.
- :mod:`.genotypes` — a site's genotypes (.bed, .pgen, .vcf) in chunks.
- :mod:`.phenofiles` — a site's phenotypes and covariates (PREFIX.pheno, PREFIX.cov).
- :mod:`.align` — variant matching across sites, allele flips, exclusions.
- :mod:`.mpc` — the statistics inside MPyC (``reveal: statistics``).
- :mod:`.job` — the job's parts: what sites share, what parties deliver or open.
- :mod:`.sizes` — field and bit sizes of the shared values; :mod:`.a1` — the A1 choice.
- :mod:`.phenotypes` — case/control or quantitative, and which tests run on it.
- :mod:`.site` — a site's shares; :mod:`.pooling` — the parties' aligned sums.
- :mod:`.finalize`, :mod:`.opened` — the analyst's PLINK files (aggregates, statistics).
- :mod:`.pca` — PLINK 2's PCA as subspace iteration over sums of sites;
  :mod:`.pcarounds` — its jobs, the sites' scores and the PCs as covariates.

The data model shared by all of them is documented in :mod:`.plink.counts` (genotype count
tensor) and :mod:`.plink.regression` (cross-product statistics).
"""
