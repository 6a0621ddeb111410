"""The MPyC side of the GWAS: what a party's session computes and opens (reveal: statistics)."""

# These modules run in the session process but never import MPyC at module level: every
# coroutine takes the runtime ``mpc`` first, and every party must await the same calls in
# the same order. MPyC internals are reached only through :mod:`smpc.mpc.mpyc_adapter`.
# What is opened, and why the fields are as wide as they are: docs/gwas-internals.md.
