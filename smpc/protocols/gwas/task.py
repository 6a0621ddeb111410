"""The GWAS's part of an MPyC session task: the pooled files a party's session reads and
the tests it runs (``SessionTask.payload`` of a scan or a Newton round)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegressionSession(_Strict):
    """A secure regression's pooled scaled cross products
    (:mod:`smpc.protocols.gwas.mpc.session`)."""

    group: Literal["linear", "qt"]  # .assoc.linear, or the .qassoc of a quantitative assoc
    k: int = Field(ge=2)  # columns of x = [1, g, covariates...]
    share_modulus: int  # the field the sites shared them in (192 bits)
    samples: int = Field(ge=0)  # what the sites declare: the regression field's size
    pheno_bits: int = Field(ge=0)  # |phenotype| < 2^pheno_bits
    covar_bits: list[int] = Field(default_factory=list)  # per covariate, likewise
    beta_scale_bits: int = Field(ge=0)  # BETA = opened ratio / 2^bits (y was scaled)
    files: dict[str, str]  # xtx (V, k, k), xty (V, k), yty (V,): little-endian words


class GwasSession(_Strict):
    """A GWAS's pooled, aligned shares (files in the session directory) and its tests."""

    variants: int = Field(ge=0)
    samples: int = Field(default=0, ge=0)  # what the agreed sites declare, in all
    tests: list[str]
    # per variant "+"/"-": the founders' A2 minus A1 homozygotes are >= 0 / <= 0 as
    # every site's public claim implies; "?" (or no string): a secure comparison decides
    a1_side: str = ""
    counts: str  # (V, 3, 2, 4) genotype counts, GF(2^61 - 1) little-endian words
    alleles: str | None = None  # (V, 4) case/control allele counts in the assoc field
    # filters: {mind}: (V, 2) A2 minus A1 homozygotes over every sample and every founder
    # (.align.merge_excess): the pooled fileset's .bim order
    merge: str | None = None
    assoc_modulus: int | None = None
    assoc_field_bits: int | None = None
    geno: float | None = None  # filters computed inside MPyC
    maf: float | None = None
    hwe: float | None = None  # needs hardy: on the counts .hwe prints
    quantitative: bool = False
    regression: list[RegressionSession] = Field(default_factory=list)


class NewtonSession(_Strict):
    """A logistic Newton round's pooled shares
    (:func:`smpc.protocols.gwas.mpc.session.run_newton`)."""

    variants: int = Field(ge=0)
    k: int = Field(ge=2)
    share_modulus: int  # the field the sites shared the gradient and Hessian in
    modulus: int  # the Newton field, where the session converts them
    files: dict[str, str]  # n (V,) in the job's field; grad (V, k), hess (V, k, k)
