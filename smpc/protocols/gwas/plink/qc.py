"""Quality control as PLINK 1.9 does it: ``--hardy``, ``--freq``, ``--missing``, the
minor-allele choice of A1, and the ``--maf`` / ``--geno`` / ``--hwe`` filters.

Everything works on the pooled genotype count tensor ``counts`` of shape ``(V, 3, 2, 4)``
(variant x phenotype class [control, case, missing] x founder flag [non-founder,
founder] x genotype [A1/A1, A1/A2, A2/A2, missing]), vectorised over variants. For a
quantitative phenotype (``quantitative=True``) classes 0 and 1 both mean "phenotype
present" and class 2 "missing".

PLINK 1.9 rules reproduced here (from ``plink_filter.c``, ``plink_stats.c``,
``plink_misc.c`` and ``plink.c`` of chrchang/plink-ng, checked against plink1.9 v1.90b6):

- Allele frequencies, the A1 choice, ``--freq``, ``--hardy`` and ``--maf`` use founders
  only (both parent IDs ``0``), whatever their phenotype; ``--missing`` and ``--geno``
  use every sample.
- A1 becomes the founders' minor allele: the .bim order is reversed iff the founders'
  A2 frequency is strictly below 0.5. A variant without founder calls counts as 0.5
  (kept), a monomorphic variant keeps A1 only if A1 is the absent allele (an all-A1/A1
  variant is swapped so that A1 has frequency 0).
- ``--hardy`` writes ALL, AFF, UNAFF rows for a case/control phenotype (even when one
  class is empty: its row has ``nan`` and P 1), one ``ALL(QT)`` row for a quantitative
  phenotype and one ``ALL(NP)`` row when no sample has a phenotype. NaN cells of
  ``.hwe`` and ``.lmiss`` print as ``nan``, an empty ``.frq`` MAF as ``NA``.
- ``--freq`` lists chromosomes in code order (1..22, X=23, ...), ``--hardy`` and
  ``--missing`` in .bim order; the SNP column width is computed over every loaded
  variant (``snp_width``), before filtering.
- Filter order: ``--geno``, then ``--hwe``, then ``--maf``, all from the same counts
  (so a variant is kept iff it passes all three). ``--freq`` and ``--missing`` are
  written before any of them, ``--hardy`` after ``--geno`` only.
- ``--geno g`` drops a variant iff ``n_called * (1.0 / n) < (1 - g) * (1 - 2**-44)``
  (a call rate above ``1 - 2**-35`` counts as 1).
- ``--hwe p`` drops a variant iff its exact-test p-value is below ``p * (1 - 2**-44)``,
  computed on founder controls for case/control data with at least one control (any
  sample), otherwise (quantitative, no phenotype, no control, ``include-nonctrl``) on
  all founders.
- ``--maf m`` drops a variant iff its founders' minor allele frequency is below
  ``m * (1 - 2**-44)``; a variant with no founder calls has frequency 0.5 and passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smpc.protocols.gwas.plink.constants import SMALL_EPSILON, SMALLISH_EPSILON
from smpc.protocols.gwas.plink.counts import (
    GENO_MISSING,
    PHENO_CASE,
    PHENO_CONTROL,
    PHENO_MISSING,
)
from smpc.protocols.gwas.plink.formats import fmt_g, plink_maxsnp, render_table, write_table

__all__ = [
    "hwe_pvalues",
    "minor_allele_swap",
    "plink_chrom_order",
    "qc_filters",
    "swap_alleles",
    "write_frq",
    "write_hwe",
    "write_lmiss",
]

EXACT_TEST_BIAS = 2.0**-83
"""Relative likelihood PLINK gives the observed table in its exact tests."""

_START = (1 - SMALL_EPSILON) * EXACT_TEST_BIAS
_TIE = (1 - 2 * SMALL_EPSILON) * EXACT_TEST_BIAS
_SCALAR_BELOW = 24
"""Finish the HWE recursion in plain Python once this few tables are still running."""


# --------------------------------------------------------------------------------------
# Hardy-Weinberg exact test (SNPHWE2)
# --------------------------------------------------------------------------------------


def hwe_pvalues(
    hom1: np.ndarray, het: np.ndarray, hom2: np.ndarray, *, midp: bool = False
) -> np.ndarray:
    """Exact HWE test p-values (Wigginton et al. 2005), bit for bit as PLINK 1.9's SNPHWE2.

    PLINK scales the observed table's likelihood to ``2**-83 * (1 - 2**-44)``, walks the
    het counts away from the observed one with the usual ratio recursion, and calls a
    table "as extreme" when its relative likelihood is below ``2**-83``; the tails stop
    once an addition no longer changes the sum. We replay that recursion for all
    distinct tables at once, with the same floating-point operations in the same order,
    so the printed p-values equal PLINK's exactly. ``midp`` gives the mid-p variant.
    """
    hom1 = np.asarray(hom1, dtype=np.int64)
    het = np.asarray(het, dtype=np.int64)
    hom2 = np.asarray(hom2, dtype=np.int64)
    shape = np.broadcast_shapes(hom1.shape, het.shape, hom2.shape)
    hom1, het, hom2 = (np.broadcast_to(a, shape).ravel() for a in (hom1, het, hom2))
    if hom1.size == 0:
        return np.zeros(shape)
    homr = np.minimum(hom1, hom2)
    homc = np.maximum(hom1, hom2)
    tables, inverse = np.unique(np.stack([het, homr, homc], axis=1), axis=0, return_inverse=True)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflow: p = 0
        p = _snphwe2(tables[:, 0], tables[:, 1], tables[:, 2], midp)
    return p[inverse.ravel()].reshape(shape)


def _snphwe2(het: np.ndarray, homr: np.ndarray, homc: np.ndarray, midp: bool) -> np.ndarray:
    """SNPHWE2 over distinct tables (``homr <= homc``), all recursions in lockstep.

    Per table: phase 1 walks from the observed het count towards (and past) the mode,
    adding to ``centerp`` while the likelihood is at least the observed one and to the
    tail afterwards; phase 2 walks the other way from the observed count (always tail).
    ``down`` steps lower the het count by 2, ``up`` steps raise it.
    """
    out = np.empty(het.size)
    geno2 = 2 * (het + homr + homc)
    rare = 2 * homr + het
    upper = het * geno2 > rare * (geno2 - rare)  # observed hets above expectation
    empty = geno2 == 0
    out[empty] = 0.5 if midp else 1.0

    idx = np.flatnonzero(~empty)
    st = {
        "obs_h": het[idx].astype(np.float64),
        "obs_r": homr[idx].astype(np.float64),
        "obs_c": homc[idx].astype(np.float64),
        "h": het[idx].astype(np.float64),
        "r": homr[idx].astype(np.float64),
        "c": homc[idx].astype(np.float64),
        "down": upper[idx].copy(),  # phase 1 walks down from an excess of hets
        "phase2": np.zeros(idx.size, dtype=bool),
        "intail": np.zeros(idx.size, dtype=bool),
        "over": np.zeros(idx.size, dtype=bool),  # current phase has ended
        "lastp": np.full(idx.size, _START),
        "tailp": np.full(idx.size, _START),
        "centerp": np.zeros(idx.size),
        "tie": np.ones(idx.size),
    }

    alive = np.ones(idx.size, dtype=bool)  # finished tables idle until the next compaction
    while True:
        n_alive = int(np.count_nonzero(alive))
        if n_alive < 0.75 * alive.size or n_alive < _SCALAR_BELOW:
            idx = idx[alive]
            st = {name: a[alive] for name, a in st.items()}
            alive = np.ones(n_alive, dtype=bool)
        if n_alive < _SCALAR_BELOW:
            for k in range(n_alive):
                out[idx[k]] = _finish_scalar({name: a[k].item() for name, a in st.items()}, midp)
            break
        # tables whose phase is over (or cannot step): start phase 2, or finish
        h, r = st["h"], st["r"]
        stuck = alive & (st["over"] | np.where(st["down"], h <= 1.5, r <= 0.5))
        if stuck.any():
            done = stuck & st["phase2"]
            end1 = stuck & ~st["phase2"]
            if not midp:
                certain = end1 & (st["centerp"] == 0)  # nothing more likely than observed
                out[idx[certain]] = 1.0
                alive &= ~certain
                end1 &= ~certain
            if end1.any():
                for name, src in (("h", "obs_h"), ("r", "obs_r"), ("c", "obs_c")):
                    st[name][end1] = st[src][end1]
                st["lastp"][end1] = _START
                st["down"][end1] = ~st["down"][end1]
                st["phase2"][end1] = True
                st["over"][end1] = False
                h, r = st["h"], st["r"]
                done |= end1 & np.where(st["down"], h <= 1.5, r <= 0.5)
            if done.any():
                out[idx[done]] = _final_p(
                    st["tailp"][done], st["centerp"][done], st["tie"][done], midp
                )
                alive &= ~done

        # one step of every walk, exactly as PLINK orders the operations
        h, r, c, down = st["h"], st["r"], st["c"], st["down"]
        r_dn, c_dn = r + 1, c + 1
        h_up = h + 2
        ratio = np.where(
            down,
            (h * (h - 1)) / (4 * r_dn * c_dn),
            (4 * r * c) / (h_up * (h_up - 1)),
        )
        st["lastp"] = lastp = st["lastp"] * ratio
        st["h"] = np.where(down, h - 2, h_up)
        st["r"] = np.where(down, r_dn, r - 1)
        st["c"] = np.where(down, c_dn, c - 1)

        tailp = st["tailp"]
        summing = st["phase2"] | st["intail"]  # break once the tail sum stops growing
        entering = ~summing & (lastp < EXACT_TEST_BIAS)
        center = ~summing & ~entering
        new_tail = tailp + lastp
        st["over"] = summing & (new_tail <= tailp)
        st["tailp"] = np.where(summing | entering, new_tail, tailp)
        st["tie"] = st["tie"] + (entering & (lastp > _TIE))
        st["intail"] = st["intail"] | entering
        st["centerp"] = np.where(center, st["centerp"] + lastp, st["centerp"])
        overflow = alive & center & (st["centerp"] == np.inf)
        if overflow.any():
            out[idx[overflow]] = 0.0
            alive &= ~overflow
    return out


def _final_p(tailp: Any, centerp: Any, tie: Any, midp: bool) -> Any:
    """SNPHWE2's last line: tail mass over total mass (mid-p: minus half the ties)."""
    if midp:
        return (tailp - (_START * 0.5) * tie) / (tailp + centerp)
    return tailp / (tailp + centerp)


