"""A party's MPyC session of a GWAS with ``reveal: statistics``: what it computes and opens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smpc.core.field import FAST, MERSENNE61, field_for
from smpc.mpc import mpyc_adapter
from smpc.protocols.gwas.a1 import side_signs
from smpc.protocols.gwas.mpc.bounds import FAST_BITS, MAX_ALLELES, secint_for
from smpc.protocols.gwas.mpc.signs import open_signs
from smpc.protocols.gwas.task import GwasSession, NewtonSession


def _cell(cls: int, founder: int, genotype: int) -> int:
    """Column of a (V, 3, 2, 4) count tensor flattened to (V, 24)."""
    return (cls * 2 + founder) * 4 + genotype


async def run_gwas(mpc: Any, task: Any, workdir: Path) -> dict[str, dict[str, Any]]:
    """Open the spec's statistics from this party's shares; ``{name: {shape, values}}``.

    Every party enters its shares of the pooled, aligned statistics
    (:func:`smpc.protocols.gwas.pooling.combine`): the genotype count tensor in
    GF(2^61 - 1) and, for ``assoc``, the case/control allele counts in a prime field wide
    enough for the chi-square's ratio (:mod:`.bounds`). What is opened, to every party
    (which sign it for the analyst):

    - the A1 choice: per variant the sign of the founders' called alleles minus twice
      their A1 alleles (PLINK makes A1 the founders' minor allele, which it prints); only
      where that is 0 (frequency exactly 1/2, or nothing called) also whether the pooled
      A1 alleles exceed half the called ones, the order of PLINK's merged .bim. Where the
      sites' public claims fix the sign's side (``a1_side``), only whether it is 0.
    - ``assoc``: F_A, F_U and CHISQ/(F_A − F_U)² as exact fractions, opened without their
      numerators and denominators (:func:`.assoc.secure_assoc`); CHISQ, OR and P follow.
    - ``model``: the case and control genotype counts, which ``.model`` prints;
    - ``hardy``: the founders' genotype counts per phenotype class, which ``.hwe`` prints;
    - ``freq``: the founders' A1 alleles and called alleles (MAF and NCHROBS);
    - ``missing``: each variant's missing calls and samples (N_MISS, N_GENO).

    Nothing else of the pooled data is opened: no per-site value, no cross product, no
    count a requested test does not print.
    """
    from smpc.protocols.gwas.mpc.assoc import secure_assoc

    gwas = GwasSession.model_validate(task.payload)
    v = gwas.variants
    fast = mpc.SecInt(FAST_BITS, p=MERSENNE61)
    counts = FAST.from_bytes((workdir / gwas.counts).read_bytes(), (v, 24))
    c = fast.array(fast.field.array(np.asarray(counts, dtype=object)))

    def total(cells: list[int]) -> Any:
        out = c[:, cells[0]]
        for j in cells[1:]:
            out = out + c[:, j]
        return out

    def alleles(classes: range, founders: range) -> tuple[Any, Any]:
        hom = [_cell(k, f, 0) for k in classes for f in founders]
        het = [_cell(k, f, 1) for k in classes for f in founders]
        other = [_cell(k, f, 2) for k in classes for f in founders]
        a1 = total(hom) * 2 + total(het)
        return a1, a1 + total(het) + total(other) * 2

    def excess_a2(classes: range, founders: range) -> Any:
        """(called − 2·A1)/2 = A2 homozygotes − A1 homozygotes: the side of 1/2 the A1
        frequency is on, within ±samples, one bit narrower than the allele difference."""
        hom_a1 = total([_cell(k, f, 0) for k in classes for f in founders])
        return total([_cell(k, f, 2) for k in classes for f in founders]) - hom_a1

    every, founders = range(3), range(2)
    f_a1, f_called = alleles(every, range(1, 2))
    width = max(gwas.samples, 1).bit_length() + 1  # |A2A2 - A1A1| <= samples
    # PLINK makes A1 the founders' minor allele; only where the founders' A1 frequency is
    # exactly 1/2 (or nothing was called) does the merged .bim's order decide, which
    # compares the pooled A1 alleles with half the called ones: opened for those only.
    side = side_signs(gwas.a1_side, v)
    founder_sign = await open_signs(mpc, excess_a2(every, range(1, 2)), width, side=side)
    tie = np.flatnonzero(founder_sign == 0)
    merge = np.zeros(v, dtype=bool)
    if tie.size and gwas.merge is not None:  # mind: the pooled .bim saw every sample
        excess = FAST.from_bytes((workdir / gwas.merge).read_bytes(), (v, 2))[tie]
        samples = fast.array(fast.field.array(np.asarray(excess[:, 0], dtype=object)))
        merged = await open_signs(mpc, samples, FAST_BITS, lt=True)  # the merge's order
        # then --make-bed's founders' minor allele, in the merged order (a share negates)
        made = np.where(merged, FAST.sub(FAST.zeros(merged.shape), excess[:, 1]), excess[:, 1])
        secret = fast.array(fast.field.array(np.asarray(made, dtype=object)))
        merge[tie] = merged ^ await open_signs(mpc, secret, FAST_BITS, lt=True)
    elif tie.size:
        merge[tie] = await open_signs(mpc, excess_a2(every, founders)[tie], width, lt=True)
    swap = founder_sign < 0  # relative to the merged .bim (a tie keeps it), as PLINK swaps
    out: dict[str, dict[str, Any]] = {
        "a1.merge": _result(merge.astype(np.int64)),
        "a1.swap": _result(swap.astype(np.int64)),
    }
    keep_geno = keep = np.ones(v, dtype=bool)
    if gwas.geno is not None or gwas.maf is not None:
        keep_geno, keep_maf = await _filters(mpc, gwas, total, f_a1, f_called, founder_sign)
        keep = keep_geno & keep_maf
        out["filter.geno"] = _result(keep_geno.astype(np.int64))
        out["filter.maf"] = _result(keep_maf.astype(np.int64))
    views = {
        "model": [_cell(k, f, g) for k in (0, 1) for g in range(3) for f in founders],
        "hardy": [_cell(k, 1, g) for k in every for g in range(3)],
        "missing": [_cell(k, f, 3) for k in every for f in founders],
    }
    rows_geno = np.flatnonzero(keep_geno)
    if "hardy" in gwas.tests:  # (V passing --geno, 3, 3): founders
        opened = [await mpc.output(c[rows_geno, j]) for j in views["hardy"]]
        hardy = np.stack(opened, axis=1).astype(np.int64).reshape(-1, 3, 3)
        out["hardy.counts"] = _result(hardy)
        if gwas.hwe is not None:  # the counts --hwe tests are among those .hwe prints
            keep_hwe = np.ones(v, dtype=bool)
            keep_hwe[rows_geno] = await _hwe_pass(mpc, gwas, total, hardy)
            keep &= keep_hwe
            out["filter.hwe"] = _result(keep_hwe.astype(np.int64))
    rows_all = np.flatnonzero(keep)
    if "model" in gwas.tests:  # (V kept, 2, 3): summed over founder status
        cells = views["model"]
        opened = [
            await mpc.output(total(cells[i : i + 2])[rows_all]) for i in range(0, len(cells), 2)
        ]
        out["model.counts"] = _result(np.stack(opened, axis=1).reshape(-1, 2, 3))
    if "freq" in gwas.tests:  # (V, 2): founders' A1 alleles and called alleles
        opened = [await mpc.output(x) for x in (f_a1, f_called)]
        out["freq.alleles"] = _result(np.stack(opened, axis=1))
    if "missing" in gwas.tests:  # (V, 2): missing calls and samples
        missing = total(views["missing"])
        samples = total(list(range(24)))
        opened = [await mpc.output(x) for x in (missing, samples)]
        out["missing.counts"] = _result(np.stack(opened, axis=1))
    for reg in gwas.regression:
        out.update(await _regression(mpc, reg, workdir, rows_all, (merge ^ swap)[rows_all]))
    if "assoc" in gwas.tests and not gwas.quantitative:  # a quantitative one: .qassoc (qt)
        if gwas.alleles is None or gwas.assoc_field_bits is None or gwas.assoc_modulus is None:
            raise ValueError("an assoc task without the sites' allele counts and their field")
        big = secint_for(mpc, gwas.assoc_field_bits)
        if big.field.modulus != gwas.assoc_modulus:
            raise ValueError("the assoc field differs from the one the sites shared in")
        field = field_for(gwas.assoc_modulus)
        shares = field.from_bytes((workdir / gwas.alleles).read_bytes(), (v, 4))
        a = big.array(big.field.array(np.asarray(shares[rows_all], dtype=object)))
        result = await secure_assoc(
            mpc,
            a[:, 0],
            a[:, 1],
            a[:, 2],
            a[:, 3],
            swap=(merge ^ swap)[rows_all],
            max_alleles=MAX_ALLELES,
        )
        for name, ratio in (  # RATIOS
            ("f_a", result.f_a),
            ("f_u", result.f_u),
            ("chisq", result.chisq),
            ("or", result.odds_ratio),
        ):
            out[f"assoc.{name}.num"] = _result(ratio.num)
            out[f"assoc.{name}.den"] = _result(ratio.den)
    return out


async def _regression(
    mpc: Any, reg: Any, workdir: Path, rows: np.ndarray, swap: np.ndarray
) -> dict[str, dict[str, Any]]:
    """One secure regression (:func:`.linear.secure_linear`) on the variants ``rows``.

    ``linear`` opens NMISS, BETA and T² (what ``.assoc.linear`` prints); ``qt`` (the
    quantitative ``--assoc``) NMISS, BETA and SE², which .qassoc prints. The sites
    scaled covariates and y by 2^``beta_scale_bits`` (the allele count not), so T² is
    unchanged and BETA and SE are scaled back by that power of two.
    """
    from fractions import Fraction

    from smpc.protocols.gwas.mpc.linear import secure_linear
    from smpc.protocols.gwas.sizes import regression_field

    _, bounds = regression_field(reg.k, reg.samples, reg.pheno_bits, reg.covar_bits)
    big = secint_for(mpc, bounds.field_bits)
    k = reg.k
    shapes = {"xtx": (-1, k * (k + 1) // 2), "xty": (-1, k), "yty": (-1,)}  # xtx: packed
    stored = {
        part: _stored(workdir / reg.files[part], reg.share_modulus, shape)
        for part, shape in shapes.items()
    }
    g = reg.group
    if not len(rows):  # no variant passes the filters
        empty = _result(np.zeros(0, dtype=np.int64))
        spread = "se2" if g == "qt" else "t2"
        return {
            f"{g}.{name}": empty
            for name in ("nmiss", "beta.num", "beta.den", f"{spread}.num", f"{spread}.den")
        }
    results = []
    for start in range(0, len(rows), REGRESSION_BATCH):  # bounds the memory
        batch = rows[start : start + REGRESSION_BATCH]
        parts = {
            part: await _widened(mpc, values[batch], reg.share_modulus, big, packed=part == "xtx")
            for part, values in stored.items()
        }
        n = parts["xtx"][:, 0, 0]  # the intercept column is unscaled: the sample count
        results.append(
            await secure_linear(
                mpc,
                n,
                parts["xtx"],
                parts["xty"],
                parts["yty"],
                bounds=bounds,
                swap=swap[start : start + REGRESSION_BATCH],
                beta_scale=Fraction(1, 1 << reg.beta_scale_bits),
                se2=reg.group == "qt",
            )
        )
    result = _joined(results)
    out = {f"{g}.nmiss": _result(result.nmiss.astype(np.int64))}
    second = ("se2", result.se2) if g == "qt" else ("t2", result.t2)
    for name, ratio in (("beta", result.beta), second):
        out[f"{g}.{name}.num"] = _result(ratio.num)
        out[f"{g}.{name}.den"] = _result(ratio.den)
    return out


async def run_newton(mpc: Any, task: Any, workdir: Path) -> dict[str, dict[str, Any]]:
    """A logistic Newton round with ``reveal: statistics``: open n, the step, (H⁻¹)_tt.

    The step H⁻¹·Σ(y − π)x changes the coefficients the next round's job publishes; the
    last round's (H⁻¹)_tt gives PLINK's SE. Nothing else of the pooled gradient and
    Hessian is opened (:func:`.newton.secure_newton_step`).
    """
    from smpc.protocols.gwas.logistic import newton_field
    from smpc.protocols.gwas.mpc.newton import secure_newton_step

    newton = NewtonSession.model_validate(task.payload)
    v, k = newton.variants, newton.k
    modulus, bounds = newton_field(k)
    big = secint_for(mpc, bounds.field_bits)
    if big.field.modulus != modulus or modulus != newton.modulus:
        raise ValueError("the Newton round's field differs from the one the parties expect")
    fast = mpc.SecInt(FAST_BITS, p=MERSENNE61)

    def stored(name: str, shape: tuple[int, ...], modulus: int = newton.share_modulus):
        return _stored(workdir / newton.files[name], modulus, shape)

    n = await mpc.output(fast.array(fast.field.array(stored("n", (v,), MERSENNE61))))

    hess = stored("hess", (v, k * (k + 1) // 2))  # packed
    hess = await _widened(mpc, hess, newton.share_modulus, big, packed=True)
    grad = await _widened(mpc, stored("grad", (v, k)), newton.share_modulus, big)
    steps, var = await secure_newton_step(mpc, hess, grad, bounds=bounds)
    return {
        "logistic.n": _result(np.asarray(n, dtype=np.int64)),
        "logistic.step.num": _result(np.stack([s.num for s in steps], axis=1)),
        "logistic.step.den": _result(np.stack([s.den for s in steps], axis=1)),
        "logistic.var.num": _result(var.num),
        "logistic.var.den": _result(var.den),
    }


def _stored(path: Path, modulus: int, shape: tuple[int, ...]) -> np.ndarray:
    """A party's stored shares (little-endian words of the field ``modulus``) as ints."""
    flat = field_for(modulus).from_bytes(path.read_bytes(), (-1,))
    return np.asarray(flat, dtype=object).reshape(shape)


async def _widened(
    mpc: Any, shares: np.ndarray, modulus: int, big: Any, *, packed: bool = False
) -> Any:
    """Shares the sites made in the 192-bit field as ``big`` secure integers
    (:func:`.convert.convert_field`); ``packed`` upper triangles unfold to symmetric
    matrices (:func:`smpc.protocols.gwas.combine.unpack_symmetric`: shares unfold as the
    values do)."""
    from smpc.protocols.gwas.combine import unpack_symmetric
    from smpc.protocols.gwas.mpc.convert import convert_field
    from smpc.protocols.gwas.sizes import REG_POOLED_BITS, REG_SHARE_BITS

    narrow = secint_for(mpc, REG_SHARE_BITS)
    if narrow.field.modulus != modulus:
        raise ValueError("shares are not in the field the sites share wide sums in")
    wide = await convert_field(mpc, narrow.array(narrow.field.array(shares)), big, REG_POOLED_BITS)
    return big.array(unpack_symmetric(mpyc_adapter.secure_array_shares(wide))) if packed else wide


REGRESSION_BATCH = 25_000
"""Variants per secure regression call: its wide-field values (~170 bytes each, a few
dozen per variant and party) stay within a few hundred MB."""


def _joined(results: list[Any]) -> Any:
    """One :class:`.linear.LinearResult` from the batches' results."""
    from dataclasses import replace

    from smpc.protocols.gwas.mpc.rational import Ratio

    def cat(ratios: list[Any]) -> Any:
        if ratios[0] is None:
            return None
        return Ratio(
            np.concatenate([r.num for r in ratios]), np.concatenate([r.den for r in ratios])
        )

    return replace(
        results[0],
        nmiss=np.concatenate([r.nmiss for r in results]),
        beta=cat([r.beta for r in results]),
        t2=cat([r.t2 for r in results]),
        se2=cat([r.se2 for r in results]),
    )


async def _hwe_pass(mpc: Any, gwas: Any, total: Any, hardy: np.ndarray) -> np.ndarray:
    """``--hwe`` on the opened founder genotype counts, decided as ``qc.qc_filters`` does.

    PLINK tests the founder controls when the data are case/control with at least one
    control, else all founders; whether there is a control is one more opened number
    (the controls with a call at the first variant, or none).
    """
    from smpc.protocols.gwas.plink.constants import SMALL_EPSILON
    from smpc.protocols.gwas.plink.qc import hwe_pvalues

    group = hardy.sum(axis=1)  # all founders
    if not gwas.quantitative and gwas.variants:
        controls = total([_cell(0, f, g) for f in range(2) for g in range(4)])
        if int(np.asarray(await mpc.output(controls[:1]))[0]) > 0:
            group = hardy[:, 0, :]
    p = hwe_pvalues(group[:, 0], group[:, 1], group[:, 2])
    return ~(p < gwas.hwe * (1 - SMALL_EPSILON))


async def _filters(
    mpc: Any, gwas: Any, total: Any, f_a1: Any, f_called: Any, founder_sign: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``--geno`` and ``--maf`` as PLINK 1.9 decides them, opening only the pass bits.

    geno: a variant's called samples against the fewest that pass
    (:func:`smpc.protocols.gwas.plink.qc.geno_min_called`; the number of samples is what the
    sites declare).
    maf: with the founders' minor allele known (the A1 choice is public), a variant is
    rare when ``Q·minor < P·called`` for ``maf`` = P/Q as written; PLINK's 2^-44 slack
    decides only exact equality, which keeps the variant both ways.
    """
    from fractions import Fraction

    from smpc.protocols.gwas.plink.qc import geno_min_called

    n = gwas.samples
    keep_geno = np.ones(gwas.variants, dtype=bool)
    keep_maf = np.ones(gwas.variants, dtype=bool)
    if gwas.geno is not None and gwas.variants:
        missing = total([_cell(k, f, 3) for k in range(3) for f in range(2)])
        least = geno_min_called(n, gwas.geno)
        called = total(list(range(24))) - missing
        keep_geno = ~await open_signs(mpc, called - least, (n + 1).bit_length() + 1, lt=True)
    if gwas.maf is not None and gwas.variants:
        p, q = Fraction(str(gwas.maf)).as_integer_ratio()
        width = (2 * q * max(n, 1)).bit_length() + 1
        if width > FAST_BITS:
            raise ValueError(
                f"maf {gwas.maf} over {n} samples needs more than GF(2^61 - 1)'s comparisons "
                "allow; use reveal: aggregates"
            )
        a2_minor = founder_sign < 0  # the reference A1 is the founders' major allele
        minor = f_a1 + (f_called - f_a1 * 2) * a2_minor.astype(np.int64)
        keep_maf = ~await open_signs(mpc, minor * q - f_called * p, width, lt=True)
    return keep_geno, keep_maf


def _result(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values)
    return {
        "shape": list(values.shape),
        "frac_bits": 0,
        "values": [int(x) for x in values.reshape(-1).tolist()],
    }
