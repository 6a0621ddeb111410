"""A GWAS job's parts: what every site shares and what every party delivers or opens.

**Sites** (:func:`.site.site_statistics`) read their fileset (``--site NAME=PREFIX``), and
share, in their own variant order and allele orientation:

- ``site`` — public (t = 0, every party reads it; the broker sees ciphertext): the
  variant table (CHR, SNP, CM, BP, A1, A2 as in its .bim) and whether its phenotype is
  case/control or quantitative. Variant identities are not patient data; an allele
  ``0`` tells that no sample of the site carries it, which PLINK's own .bim tells too.
  With ``reveal: statistics`` also ``a1_minor`` (:func:`.a1.a1_is_minor`): whether every
  A1 is a minor allele of the site's founders, as a PLINK-written .bim has it.
- ``counts`` — genotype counts per variant × phenotype class × founder × genotype
  (:mod:`.plink.counts`), integers;
- ``linear.*`` — per-variant cross products of x = [1, g, covariates] and y over the
  samples with a call, a phenotype and every covariate (:mod:`.plink.regression`), each real
  as two integers, ``.hi`` = floor(v) and ``.lo`` = round((v - floor v)·2^32), so the
  pooled sums are exact to 2^-33 per site while every word stays within GF(2^61 - 1)'s
  fast field (one 16-bit fixed point changed PLINK's 4th printed digit where a
  regression cancels); ``linear`` in ``tests``;
- ``qt.*`` — the same without covariates for ``assoc`` on a quantitative phenotype.

**Parties** (:func:`.pooling.combine`) align the sites' tables (:mod:`.align`), rearrange
each site's shares into the reference order and orientation (:mod:`.combine`) and add them.
With ``reveal: aggregates`` each party seals its share of the pooled statistics and the
alignment to the analyst.

**The analyst** (:func:`.finalize.finalize`) reconstructs, takes A1 as the founders' minor
allele as PLINK 1.9 does, applies the quality-control filters and writes PLINK 1.9's files.
"""

from __future__ import annotations

from typing import Any, Literal

from smpc.protocols.gwas.sizes import (
    COUNT_BITS,
    CROSS_INT_BITS,
    LIMB_BITS,
    PUBLIC_BITS,
    REG_ENTRY_BITS,
    assoc_modulus,
    share_modulus,
)
from smpc.wire.messages import JobInput

CROSS_PARTS = ("xtx", "xty", "yty")
RegressionGroup = Literal["linear", "qt"]  # .assoc.linear, and the .qassoc of a quantitative assoc
RATIOS = ("f_a", "f_u", "chisq", "or")
TEST_EXTENSION = {
    "assoc": "assoc", "model": "model", "hardy": "hwe", "freq": "frq", "missing": "lmiss",
    "linear": "assoc.linear", "logistic": "assoc.logistic", "pca": "eigenval",
}  # fmt: skip  # the .assoc columns opened as exact fractions


def statistics_mode(spec: Any) -> bool:
    """``reveal: statistics``: the statistics are computed and opened inside MPyC."""
    return "statistics" in spec.reveal


def regression_groups(spec: Any, phenotype: str | None = None) -> dict[RegressionGroup, int]:
    """The cross-product groups a spec needs, with their design width k = len(x).

    ``qt`` is ``assoc``'s quantitative reading of a ``pheno:`` column: the sites share
    its cross products whatever their phenotype (a job is built before they declare
    it), and a declared ``case/control`` phenotype does not read it.
    """
    groups: dict[RegressionGroup, int] = {}
    if "linear" in spec.tests:
        groups["linear"] = 2 + len(spec.covar)
    if "assoc" in spec.tests and spec.pheno is not None and phenotype != "case/control":
        groups["qt"] = 2
    return groups


def real_inputs(name: str, statistics: bool) -> list[JobInput]:
    """How a site shares a real-valued sum: with ``reveal: statistics`` one scaled integer
    in the 192-bit field (:func:`.sizes.scale_cross_products`), else exact hi/lo words in the
    job's field (:func:`.sizes.split_limbs`)."""
    if statistics:
        return [JobInput(name=name, frac_bits=0, int_bits=REG_ENTRY_BITS, modulus=share_modulus())]
    return [
        JobInput(name=f"{name}.hi", frac_bits=0, int_bits=CROSS_INT_BITS),
        JobInput(name=f"{name}.lo", frac_bits=0, int_bits=LIMB_BITS + 1),
    ]


