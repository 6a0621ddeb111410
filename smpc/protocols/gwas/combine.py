"""Party side of a GWAS: put every site's shares in one variant order and orientation.

A site shares its local statistics in its own fileset's variant order and allele
orientation (its A1 is its local minor allele), together with its variant table as a
public input (``variants``, shared with t = 0: every party reads it, the broker does
not). Every party runs the same deterministic :func:`smpc.protocols.gwas.align.align`
on the agreed sites' tables and then rearranges each site's *shares* into the
reference order and orientation before adding them. That needs no communication:
taking rows is a permutation, and flipping a variant's alleles (g' = 2 - g) is a linear
map with integer coefficients, and both commute with Shamir sharing.

What is flipped, for a variant whose site orientation is the reverse of the reference:

- genotype counts ``(V, 3, 2, 4)``: genotype classes 0 (two copies of A1) and 2 swap;
- cross products of x = [1, g, c_1..c_k] with y: x' = T x where T replaces g by
  2·1 - g, so ``xtx' = T xtx Tᵀ``, ``xty' = T xty`` and ``yty`` is unchanged.

XᵀX is symmetric: sites share its upper triangle only (:func:`pack_symmetric`), row by
row, and the parties unfold it to flip and fold it again to add (k(k+1)/2 values a
variant instead of k²: 10 instead of 16 with two covariates).
"""

from __future__ import annotations

import numpy as np

from smpc.core.field import PrimeField

GENOTYPE_FLIP = np.array([2, 1, 0, 3])
"""Genotype class order after swapping A1 and A2: hom A1 <-> hom A2; het, missing stay."""


def take_counts(share: np.ndarray, index: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """A site's count shares ``(V_site, 3, 2, 4)`` in reference order and orientation."""
    out = share[index]
    out[flip] = out[flip][..., GENOTYPE_FLIP]
    return out


def flip_genotype_row(field: PrimeField, a: np.ndarray, axis: int) -> np.ndarray:
    """Apply T along ``axis`` of ``a`` (field elements): entry 1 becomes 2·entry0 - entry1."""
    a = np.moveaxis(a.copy(), axis, -1)
    a[..., 1] = field.sub(field.mul_const(a[..., 0], 2), a[..., 1])
    return np.moveaxis(a, -1, axis)


def take_cross_products(
    field: PrimeField,
    xtx: np.ndarray,
    xty: np.ndarray,
    index: np.ndarray,
    flip: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """A site's ``xtx (V_site, p, p)`` and ``xty (V_site, p)`` shares, aligned."""
    xtx, xty = xtx[index], xty[index]
    if flip.any():
        f = np.flatnonzero(flip)
        xtx[f] = flip_genotype_row(field, flip_genotype_row(field, xtx[f], 1), 2)
        xty[f] = flip_genotype_row(field, xty[f], 1)
    return xtx, xty


def pack_symmetric(a: np.ndarray) -> np.ndarray:
    """The upper triangles (row by row) of symmetric matrices ``(..., k, k)``: ``(..., T)``."""
    k = a.shape[-1]
    iu, ju = np.triu_indices(k)
    return a[..., iu, ju]


def unpack_symmetric(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_symmetric` (any dtype, e.g. field elements)."""
    t = packed.shape[-1]
    k = (int(np.sqrt(8 * t + 1)) - 1) // 2
    if k * (k + 1) // 2 != t:
        raise ValueError(f"{t} values are not the upper triangle of a square matrix")
    position = np.zeros((k, k), dtype=np.int64)
    iu, ju = np.triu_indices(k)
    position[iu, ju] = position[ju, iu] = np.arange(t)
    return packed[..., position]
