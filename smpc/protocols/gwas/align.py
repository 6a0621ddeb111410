"""Variant alignment across sites: one variant order, one allele orientation, and exclusions.

Each site's fileset is written by its own ``plink --make-bed``, so its A1 is its local
minor allele, its variant order may differ, and a variant monomorphic at the site may
carry the allele ``0``. :func:`align` reproduces what ``plink1.9 --merge-list`` does with
the sites' filesets (source: ``merge_bim_scan``/``merge_datasets`` in PLINK 1.9's
``plink_data.c``, and checked against the real program in the tests), restricted to the
variants every site has and that can be aligned without guessing:

- **Matching** is by variant ID and allele pair. ``0`` matches any allele.
- **Reference alleles** (:attr:`Alignment.variants` a1/a2) are PLINK's merge slots: the
  first site that has the variant sets A1/A2 as written (``0`` = empty slot); each later
  site contributes its A2 and then its A1, a new allele filling the empty A2 slot if
  there is one, else the empty A1 slot. So it is the first site's order, with a ``0``
  filled from a later site (``0 T`` then ``T C`` gives ``C T``).
- **The POOLED .bim order** is those slots *swapped wherever A1 is the major allele over
  all pooled samples* (merge_datasets counts A1 vs A2 alleles over every sample, founders
  or not, and writes the minor first; ties keep the slots). That needs counts, so it is
  :func:`pooled_bim_swap`, applied to pooled counts from :func:`site_counts`. PLINK run
  on POOLED then takes A1 as the founders' minor allele with ties following that order.
- **Variant order** is PLINK's merge order: chromosome code, then bp, then ID in byte
  order. For sites written by ``plink --make-bed`` (sorted by position) this is the first
  site's .bim order; a site with shuffled rows does not change it. CHR is PLINK's code
  (``chr1`` -> ``1``); CM and BP are the first site's.
- **flip** per site: the site's A1 is the reference A2 (or its A2 the reference A1), so
  its genotype g (copies of its A1) is ``2 - g`` copies of the reference A1.

Exclusions (one row per variant ID: ``(snp, chrom, reason)``, first reason that applies):

1. ``duplicate ID at site S`` — PLINK cannot tell the copies apart;
2. ``non-autosomal chromosome C`` — X, Y, XY, MT (23–26), unplaced 0 and any other
   contig: not analysed for now (PLINK treats sex chromosomes specially);
3. ``absent at site S1, S2``;
4. ``chromosome mismatch`` / ``position mismatch`` — same ID at different places (PLINK
   merges with a warning and keeps the first; we never silently pick one);
5. ``multiallelic at site S`` — a .pgen/.vcf record with several ALT alleles;
6. ``strand flip at site S`` — more than two alleles overall, but complementing site S's
   alleles (A<->T, C<->G) makes them fit (A/C at one site, T/G at another). Excluded, not
   flipped: the other sites' strand is as unknown as this one's;
7. ``allele mismatch at site S`` — more than two alleles otherwise (A/C vs A/G).

A/T and C/G SNPs are strand-ambiguous: a strand flip there just looks like an allele
swap. We match them by their letters, as PLINK's merge does (so outputs equal PLINK's on
the merged data); sites must agree on the strand (e.g. all forward-strand) for these.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smpc.protocols.gwas.plink.fileset import VariantTable

__all__ = [
    "AUTOSOMES",
    "Alignment",
    "align",
    "chrom_codes",
    "merge_excess",
    "pooled_bim_swap",
    "site_counts",
    "write_excluded",
]

AUTOSOMES = range(1, 23)
"""Human autosomes, PLINK chromosome codes 1..22 (``chr1`` and ``1`` alike)."""

_NONAUTOSOMAL = {"X": 23, "Y": 24, "XY": 25, "MT": 26, "M": 26}
_CODE_NAMES = {23: "X", 24: "Y", 25: "XY", 26: "MT"}
_COMPLEMENT = {"A": "T", "T": "A", "C": "G", "G": "C"}
_NONE = ""  # an empty merge slot (PLINK's allele 0)


@dataclass(frozen=True)
class Alignment:
    """The shared variants in reference order/orientation and how each site maps onto them.

    ``index[k][v]`` is the row of reference variant ``v`` in site ``k``'s file and
    ``flip[k][v]`` whether the site's A1 is the reference A2. ``excluded`` rows are
    ``(snp, chrom, reason)``.
    """

    variants: VariantTable
    index: list[np.ndarray]
    flip: list[np.ndarray]
    excluded: list[tuple[str, str, str]]
    sites: list[str]

    def __len__(self) -> int:
        return len(self.variants)


def chrom_codes(chrom: np.ndarray) -> np.ndarray:
    """PLINK chromosome codes: ``1``/``chr1`` -> 1, X 23, Y 24, XY 25, MT 26, others -1."""
    names = np.asarray(chrom).astype(str)
    uniq, inverse = np.unique(names, return_inverse=True)
    codes = np.empty(len(uniq), dtype=np.int64)
    for i, name in enumerate(uniq):  # one step per distinct chromosome name
        bare = name[3:] if name.lower().startswith("chr") else name
        if bare.isdigit():
            codes[i] = int(bare)
        else:
            codes[i] = _NONAUTOSOMAL.get(bare.upper(), -1)
    return codes[inverse.reshape(-1)]


def _is_autosome(codes: np.ndarray) -> np.ndarray:
    return (codes >= AUTOSOMES.start) & (codes < AUTOSOMES.stop)


def _complement(alleles: np.ndarray) -> np.ndarray:
    """Reverse-complement single-base alleles; anything else (indels, 0) maps to itself+'?'."""
    out = np.char.add(alleles, "?")
    for base, comp in _COMPLEMENT.items():
        out = np.where(alleles == base, comp, out)
    return np.where(alleles == _NONE, _NONE, out)


def align(site_variants: Sequence[VariantTable], site_names: Sequence[str]) -> Alignment:
    """Match the sites' variants as PLINK 1.9's merge would; see the module docstring.

    Deterministic in its inputs, so every party computes the same alignment.
    """
    names = [str(s) for s in site_names]
    if len(names) != len(site_variants):
        raise ValueError(f"{len(site_variants)} variant tables for {len(names)} sites")
    if not names:
        raise ValueError("no sites to align")
    tables = [t if isinstance(t, VariantTable) else VariantTable(**dict(t)) for t in site_variants]
    u = _union(tables)
    slot1, slot2, conflict_at, before = _merge_slots(u)
    reasons, keep = _exclusions(u, names, conflict_at, before)
    ids, home, home_code, a1, a2 = u.ids, u.home, u.home_code, u.a1, u.a2
    kept = np.flatnonzero(keep)
    order = kept[np.lexsort((ids[kept], u.bp[home[kept], kept], home_code[kept]))]
    ref_a1 = np.where(slot1[order] == _NONE, "0", slot1[order]).astype(str)
    ref_a2 = np.where(slot2[order] == _NONE, "0", slot2[order]).astype(str)
    variants = VariantTable(
        home_code[order].astype(str),
        ids[order],
        u.cm[home[order], order],
        u.bp[home[order], order],
        ref_a1,
        ref_a2,
    )
    index = [u.row[k, order] for k in range(len(tables))]
    flip = [
        ((a1[k, order] != _NONE) & (a1[k, order] == slot2[order]))
        | ((a2[k, order] != _NONE) & (a2[k, order] == slot1[order]))
        for k in range(len(tables))
    ]
    bad = np.flatnonzero(~keep)
    excluded = [(str(ids[v]), str(u.chrom_raw[home[v], v]), str(reasons[v])) for v in bad]
    return Alignment(variants, index, [f.astype(bool) for f in flip], excluded, names)


@dataclass(frozen=True)
class _Union:
    """The union of the sites' variant IDs, and each site's columns over it (sites × union;
    absent variants hold a fill value)."""

    ids: np.ndarray  # in order of first appearance (site order, then row order)
    row: np.ndarray  # the variant's row in the site's table, -1 absent
    dup: np.ndarray  # the site has the ID more than once
    present: np.ndarray
    a1: np.ndarray  # alleles, "0" as _NONE
    a2: np.ndarray
    chrom_raw: np.ndarray
    codes: np.ndarray  # chromosome codes, -2 absent
    bp: np.ndarray
    cm: np.ndarray
    home: np.ndarray  # first site with the variant
    home_code: np.ndarray  # its chromosome code there


def _union(tables: list[VariantTable]) -> _Union:
    """The union of IDs in order of first appearance and the sites' columns over it."""
    n_sites = len(tables)
    all_ids = np.concatenate([t.snp for t in tables])
    uniq, first, inverse = np.unique(all_ids, return_index=True, return_inverse=True)
    appearance = np.argsort(first, kind="stable")  # union rank -> uniq index
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[appearance] = np.arange(len(uniq))
    ids = uniq[appearance]
    n = len(ids)

    # Per site: row of each union variant (-1 absent) and whether the ID is duplicated.
    row = np.full((n_sites, n), -1, dtype=np.int64)
    dup = np.zeros((n_sites, n), dtype=bool)
    offset = 0
    for k, t in enumerate(tables):
        u = rank[inverse[offset : offset + len(t)]]
        offset += len(t)
        seen = np.bincount(u, minlength=n)
        dup[k] = seen > 1
        row[k, u[::-1]] = np.arange(len(t))[::-1]  # first occurrence wins
    present = row >= 0

    def column(k: int, name: str, fill: float | str) -> np.ndarray:
        values = getattr(tables[k], name)
        taken = values[np.maximum(row[k], 0)] if len(values) else np.full(n, fill)
        return np.where(present[k], taken, fill)

    a1 = np.stack([column(k, "a1", _NONE) for k in range(n_sites)]).astype(str)
    a2 = np.stack([column(k, "a2", _NONE) for k in range(n_sites)]).astype(str)
    a1[a1 == "0"] = _NONE
    a2[a2 == "0"] = _NONE
    chrom_raw = np.stack([column(k, "chrom", "") for k in range(n_sites)])
    codes = np.stack([np.where(present[k], chrom_codes(chrom_raw[k]), -2) for k in range(n_sites)])
    bp = np.stack([column(k, "bp", -1) for k in range(n_sites)]).astype(np.int64)
    cm = np.stack([column(k, "cm", 0.0) for k in range(n_sites)]).astype(np.float64)
    home = np.argmax(present, axis=0)  # first site with the variant
    home_code = codes[home, np.arange(n)]
    return _Union(ids, row, dup, present, a1, a2, chrom_raw, codes, bp, cm, home, home_code)


