"""PLINK 1.9's side of a GWAS: its filesets, statistics, constants and file formats, ported.

- :mod:`.constants` — PLINK's numerical constants (its filter epsilons).
- :mod:`.fileset` — a site's variant and sample tables (.bim/.fam, .pvar/.psam, VCF).
- :mod:`.formats` — PLINK 1.9's number formatting and table layout.
- :mod:`.pvalues` — the chi-square and t distributions' tails, as PLINK computes them.
- :mod:`.counts` — allele-count statistics: ``assoc``/``qassoc``, ``model``.
- :mod:`.qc` — ``hardy`` (exact test), ``freq``, ``missing`` and the filters.
- :mod:`.regression` — ``linear`` and ``logistic`` from pooled sufficient statistics
  (a port of PLINK's regression routines, which keeps their structure and length).
"""
