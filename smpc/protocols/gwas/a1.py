"""Which allele is A1: the sites' minor-allele claims, the known sides of the pooled choice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from smpc.protocols.gwas.plink.fileset import VariantTable


def a1_is_minor(counts: np.ndarray) -> bool:
    """Whether every variant's A1 is a minor allele of the site's founders (ties count).

    ``plink --make-bed`` writes each .bim so (A1 is the founders' minor allele), so for
    such a site this tells nothing its public variant table does not. When every site
    says so, the pooled founders' A1 alleles cannot exceed their A2 alleles wherever the
    sites' A1 alleles agree, and the parties need only MPyC's cheap zero test to learn
    the pooled A1 choice there (:func:`a1_sides`); a secure comparison only elsewhere.
    """
    founders = counts[:, :, 1, :].sum(axis=1)  # (V, genotype): A1A1, het, A2A2, missing
    return bool(np.all(founders[:, 0] <= founders[:, 2]))


def a1_sides(claims: Sequence[bool], flips: Sequence[np.ndarray], variants: int) -> str:
    """Per reference variant, the side of 0 the founders' A2 minus A1 homozygotes are on:
    ``+`` (≥ 0), ``-`` (≤ 0) or ``?`` (unknown, a secure comparison decides).

    Known when every site claims its A1 minor (:func:`a1_is_minor`) and all sites' A1
    are the same reference allele: each site's difference has that sign, so their sum has.
    """
    if not claims or not all(claims):
        return "?" * variants
    flip = np.stack([np.asarray(f, dtype=bool) for f in flips])
    side = np.full(variants, b"?", dtype="S1")
    side[~flip.any(axis=0)] = b"+"
    side[flip.all(axis=0)] = b"-"
    return side.tobytes().decode()


def side_signs(sides: str, variants: int) -> np.ndarray:
    """:func:`a1_sides` as int8: 1 (≥ 0), -1 (≤ 0), 0 unknown; no string: all unknown."""
    if not sides:
        return np.zeros(variants, dtype=np.int8)
    if len(sides) != variants:
        raise ValueError(f"a1_side has {len(sides)} entries for {variants} variants")
    codes = np.frombuffer(sides.encode(), dtype=np.uint8)
    return (codes == ord("+")).astype(np.int8) - (codes == ord("-"))


def flip_alleles(variants: VariantTable, flip: np.ndarray) -> VariantTable:
    """A variant table with A1 and A2 exchanged where ``flip``."""
    return replace(
        variants,
        a1=np.where(flip, variants.a2, variants.a1),
        a2=np.where(flip, variants.a1, variants.a2),
    )