def _finish_scalar(s: dict[str, Any], midp: bool) -> float:
    """The same walk as :func:`_snphwe2` for one table, in plain floats (few stragglers)."""
    h, r, c, down, lastp = s["h"], s["r"], s["c"], s["down"], s["lastp"]
    tailp, centerp, tie = s["tailp"], s["centerp"], s["tie"]
    phase2, intail, over = s["phase2"], s["intail"], s["over"]
    while True:
        if over or (h <= 1.5 if down else r <= 0.5):
            if phase2:
                return _final_p(tailp, centerp, tie, midp)
            if centerp == 0 and not midp:
                return 1.0
            h, r, c, lastp = s["obs_h"], s["obs_r"], s["obs_c"], _START
            down, phase2, over = not down, True, False
            continue
        if down:
            r += 1
            c += 1
            lastp *= (h * (h - 1)) / (4 * r * c)
            h -= 2
        else:
            h += 2
            lastp *= (4 * r * c) / (h * (h - 1))
            r -= 1
            c -= 1
        if phase2 or intail:
            pre = tailp
            tailp += lastp
            over = tailp <= pre
        elif lastp < EXACT_TEST_BIAS:
            tie += lastp > _TIE
            tailp += lastp
            intail = True
        else:
            centerp += lastp
            if centerp == np.inf:
                return 0.0


