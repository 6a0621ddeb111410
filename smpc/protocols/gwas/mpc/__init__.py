"""The MPyC side of the GWAS: what a party's session computes and opens (reveal: statistics)."""
