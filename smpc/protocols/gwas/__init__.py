"""Genome-wide association studies whose outputs equal PLINK 1.9 on the pooled data.

Modules (one concern each):

- :mod:`.plink_format` — PLINK 1.9's number formatting and table layout.
- :mod:`.counts` — allele-count statistics: ``assoc``/``qassoc``, ``model``.
- :mod:`.qc` — ``hardy`` (exact test), ``freq``, ``missing``.
- :mod:`.regression` — ``linear`` and ``logistic`` from pooled sufficient statistics.
- :mod:`.sitedata` — a site's genotypes (.bed, .pgen, .vcf), phenotypes and covariates.
- :mod:`.align` — variant matching across sites, allele flips, exclusions.
- :mod:`.mpc` — the statistics inside MPyC (``reveal: statistics``).

The data model shared by all of them is documented in :mod:`.counts` (genotype count
tensor) and :mod:`.regression` (cross-product statistics).
"""