def _merge_slots(
    u: _Union,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """PLINK's merge slots, site by site: the first site sets them, later ones fill blanks.

    Returns both slots, the site at which a variant's alleles first conflict (-1 none) and
    the slots as each site found them (for the reasons).
    """
    a1, a2, present, home = u.a1, u.a2, u.present, u.home
    n = len(u.ids)
    width = np.promote_types(a1.dtype, a2.dtype)
    slot1 = np.full(n, _NONE, dtype=width)
    slot2 = np.full(n, _NONE, dtype=width)
    conflict_at = np.full(n, -1, dtype=np.int64)
    before = []  # the slots as each site found them (for the reasons)
    for k in range(len(a1)):
        before.append((slot1.copy(), slot2.copy()))
        starts = present[k] & (home == k)
        slot1[starts] = a1[k, starts]
        slot2[starts] = a2[k, starts]
        later = present[k] & (home < k)
        for allele in (a2[k], a1[k]):
            live = later & (conflict_at < 0) & (allele != _NONE)
            new = live & (allele != slot1) & (allele != slot2)
            full = (slot1 != _NONE) & (slot2 != _NONE)
            conflict_at[new & full] = k
            fill2 = new & ~full & (slot2 == _NONE)
            fill1 = new & ~full & (slot2 != _NONE)
            slot2[fill2] = allele[fill2]
            slot1[fill1] = allele[fill1]
    return slot1, slot2, conflict_at, before


def _exclusions(
    u: _Union,
    names: list[str],
    conflict_at: np.ndarray,
    before: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Why each variant is excluded (the first rule that matches), and which are kept."""
    a1, a2, present, codes, bp = u.a1, u.a2, u.present, u.codes, u.bp
    dup, chrom_raw, home, home_code = u.dup, u.chrom_raw, u.home, u.home_code
    cols = np.arange(len(u.ids))
    multi = present & ((np.char.find(a1, ",") >= 0) | (np.char.find(a2, ",") >= 0))
    rules = [  # (mask, reason texts for the selected variants), first match wins
        (dup.any(axis=0), lambda v: _per_site("duplicate ID at site", dup[:, v], names)),
        (~_is_autosome(home_code), lambda v: _chrom_text(chrom_raw[home[v], v], home_code[v])),
        (~present.all(axis=0), lambda v: _per_site("absent at site", ~present[:, v], names)),
        (
            (np.where(present, codes, home_code) != home_code).any(axis=0),
            lambda v: _where_text("chromosome mismatch", chrom_raw[:, v], present[:, v], names),
        ),
        (
            (np.where(present, bp, bp[home, cols]) != bp[home, cols]).any(axis=0),
            lambda v: _where_text("position mismatch", bp[:, v].astype(str), present[:, v], names),
        ),
        (multi.any(axis=0), lambda v: _per_site("multiallelic at site", multi[:, v], names)),
        (
            conflict_at >= 0,
            lambda v: _allele_reasons(
                conflict_at[v],
                [(b1[v], b2[v]) for b1, b2 in before],
                a1[:, v],
                a2[:, v],
                present[:, v],
                names,
            ),
        ),
    ]
    reasons = np.full(len(u.ids), "", dtype=object)
    undecided = np.ones(len(u.ids), dtype=bool)
    for mask, text in rules:
        pick = np.flatnonzero(mask & undecided)
        if len(pick):
            reasons[pick] = text(pick)
            undecided[pick] = False
    return reasons, undecided


def _chrom_text(raw: np.ndarray, code: np.ndarray) -> np.ndarray:
    """``non-autosomal chromosome 23 (X)``: the name as written, and PLINK's name for it."""
    named = np.array([_CODE_NAMES.get(int(c), "") for c in code], dtype=object)
    raw = raw.astype(object)
    label = np.where((named != "") & (named != raw), raw + " (" + named + ")", raw)
    return "non-autosomal chromosome " + label


def _per_site(prefix: str, mask: np.ndarray, names: list[str]) -> np.ndarray:
    """``"<prefix> a, b"`` per variant, naming the sites where ``mask`` (sites × V) holds."""
    out = np.full(mask.shape[1], "", dtype=object)
    for k, name in enumerate(names):
        sep = np.where(out == "", f"{prefix} ", ", ")
        out = np.where(mask[k], out + sep + name, out)
    return out


def _where_text(
    prefix: str, values: np.ndarray, present: np.ndarray, names: list[str]
) -> np.ndarray:
    """``"<prefix> (1 at a, 2 at b)"`` per variant from per-site values (sites × V)."""
    out = np.full(values.shape[1], "", dtype=object)
    for k, name in enumerate(names):
        item = np.char.add(np.char.add(values[k].astype(str), " at "), name).astype(object)
        out = np.where(present[k], np.where(out == "", item, out + ", " + item), out)
    return prefix + " (" + out + ")"


def _alleles_text(a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    first = np.where(a1 == _NONE, "0", a1).astype(object)
    return first + "/" + np.where(a2 == _NONE, "0", a2).astype(object)


def _allele_reasons(
    conflict_at: np.ndarray,
    before: list[tuple[np.ndarray, np.ndarray]],
    a1: np.ndarray,
    a2: np.ndarray,
    present: np.ndarray,
    names: list[str],
) -> np.ndarray:
    """Strand flip or allele mismatch at the site where a third allele appeared."""
    n = len(conflict_at)
    out = np.full(n, "", dtype=object)
    for k, name in enumerate(names):
        at = conflict_at == k
        if not at.any():
            continue
        known1, known2 = before[k]
        c1, c2 = _complement(a1[k].astype(str)), _complement(a2[k].astype(str))
        # Complemented, do the site's alleles add at most what the empty slots can take?
        n_known = (known1 != _NONE).astype(int) + (known2 != _NONE).astype(int)
        extra = sum(((c != _NONE) & (c != known1) & (c != known2)).astype(int) for c in (c1, c2))
        bases = np.isin(a1[k].astype(str), [*_COMPLEMENT, _NONE]) & np.isin(
            a2[k].astype(str), [*_COMPLEMENT, _NONE]
        )
        fits = (n_known + extra <= 2) & bases
        detail = _sites_alleles(a1, a2, present, names)
        out[at & fits] = ("strand flip at site " + name + " (" + detail + ")")[at & fits]
        out[at & ~fits] = ("allele mismatch at site " + name + " (" + detail + ")")[at & ~fits]
    return out


def _sites_alleles(
    a1: np.ndarray, a2: np.ndarray, present: np.ndarray, names: list[str]
) -> np.ndarray:
    """``"A/C at a, T/G at b"`` per variant (alleles as each site's .bim writes them)."""
    out = np.full(a1.shape[1], "", dtype=object)
    for k, name in enumerate(names):
        item = _alleles_text(a1[k], a2[k]) + " at " + name
        out = np.where(present[k], np.where(out == "", item, out + ", " + item), out)
    return out


def site_counts(
    genotypes: np.ndarray, flip: np.ndarray, pheno_class: np.ndarray, founder: np.ndarray
) -> np.ndarray:
    """Genotype counts ``int64 (s, 3, 2, 4)`` of a chunk, in the reference orientation.

    ``genotypes`` is ``int8 (n, s)`` (copies of the site's A1, -1 missing); ``flip (s,)``
    marks variants whose site A1 is the reference A2; ``pheno_class (n,)`` is 0 control,
    1 case, 2 missing; ``founder (n,)`` bool. Axes: variant × phenotype class × founder
    flag (0 non-founder, 1 founder) × genotype (0 two copies of reference A1, 1 het,
    2 two copies of reference A2, 3 missing). Six column sums per genotype code, so
    memory stays at one boolean chunk.
    """
    g = np.asarray(genotypes)
    if g.ndim != 2:
        raise ValueError(f"genotypes must be (n_samples, n_variants), got shape {g.shape}")
    n, s = g.shape
    flip = np.asarray(flip, dtype=bool).reshape(-1)
    pheno_class = np.asarray(pheno_class).reshape(-1)
    founder = np.asarray(founder, dtype=bool).reshape(-1)
    if len(flip) != s or len(pheno_class) != n or len(founder) != n:
        raise ValueError(
            f"shapes disagree: genotypes {g.shape}, flip {flip.shape}, "
            f"pheno_class {pheno_class.shape}, founder {founder.shape}"
        )
    out = np.zeros((s, 3, 2, 4), dtype=np.int64)
    for c in range(3):
        for f in range(2):
            rows = np.flatnonzero((pheno_class == c) & (founder == bool(f)))
            if not len(rows):
                continue
            sub = g if len(rows) == n else g[rows]
            # a boolean sum along axis 0 with an int32 accumulator: 2x count_nonzero's speed
            two = (sub == 2).sum(axis=0, dtype=np.int32)
            one = (sub == 1).sum(axis=0, dtype=np.int32)
            missing = (sub < 0).sum(axis=0, dtype=np.int32)
            zero = len(rows) - two - one - missing
            out[:, c, f, 0] = np.where(flip, zero, two)  # two copies of reference A1
            out[:, c, f, 1] = one
            out[:, c, f, 2] = np.where(flip, two, zero)
            out[:, c, f, 3] = missing
    return out


def merge_excess(genotypes: np.ndarray, founder: np.ndarray) -> np.ndarray:
    """Per variant of a chunk ``(s, 2)`` int64: A2 minus A1 homozygotes over *all* its
    samples, and over all its founders: what the pooled fileset's .bim is ordered by
    (:func:`pooled_bim_swap`). Shared as the ``merge`` input when ``filters: {mind}``
    leaves samples out of the counts: the pooled fileset is written before ``--mind``."""
    g = np.asarray(genotypes)
    f = np.asarray(founder, dtype=bool)
    out = np.empty((g.shape[1], 2), dtype=np.int64)
    out[:, 0] = np.count_nonzero(g == 0, axis=0) - np.count_nonzero(g == 2, axis=0)
    out[:, 1] = np.count_nonzero(g[f] == 0, axis=0) - np.count_nonzero(g[f] == 2, axis=0)
    return out


def pooled_bim_swap(counts: np.ndarray, excess: np.ndarray | None = None) -> np.ndarray:
    """Variants whose A1/A2 PLINK's merge writes swapped relative to the reference slots.

    ``merge_datasets`` swaps where the slot-A1 allele count over all samples (every
    phenotype class, founders and not) exceeds the A2 count, i.e. more A1 than A2
    homozygotes; ties keep the slots. ``counts``: pooled ``(V, 3, 2, 4)`` in reference
    orientation; the founders' minor allele (:func:`.plink.qc.minor_allele_swap`) follows.

    ``excess``: the pooled :func:`merge_excess` ``(V, 2)`` in reference orientation, when
    the counts leave samples out (``mind``): then the pooled fileset's .bim as written,
    the merge's order and then its ``--make-bed``'s founders' minor allele, both over every
    sample (ties keep the order), from which the kept founders' minor allele follows.
    """
    if excess is not None:
        e = np.asarray(excess).reshape(-1, 2)
        merged = e[:, 0] < 0
        return merged ^ (np.where(merged, -e[:, 1], e[:, 1]) < 0)
    c = np.asarray(counts)
    total = c.sum(axis=(1, 2))
    return total[:, 0] > total[:, 2]


def write_excluded(path: str | os.PathLike[str], excluded: Sequence[Sequence[str]]) -> None:
    """``DIR/<name>.excluded``: header ``SNP CHR REASON`` then one tab-separated row each."""
    lines = ["SNP\tCHR\tREASON"] + ["\t".join(str(x) for x in row) for row in excluded]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