def job_parts(spec: Any) -> tuple[tuple[JobInput, ...], tuple[JobInput, ...]]:
    """The inputs every site shares and the outputs every party delivers."""
    public = JobInput(name="site", frac_bits=0, int_bits=PUBLIC_BITS, public=True)
    counts = JobInput(name="counts", frac_bits=0, int_bits=COUNT_BITS)
    alignment = JobInput(name="alignment", frac_bits=0, int_bits=PUBLIC_BITS, public=True)
    statistics = statistics_mode(spec)
    cross = [
        i
        for group in regression_groups(spec)
        for part in CROSS_PARTS
        for i in real_inputs(f"{group}.{part}", statistics)
    ]
    merge = merge_inputs(spec.filters is not None and spec.filters.mind is not None)
    if statistics:
        inputs = [public, counts, *merge, *cross]
        if "assoc" in spec.tests:  # a case/control phenotype's (whichever the sites have)
            modulus, _ = assoc_modulus()
            inputs.append(JobInput(name="alleles", frac_bits=0, int_bits=40, modulus=modulus))
        return tuple(inputs), (alignment, *statistics_outputs(spec))
    return (public, counts, *merge, *cross), (alignment, counts, *merge, *cross)


def merge_inputs(mind: bool) -> tuple[JobInput, ...]:
    """With ``filters: {mind}``, ``merge``: each site's :func:`.align.merge_excess`, the
    pooled .bim's allele order over every sample (the counts hold the kept ones only)."""
    return (JobInput(name="merge", frac_bits=0, int_bits=COUNT_BITS),) if mind else ()


def alignment_parts() -> tuple[tuple[JobInput, ...], tuple[JobInput, ...]]:
    """The preliminary job of ``filters: {mind}``: variant tables in, alignment out."""
    public = JobInput(name="site", frac_bits=0, int_bits=PUBLIC_BITS, public=True)
    alignment = JobInput(name="alignment", frac_bits=0, int_bits=PUBLIC_BITS, public=True)
    return (public,), (alignment,)


def statistics_outputs(spec: Any, phenotype: str | None = None) -> list[JobInput]:
    """What the parties open with ``reveal: statistics`` (:mod:`.mpc.session`): the one place
    that decides it, for the job and for the session alike.

    A job is built before any site declares its phenotype, so the job announces the
    outputs of either kind (``phenotype`` None): ``assoc`` reads a ``pheno:`` column as
    case/control (``.assoc``: the ``assoc.*`` ratios) or as quantitative (``.qassoc``:
    the ``qt`` regression). Once the sites have declared their kind (one of
    :data:`PHENOTYPES`), the session opens ``statistics_outputs(spec, kind)`` and every
    party delivers the announced outputs that kind does not read as empty arrays
    (:func:`unread_outputs`): each party delivers exactly the outputs the job names.
    """
    names = ["a1.merge", "a1.swap"]
    if spec.filters and (spec.filters.geno is not None or spec.filters.maf is not None):
        names += ["filter.geno", "filter.maf"]
    if spec.filters and spec.filters.hwe is not None:
        names += ["filter.hwe"]
    for test, opened in (
        ("model", ["model.counts"]),
        ("hardy", ["hardy.counts"]),
        ("freq", ["freq.alleles"]),
        ("missing", ["missing.counts"]),
    ):
        if test in spec.tests:
            names += opened
    for group in regression_groups(spec, phenotype):
        ratios = ("beta", "t2") if group == "linear" else ("beta", "se2")
        names += [f"{group}.nmiss"] + [f"{group}.{r}.{p}" for r in ratios for p in ("num", "den")]
    if "assoc" in spec.tests and phenotype != "quantitative":  # .assoc's opened ratios
        names += [f"assoc.{s}.{p}" for s in RATIOS for p in ("num", "den")]
    return [JobInput(name=n, frac_bits=0, int_bits=200) for n in names]


def unread_outputs(spec: Any, phenotype: str) -> list[str]:
    """The outputs a job announces that the sites' declared ``phenotype`` does not read
    (:func:`statistics_outputs`): the parties deliver them as empty arrays."""
    read = {o.name for o in statistics_outputs(spec, phenotype)}
    return [o.name for o in statistics_outputs(spec) if o.name not in read]
