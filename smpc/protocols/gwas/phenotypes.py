"""A phenotype's kind (case/control or quantitative) and which tests run on it."""

from __future__ import annotations

from typing import Any

import numpy as np

PHENOTYPES = ("case/control", "quantitative")
"""The phenotype kinds a job's sites may have (:func:`phenotype_kind`)."""
NO_PHENOTYPE = "none"
"""What a site declares when none of its samples has a phenotype value (a VCF's .fam
phenotype): the other sites decide the kind."""


def phenotype_kind(pheno: np.ndarray) -> str:
    """What a site declares of its phenotype: one of :data:`PHENOTYPES`, or
    :data:`NO_PHENOTYPE` when no sample has a value."""
    if np.isnan(pheno).all():
        return NO_PHENOTYPE
    return "case/control" if is_case_control(pheno) else "quantitative"


def phenotype_problem(spec: Any, phenotype: str) -> str:
    """Why the spec's tests do not run on the sites' pooled ``phenotype`` ("" if they do).

    The parties check it as soon as they know the sites' declarations (before any
    statistic is opened), the analyst again before writing; the refusals follow PLINK
    1.9, which refuses ``--model``/``--logistic`` on a quantitative and ``--linear`` on a
    case/control phenotype.
    """
    tests = set(spec.tests)
    source = f"pheno: {spec.pheno}" if spec.pheno else "the .fam phenotype"
    if phenotype == NO_PHENOTYPE:
        return (
            f"{spec.name}: no sample of any site has a value of {source} (a VCF carries "
            "no .fam phenotype): give pheno: COLUMN of the sites' PREFIX.pheno"
        )
    binary_only = sorted(tests & {"model", "logistic"})
    if phenotype == "quantitative" and binary_only:
        return (
            f"{spec.name}: {' and '.join(binary_only)} need a case/control phenotype (1/2); "
            f"{source} is quantitative (use linear, or assoc for .qassoc)"
        )
    if phenotype == "quantitative" and "assoc" in tests and spec.pheno is None:
        return (
            f"{spec.name}: assoc on a quantitative trait (.qassoc) needs it as pheno: COLUMN "
            "of the sites' PREFIX.pheno"
        )
    if phenotype == "case/control" and "linear" in tests:
        return (
            f"{spec.name}: linear needs a quantitative phenotype; {source} is case/control "
            "(1/2): use logistic"
        )
    return ""


def is_case_control(pheno: np.ndarray) -> bool:
    """PLINK 1.9: a phenotype is case/control when every value present is 1 or 2."""
    present = pheno[~np.isnan(pheno)]
    return bool(np.isin(present, (1.0, 2.0)).all())
