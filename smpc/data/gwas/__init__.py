"""A small simulated multi-site GWAS cohort for ``smpc demo`` (see README.md)."""