# --------------------------------------------------------------------------------------
# Counts, A1 choice, filters
# --------------------------------------------------------------------------------------


def _check(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 4 or counts.shape[1:] != (3, 2, 4):
        raise ValueError(f"counts must have shape (V, 3, 2, 4), got {counts.shape}")
    return counts.astype(np.int64, copy=False)


def _founders(counts: np.ndarray) -> np.ndarray:
    """Founder genotype counts ``(V, 4)``, every phenotype class (missing included)."""
    return counts[:, :, 1, :].sum(axis=1)


def _a2_freq(cts: np.ndarray) -> np.ndarray:
    """PLINK's ``set_allele_freqs``: A2 frequency of ``(V, >=3)`` counts, 0.5 if none called."""
    chrobs = 2 * (cts[:, 0] + cts[:, 1] + cts[:, 2])
    a2 = 2 * cts[:, 2] + cts[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = a2.astype(np.float64) / chrobs.astype(np.float64)
    return np.where(chrobs == 0, 0.5, freq)


def minor_allele_swap(ref_counts: np.ndarray) -> np.ndarray:
    """Which variants PLINK 1.9 reverses so that A1 is the founders' minor allele.

    ``ref_counts`` are in the reference (pooled .bim) orientation. PLINK swaps iff the
    founders' A2 frequency is strictly below 0.5: ties, and variants without founder
    calls (frequency 0.5 by convention), keep the .bim order.
    """
    return _a2_freq(_founders(_check(ref_counts))) < 0.5


def swap_alleles(counts: np.ndarray, swap: np.ndarray) -> np.ndarray:
    """``counts`` with genotype classes A1/A1 and A2/A2 exchanged where ``swap`` is True."""
    counts = np.array(counts, copy=True)
    swap = np.asarray(swap, dtype=bool)
    counts[swap] = counts[swap][..., [2, 1, 0, 3]]
    return counts


def _hwe_counts(counts: np.ndarray, quantitative: bool, include_nonctrl: bool) -> np.ndarray:
    """The founder counts ``--hwe`` tests: controls only when there are any controls."""
    controls = counts[0, PHENO_CONTROL].sum() if counts.shape[0] else 0
    if quantitative or include_nonctrl or controls == 0:
        return _founders(counts)
    return counts[:, PHENO_CONTROL, 1, :]


def qc_filters(
    counts: np.ndarray,
    maf: float | None = None,
    geno: float | None = None,
    hwe: float | None = None,
    *,
    max_maf: float | None = None,
    hwe_midp: bool = False,
    hwe_include_nonctrl: bool = False,
    quantitative: bool = False,
) -> dict[str, np.ndarray]:
    """Per-filter pass masks ``{"geno", "hwe", "maf"}`` (all True for an unused filter).

    Separate masks because PLINK's reports sit between the steps: ``--freq`` and
    ``--missing`` see every variant, ``--hardy`` the variants passing ``geno``, and
    association tests all three. PLINK applies ``--geno``, then ``--hwe``, then
    ``--maf``, but all three read the counts taken before any filtering, so the kept
    set is the intersection of the masks. The comparisons and their ``2**-44`` slack
    are PLINK's (see the module docstring). ``quantitative`` marks a quantitative
    phenotype (``--hwe`` then uses all founders); ``hwe_midp`` and
    ``hwe_include_nonctrl`` are ``--hwe``'s ``midp``/``include-nonctrl``; ``max_maf``
    is ``--max-maf``. Counts may be in either allele orientation.
    """
    counts = _check(counts)
    masks = {name: np.ones(counts.shape[0], dtype=bool) for name in ("geno", "hwe", "maf")}
    if geno is not None:
        allc = counts.sum(axis=(1, 2))
        n = int(allc[0].sum()) if counts.shape[0] else 0
        masks["geno"] = allc[:, :3].sum(axis=1) >= geno_min_called(n, geno)
    if hwe is not None and hwe > 0:
        cts = _hwe_counts(counts, quantitative, hwe_include_nonctrl)
        p = hwe_pvalues(cts[:, 0], cts[:, 1], cts[:, 2], midp=hwe_midp)
        masks["hwe"] = ~(p < hwe * (1 - SMALL_EPSILON))
    if (maf is not None and maf != 0.0) or (max_maf is not None and max_maf != 0.5):
        freq = _a2_freq(_founders(counts))  # A1 may be either allele here
        major = np.maximum(freq, 1.0 - freq)
        minor = np.where(major <= 0.5, major, 1.0 - major)
        if maf is not None:
            masks["maf"] &= ~(minor < maf * (1 - SMALL_EPSILON))
        if max_maf is not None:
            masks["maf"] &= ~(minor > max_maf * (1 + SMALL_EPSILON))
    return masks


# --------------------------------------------------------------------------------------
# Report writers
# --------------------------------------------------------------------------------------


def _field(variants: Any, name: str) -> np.ndarray:
    """Column ``name`` of a variant table given as a mapping or an object with attributes."""
    value = variants[name] if isinstance(variants, Mapping) else getattr(variants, name)
    return np.asarray(value)


def _labels(variants: Any, v: int) -> tuple[np.ndarray, ...]:
    cols = []
    for name in ("chrom", "snp", "a1", "a2"):
        col = _field(variants, name).astype(str)
        if col.shape != (v,):
            raise ValueError(f"variants.{name} has shape {col.shape}, expected ({v},)")
        cols.append(col)
    return tuple(cols)


def _width(snp: np.ndarray, snp_width: int | None) -> int:
    """SNP column width: PLINK's rule over the IDs written unless the caller knows better.

    PLINK sizes the column over every variant it loaded, before ``--geno``/``--hwe``/
    ``--maf``; pass ``snp_width=plink_maxsnp(all_ids)`` when writing a filtered subset.
    """
    return plink_maxsnp(snp) if snp_width is None else int(snp_width)


def _ints(x: np.ndarray) -> list[str]:
    return [str(i) for i in np.asarray(x).tolist()]


_CHROM_CODES = {"X": 23, "Y": 24, "XY": 25, "MT": 26, "M": 26}


def plink_chrom_order(chrom: np.ndarray) -> np.ndarray:
    """Stable row order of ``--freq``: PLINK writes chromosomes by code, not file order.

    Codes: numbers as such, X/Y/XY/MT 23-26 (``chr`` prefix ignored), other contig names
    after all of them in order of appearance. (``--hardy`` and ``--missing`` keep the
    .bim order.)
    """
    names = [n[3:] if n.startswith("CHR") else n for n in np.char.upper(np.asarray(chrom, str))]
    uniq, first, inv = np.unique(
        np.asarray(names, dtype=str), return_index=True, return_inverse=True
    )
    codes = np.empty(uniq.size, dtype=np.int64)
    for k, name in enumerate(uniq.tolist()):
        if name.isdigit():
            codes[k] = int(name)
        elif name in _CHROM_CODES:
            codes[k] = _CHROM_CODES[name]
        else:
            codes[k] = 1_000_000 + first[k]  # other contigs: order of appearance
    return np.argsort(codes[inv.ravel()], kind="stable")


def write_frq(
    path: str | Path,
    variants: Any,
    counts: np.ndarray,
    *,
    swapped: np.ndarray | None = None,
    snp_width: int | None = None,
) -> Path:
    """``.frq`` as ``plink1.9 --freq``: founders' A1 frequency and called allele count.

    PLINK prints ``1 - f`` where ``f`` is its stored major-allele frequency; ``swapped``
    (from :func:`minor_allele_swap`, default none swapped) reproduces how ``f`` was
    rounded so the last digit matches PLINK in every case. A variant without founder
    calls prints ``NA``. Rows follow the given order within a chromosome, chromosomes in
    PLINK's code order (:func:`plink_chrom_order`).
    """
    counts = _check(counts)
    v = counts.shape[0]
    chrom, snp, a1, a2 = _labels(variants, v)
    f = _founders(counts)
    chrobs = 2 * f[:, :3].sum(axis=1)
    sw = np.zeros(v, dtype=bool) if swapped is None else np.asarray(swapped, dtype=bool)
    bim = np.where(sw[:, None], f[:, [2, 1, 0, 3]], f)  # counts in .bim orientation
    stored = _a2_freq(bim)
    stored = np.where(sw, 1.0 - stored, stored)
    maf = np.where(chrobs == 0, "NA", fmt_g(1.0 - stored, 4))
    columns = [
        ("CHR", 4),
        ("SNP", _width(snp, snp_width)),
        ("A1", 4),
        ("A2", 4),
        ("MAF", 12),
        ("NCHROBS", 8),
    ]
    order = plink_chrom_order(chrom)
    rows = [
        np.asarray(col, dtype=object)[order] for col in (chrom, snp, a1, a2, maf, _ints(chrobs))
    ]
    write_table(path, columns, rows, trailing_space=False)
    return Path(path)


def write_lmiss(
    path: str | Path, variants: Any, counts: np.ndarray, *, snp_width: int | None = None
) -> Path:
    """``.lmiss`` as ``plink1.9 --missing``: missing calls among all samples."""
    counts = _check(counts)
    v = counts.shape[0]
    chrom, snp, _, _ = _labels(variants, v)
    allc = counts.sum(axis=(1, 2))
    n_miss = allc[:, GENO_MISSING]
    n_geno = allc.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f_miss = n_miss.astype(np.float64) / n_geno.astype(np.float64)
    columns = [
        ("CHR", 4),
        ("SNP", _width(snp, snp_width)),
        ("N_MISS", 8),
        ("N_GENO", 8),
        ("F_MISS", 8),
    ]
    rows: list[Sequence[str] | np.ndarray] = [
        chrom,
        snp,
        _ints(n_miss),
        _ints(n_geno),
        fmt_g(f_miss, 4, nan="nan"),
    ]
    write_table(path, columns, rows, trailing_space=False)
    return Path(path)


def write_hwe(
    path: str | Path,
    variants: Any,
    counts: np.ndarray,
    *,
    quantitative: bool = False,
    midp: bool = False,
    swapped: np.ndarray | None = None,
    snp_width: int | None = None,
) -> Path:
    """``.hwe`` as ``plink1.9 --hardy`` (founders only): ALL/AFF/UNAFF, ALL(QT) or ALL(NP).

    Case/control data (some sample with a non-missing phenotype) gets three rows per
    variant, in that order; ``quantitative`` data one ``ALL(QT)`` row; no phenotype at
    all one ``ALL(NP)`` row. A group without founder calls prints ``nan nan`` and P 1.
    ``swapped`` (see :func:`write_frq`) only matters for E(HET)'s last bit: PLINK
    multiplies the .bim-A1 frequency first. Only the header line ends with a space.
    """
    counts = _check(counts)
    v = counts.shape[0]
    chrom, snp, a1, a2 = _labels(variants, v)
    has_pheno = v > 0 and counts[0, :PHENO_MISSING].sum() > 0
    founders = counts[:, :, 1, :3]
    if has_pheno and not quantitative:
        groups = [
            ("ALL", founders.sum(axis=1)),
            ("AFF", founders[:, PHENO_CASE]),
            ("UNAFF", founders[:, PHENO_CONTROL]),
        ]
    else:
        groups = [("ALL(QT)" if has_pheno else "ALL(NP)", founders.sum(axis=1))]
    sw = np.zeros(v, dtype=bool) if swapped is None else np.asarray(swapped, dtype=bool)
    stacked = np.stack([g for _, g in groups])  # one exact-test pass for all groups
    pvals = hwe_pvalues(stacked[..., 0], stacked[..., 1], stacked[..., 2], midp=midp)
    fields: list[list[np.ndarray]] = []
    for (test, g), p in zip(groups, pvals, strict=True):
        hom1, het, hom2 = g[:, 0], g[:, 1], g[:, 2]
        geno = [
            f"{x}/{y}/{z}"
            for x, y, z in zip(hom1.tolist(), het.tolist(), hom2.tolist(), strict=True)
        ]
        ll = np.where(sw, hom2, hom1)  # .bim orientation, as PLINK computes
        hh = np.where(sw, hom1, hom2)
        denom = 2 * (hom1 + het + hom2)
        with np.errstate(divide="ignore", invalid="ignore"):
            drecip = 1.0 / denom.astype(np.float64)
            o_het = (2 * het).astype(np.float64) * drecip
            minor = (2 * ll + het).astype(np.float64) * drecip
            e_het = minor * (2 * hh + het).astype(np.float64) * drecip * 2
        p = np.where(denom == 0, 0.5 if midp else 1.0, p)
        fields.append(
            [
                chrom,
                snp,
                np.full(v, test, dtype=object),
                a1,
                a2,
                np.array(geno, dtype=object),
                fmt_g(o_het, 4, nan="nan"),
                fmt_g(e_het, 4, nan="nan"),
                fmt_g(p, 4),
            ]
        )
    # interleave the groups: variant 0 ALL, AFF, UNAFF, variant 1 ...
    rows = [
        np.stack([np.asarray(f[k], dtype=object) for f in fields], axis=1).ravel()
        for k in range(len(fields[0]))
    ]
    columns = [
        ("CHR", 4),
        ("SNP", _width(snp, snp_width)),
        ("TEST", 8),
        ("A1", 4),
        ("A2", 4),
        ("GENO", 20),
        ("O(HET)", 8),
        ("E(HET)", 8),
        ("P", 12),
    ]
    text = render_table(columns, [[] for _ in columns], trailing_space=True)
    text += render_table(columns, rows, trailing_space=False, header=False)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    return Path(path)


def geno_min_called(samples: int, geno: float) -> int:
    """The fewest called samples a variant needs to pass ``--geno`` (PLINK's comparison).

    ``--geno`` keeps a variant unless ``called * (1/N) < (1 - g)(1 - 2^-44)`` in double
    precision (a rate above 1 - 2^-35 counting as 1); that holds for a prefix of the
    called counts, so both the plaintext and the secure filter compare with this bound.
    """
    called = np.arange(samples + 1, dtype=np.float64)
    rate = called * (1.0 / float(samples)) if samples else np.zeros(1)
    rate = np.where(rate > 1 - SMALLISH_EPSILON, 1.0, rate)
    passing = np.flatnonzero(~(rate < (1.0 - geno) * (1 - SMALL_EPSILON)))
    return int(passing[0]) if passing.size else samples + 1
