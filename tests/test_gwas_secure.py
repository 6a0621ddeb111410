"""Secure GWAS statistics (smpc.protocols.gwas.mpc) in real MPyC sessions.

The MPC tests write a small driver script and run it as MPyC parties: one process
(-M1) for the exact checks of every statistic, three processes on loopback for the
same checks with real Shamir sharing (with and without PRSS), and a timed
three-party run (printed, not asserted). Party 0 shares the inputs with
``mpc.input``; the plaintext reference is exact (fractions) where the statistic is a
ratio, and scipy / ``numpy.linalg.lstsq`` otherwise.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smpc.protocols.gwas.mpc.bounds import (
    assoc_field_bits,
    field_prime,
    linear_bounds,
    newton_bounds,
)
from smpc.protocols.gwas.mpc.linear import LinearResult, linear_targets
from smpc.protocols.gwas.mpc.minors import async_minors
from smpc.protocols.gwas.mpc.newton import newton_targets
from smpc.protocols.gwas.mpc.rational import Ratio, rational_reconstruct
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]

# Primes of several sizes for the reconstruction property test (Mersenne and MPyC-like).
PRIMES = [2**61 - 1, 2**89 - 1, 2**127 - 1, 2**521 - 1]

DRIVER = r'''
"""MPyC party running smpc.protocols.gwas.mpc on test data (written by the test)."""
import json
import sys
import time

import numpy as np
from mpyc.runtime import mpc

from fractions import Fraction

import smpc.protocols.gwas.mpc.signs as sign_code
from smpc.core.field import MERSENNE61
from smpc.protocols.gwas.mpc.assoc import secure_assoc
from smpc.protocols.gwas.mpc.bounds import FAST_BITS, linear_bounds, secint_for
from smpc.protocols.gwas.mpc.convert import convert_field
from smpc.protocols.gwas.mpc.linear import secure_linear
from smpc.protocols.gwas.mpc.shares import open_ratio_shares, raw_shares
from smpc.protocols.gwas.mpc.signs import open_signs
from smpc.protocols.gwas.plink.pvalues import chiprob_p, t_two_sided


def ratio_json(r):
    return [[str(n), str(d)] for n, d in zip(r.num, r.den, strict=True)]


def secret(stype, arr):
    arr = np.asarray(arr, dtype=object)
    mine = arr if mpc.pid == 0 else np.zeros(arr.shape, dtype=object)
    return mpc.input(stype.array(mine), senders=0)


async def main():
    cfg = json.loads(open(sys.argv[1]).read())
    data = np.load(cfg["data"], allow_pickle=True)
    await mpc.start()
    out = {"parties": len(mpc.parties)}
    if "assoc" in cfg:
        c = cfg["assoc"]
        stype = secint_for(mpc, c["field_bits"], c["value_bits"])
        # Founder counts only feed a comparison: a small field makes it cheaper.
        small = secint_for(mpc, 0, c["value_bits"])
        x = {k: secret(stype, data[k]) for k in ["a_case", "n_case", "a_ctrl", "n_ctrl"]}
        x.update({k: secret(small, data[k]) for k in ["f_a1", "f_total"]})
        await mpc.gather(list(x.values()))
        t0 = time.perf_counter()
        # The session's own sign code: A1 is swapped where 2·a1 > total among founders.
        swap = await open_signs(
            mpc, x["f_total"] - 2 * x["f_a1"], c["max_alleles"].bit_length() + 1, lt=True
        )
        t1 = time.perf_counter()
        res = await secure_assoc(
            mpc, x["a_case"], x["n_case"], x["a_ctrl"], x["n_ctrl"], swap=swap,
            max_alleles=c["max_alleles"],
        )
        t2 = time.perf_counter()
        p_values = chiprob_p(res.chisq.to_float(), 1.0)  # computed in the clear, as PLINK
        out["assoc"] = {
            "field_bits": stype.field.order.bit_length(),
            "swap_field_bits": small.field.order.bit_length(),
            "swap": swap.astype(int).tolist(),
            "f_a": ratio_json(res.f_a), "f_u": ratio_json(res.f_u),
            "chisq": ratio_json(res.chisq), "or": ratio_json(res.odds_ratio),
            "p": [None if np.isnan(v) else float(v) for v in p_values],
            "seconds_swap": t1 - t0, "seconds_assoc": t2 - t1,
        }
    if "linear" in cfg:
        c = cfg["linear"]
        bounds = linear_bounds(c["n_max"], c["col_bounds"], c["y_bound"])
        stype = secint_for(mpc, bounds.field_bits, 32)
        x = {k: secret(stype, data[k]) for k in ["n", "xtx", "xty", "yty"]}
        await mpc.gather(list(x.values()))
        t0 = time.perf_counter()
        res = await secure_linear(
            mpc, x["n"], x["xtx"], x["xty"], x["yty"], bounds=bounds,
            beta_scale=Fraction(c["beta_scale_num"], c["beta_scale_den"]),
            swap=data["lin_swap"].astype(bool) if "lin_swap" in data else None,
        )
        t1 = time.perf_counter()
        t = np.sign(res.beta.to_float()) * np.sqrt(res.t2.to_float())  # PLINK's STAT
        df = (res.nmiss - res.n_params).astype(float)
        df[df <= 0] = np.nan
        out["linear"] = {
            "field_bits": stype.field.order.bit_length(),
            "nmiss": res.nmiss.tolist(), "beta": ratio_json(res.beta), "t2": ratio_json(res.t2),
            "t": [None if np.isnan(v) else float(v) for v in t],
            "p": [None if np.isnan(v) else float(v) for v in t_two_sided(t, df)],
            "seconds": t1 - t0,
        }
    if "convert" in cfg:
        c = cfg["convert"]
        src, dst = secint_for(mpc, c["from_bits"]), secint_for(mpc, c["to_bits"])
        y = await convert_field(mpc, secret(src, data["conv"]), dst, c["bits"])
        opened = (await mpc.output(y)).reshape(-1)
        p = dst.field.order
        out["convert"] = {
            "values": [str(int(v) - p if int(v) > p // 2 else int(v)) for v in opened],
            "from_field": src.field.order.bit_length(), "to_field": p.bit_length(),
        }
    if "signs" in cfg:
        fast = mpc.SecInt(FAST_BITS, p=MERSENNE61)
        x = secret(fast, data["sign_x"])
        width, side = cfg["signs"]["width"], cfg["signs"]["side"]
        sign_code.COMPARISON_BATCH = cfg["signs"]["batch"]  # several batches of a small array
        out["signs"] = {
            "sign": (await open_signs(mpc, x, width)).tolist(),
            "lt": (await open_signs(mpc, x, width, lt=True)).astype(int).tolist(),
            "sided": (await open_signs(mpc, x, width, side=np.array(side))).tolist(),
        }
    if "ratio" in cfg:
        stype = secint_for(mpc, 128, 32)
        num, den = secret(stype, data["r_num"]), secret(stype, data["r_den"])
        field, num_v = await raw_shares(mpc, num)
        _, den_v = await raw_shares(mpc, den)
        r = await open_ratio_shares(
            mpc, field, num_v.reshape(-1), den_v.reshape(-1), 2**40, 2**40
        )
        out["ratio"] = ratio_json(r)
    await mpc.shutdown()
    if mpc.pid == 0:
        with open(cfg["out"], "w") as f:
            json.dump(out, f)


mpc.run(main())
'''


# --------------------------------------------------------------------------- plaintext checks


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(PRIMES),
    st.integers(min_value=1, max_value=2**400),
    st.integers(min_value=1, max_value=2**400),
    st.data(),
)
def test_rational_reconstruct_recovers_every_fraction_within_bounds(p, nb, db, data):
    # Shrink the bounds until 2·nb·db < p, keeping their ratio roughly.
    while 2 * nb * db >= p:
        nb, db = max(1, nb // 2), max(1, db // 2)
    nums = data.draw(st.lists(st.integers(-nb, nb), min_size=1, max_size=20))
    dens = data.draw(st.lists(st.integers(1, db), min_size=len(nums), max_size=len(nums)))
    values = np.array([n * pow(d, -1, p) % p for n, d in zip(nums, dens, strict=True)], object)
    got_num, got_den = rational_reconstruct(values, p, nb, db)
    for n, d, gn, gd in zip(nums, dens, got_num, got_den, strict=True):
        assert Fraction(gn, gd) == Fraction(n, d)
        assert gd > 0 and math.gcd(gn, gd) == 1


def test_rational_reconstruct_refuses_bad_bounds_and_keeps_shape():
    p = 2**61 - 1
    with pytest.raises(ValueError, match="needs p >"):
        rational_reconstruct(np.array([1], object), p, 2**31, 2**31)
    values = np.array([[3 * pow(7, -1, p) % p, 0], [p - 5, 1]], dtype=object)
    num, den = rational_reconstruct(values, p, 2**20, 2**20)
    assert num.shape == den.shape == (2, 2)
    assert [Fraction(n, d) for n, d in zip(num.ravel(), den.ravel(), strict=True)] == [
        Fraction(3, 7), 0, -5, 1,
    ]  # fmt: skip
    # A value whose fraction needs a larger denominator than allowed is an error.
    with pytest.raises(ValueError, match="no fraction"):
        rational_reconstruct(np.array([pow(2**30 + 1, -1, p)], object), p, 2**10, 2**20)


async def _in_the_clear(local: list) -> list:
    return local


def laplace_minors(targets, entry) -> list:
    """The sessions' own minors code (:func:`.minors.async_minors`) on plain integers."""
    return asyncio.run(async_minors(targets, entry, _in_the_clear))


def test_laplace_minors_match_numpy_determinants():
    rng = np.random.default_rng(7)
    for k in range(2, 7):
        for t in range(k):
            x = rng.integers(-6, 7, size=(15, k)).astype(object)
            x[:, 0] = 1
            y = rng.integers(-20, 21, size=15).astype(object)
            z = np.column_stack([x, y])
            m = z.T @ z
            det, b, c = laplace_minors(linear_targets(k, t), lambda i, j, m=m: m[i, j])
            a_t = m[:k, :k].copy()
            a_t[:, t] = m[:k, k]
            others = [j for j in range(k) if j != t] + [k]
            assert det == round(np.linalg.det(m[:k, :k].astype(float)))
            assert b == round(np.linalg.det(a_t.astype(float)))
            assert c == round(np.linalg.det(m[np.ix_(others, others)].astype(float)))


def test_newton_minors_give_the_step_and_variance_of_numpy():
    """Cramer's rule on [H | g]: H⁻¹g and (H⁻¹)_tt, exactly, for every width and test column."""
    rng = np.random.default_rng(11)
    for k in range(2, 6):
        for t in range(k):
            x = rng.integers(-5, 6, size=(20, k)).astype(object)
            x[:, 0] = 1
            w = rng.integers(1, 4, size=20).astype(object)  # π(1 − π), scaled to integers
            h = (x * w[:, None]).T @ x
            g = x.T @ rng.integers(-3, 4, size=20).astype(object)
            minors = laplace_minors(
                newton_targets(k, t),
                lambda i, j, h=h, g=g, k=k: g[i] if j == k else h[i, j],
            )
            det, numerators, cofactor = minors[0], minors[1 : k + 1], minors[k + 1]
            hf = h.astype(float)
            step = np.linalg.solve(hf, g.astype(float))
            assert [float(Fraction(n, det)) for n in numerators] == pytest.approx(step, rel=1e-9)
            assert float(Fraction(cofactor, det)) == pytest.approx(np.linalg.inv(hf)[t, t])


def test_newton_bounds_hold_at_the_extremes():
    rng = np.random.default_rng(4)
    n, bx, scale_bits = 9, [1, 2, 5, 7], 3
    bounds = newton_bounds(n, bx, scale_bits)
    for _ in range(200):
        x = np.column_stack([rng.choice([-b, b], size=n) for b in bx]).astype(object)
        x[:, 0] = 1
        w = rng.integers(0, 2 ** (scale_bits - 2) + 1, size=n).astype(object)  # ≤ 2^s/4
        h = (x * w[:, None]).T @ x
        g = x.T @ rng.choice([-(2**scale_bits), 2**scale_bits], size=n).astype(object)
        minors = laplace_minors(
            newton_targets(4, 1), lambda i, j, h=h, g=g: g[i] if j == 4 else h[i, j]
        )
        assert 0 <= minors[0] <= bounds.det
        assert all(abs(m) <= bounds.step_num for m in minors[1:5])
        assert 0 <= minors[5] <= bounds.cofactor


def test_linear_bounds_hold_at_the_extremes():
    rng = np.random.default_rng(3)
    n, bx, by = 9, [1, 2, 5, 7], 11
    bounds = linear_bounds(n, bx, by)
    for _ in range(200):
        x = np.column_stack([rng.choice([-b, b], size=n) for b in bx]).astype(object)
        y = rng.choice([-by, by], size=n).astype(object)
        m = np.column_stack([x, y]).T @ np.column_stack([x, y])
        det, b, c = laplace_minors(linear_targets(4, 1), lambda i, j, m=m: m[i, j])
        assert 0 <= det <= bounds.beta_den and abs(b) <= bounds.beta_num
        assert 0 <= c * det - b * b <= bounds.t2_den
        assert (n - 4) * b * b <= bounds.t2_num
    assert assoc_field_bits(2**21) == 104


def test_field_prime_is_mpyc_s_choice_and_large_enough():
    from smpc.core.field import mpyc_modulus

    p = field_prime(200, 16)
    assert p.bit_length() == 200 and p % 4 == 3 and p == mpyc_modulus(200 - 32)
    assert field_prime(0, 16).bit_length() == 16 + 30 + 2  # comparisons only


# --------------------------------------------------------------------------- test data


def _assoc_data(rng: np.random.Generator, variants: int, samples: int) -> dict[str, np.ndarray]:
    """Allele counts of A1 for cases/controls and founders, with edge cases in front."""
    half = samples // 2
    n_case = 2 * rng.integers(half // 2, half + 1, size=variants)
    n_ctrl = 2 * rng.integers(half // 2, half + 1, size=variants)
    freq = rng.uniform(0, 1, size=variants)
    a_case = rng.binomial(n_case, freq)
    a_ctrl = rng.binomial(n_ctrl, np.clip(freq * rng.uniform(0.7, 1.3, variants), 0, 1))
    edge = [  # (a_case, n_case, a_ctrl, n_ctrl)
        (0, 0, 0, 0),  # nothing called: all NA
        (0, 40, 0, 60),  # monomorphic: CHISQ NA, OR NA
        (10, 40, 0, 60),  # A1 only in cases: OR NA (b·c = 0), CHISQ defined
        (40, 40, 60, 60),  # A1 fixed
        (0, 40, 30, 60),  # OR = 0
        (0, 0, 12, 60),  # no case called
        (20, 40, 30, 60),  # no association: CHISQ = 0
    ]
    for i, row in enumerate(edge[:variants]):
        a_case[i], n_case[i], a_ctrl[i], n_ctrl[i] = row
    f_total = n_case + n_ctrl
    f_a1 = a_case + a_ctrl
    if variants > 8:
        f_a1[7], f_total[7] = 50, 100  # a tie keeps the reference order
    return {
        "a_case": a_case, "n_case": n_case, "a_ctrl": a_ctrl, "n_ctrl": n_ctrl,
        "f_a1": f_a1, "f_total": f_total,
    }  # fmt: skip


def _expected_assoc(d: dict[str, np.ndarray]) -> dict[str, list]:
    """Exact PLINK --assoc statistics with Python fractions (None = NA)."""
    out: dict[str, list] = {"swap": [], "f_a": [], "f_u": [], "chisq": [], "or": []}
    for i in range(len(d["a_case"])):
        swap = 2 * int(d["f_a1"][i]) > int(d["f_total"][i])
        a, n1, c, n2 = (int(d[k][i]) for k in ("a_case", "n_case", "a_ctrl", "n_ctrl"))
        if swap:
            a, c = n1 - a, n2 - c
        b, dd = n1 - a, n2 - c
        out["swap"].append(int(swap))
        out["f_a"].append(Fraction(a, n1) if n1 else None)
        out["f_u"].append(Fraction(c, n2) if n2 else None)
        den = n1 * n2 * (a + c) * (b + dd)
        out["chisq"].append(Fraction((n1 + n2) * (a * dd - b * c) ** 2, den) if den else None)
        out["or"].append(Fraction(a * dd, b * c) if b * c else None)
    return out


def _linear_data(
    rng: np.random.Generator, variants: int, samples: int, cov_bits: int, y_bits: int,
    missing: float,
) -> tuple[dict[str, np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:  # fmt: skip
    """Per-variant XᵀX, Xᵀy, yᵀy for X = [1, ADD, cov1, cov2] (integers), and the data."""
    cov = rng.integers(-(2**cov_bits) + 1, 2**cov_bits, size=(samples, 2))
    geno = rng.binomial(2, rng.uniform(0.05, 0.5, size=(variants, 1)), size=(variants, samples))
    effect = rng.normal(0, 2 ** (y_bits - 4), size=variants)
    noise = rng.normal(0, 2 ** (y_bits - 3), size=samples)
    y = np.clip(
        np.round(cov @ np.array([0.5, -0.25]) + noise), -(2**y_bits) + 1, 2**y_bits - 1
    ).astype(np.int64)
    mask = rng.uniform(size=(variants, samples)) >= missing
    mask[0, :] = True
    geno[0, :] = 1  # monomorphic: det(XᵀX) = 0 → NA
    mask[1, 5:] = False  # five samples, four parameters: one residual degree of freedom
    plain = []
    xtx = np.zeros((variants, 4, 4), dtype=object)
    xty = np.zeros((variants, 4), dtype=object)
    yty = np.zeros(variants, dtype=object)
    n = mask.sum(axis=1)
    for v in range(variants):
        keep = mask[v]
        yv = np.clip(y[keep] + np.round(effect[v] * geno[v, keep]), -(2**y_bits) + 1, 2**y_bits - 1)
        x = np.column_stack([np.ones(keep.sum(), int), geno[v, keep], cov[keep]]).astype(object)
        yv = yv.astype(np.int64).astype(object)
        if v == 2:  # a perfect fit: RSS = 0 with det(XᵀX) > 0 → NA, as PLINK prints it
            yv = (3 + 2 * geno[v, keep] - cov[keep, 0]).astype(object)
        xtx[v], xty[v], yty[v] = x.T @ x, x.T @ yv, yv @ yv
        plain.append((x, yv))
    return {"n": n, "xtx": xtx, "xty": xty, "yty": yty}, plain


def _linear_data_fast(
    rng: np.random.Generator, variants: int, samples: int, cov_bits: int, y_bits: int
) -> dict[str, np.ndarray]:
    """Like :func:`_linear_data` without missing calls, by matrix products (for timing)."""
    cov = rng.integers(-(2**cov_bits) + 1, 2**cov_bits, size=(samples, 2)).astype(np.int64)
    y = rng.integers(-(2**y_bits) + 1, 2**y_bits, size=samples).astype(np.int64)
    c = np.column_stack([np.ones(samples, np.int64), cov])
    xtx = np.zeros((variants, 4, 4), dtype=object)
    base = (c.T @ c).astype(object)
    for i, j in [(0, 0), (0, 2), (0, 3), (2, 2), (2, 3), (3, 3)]:
        ii, jj = [0, None, 1, 2][i], [0, None, 1, 2][j]
        xtx[:, i, j] = xtx[:, j, i] = base[ii, jj]
    gc = np.zeros((variants, 3), dtype=np.int64)  # Σ g·[1, cov1, cov2]
    gg = np.zeros(variants, dtype=np.int64)
    gy = np.zeros(variants, dtype=np.int64)
    for lo in range(0, variants, 1000):  # chunks: never the whole genotype matrix
        geno = rng.binomial(2, 0.3, size=(min(1000, variants - lo), samples)).astype(np.int64)
        gc[lo : lo + len(geno)] = geno @ c
        gg[lo : lo + len(geno)] = (geno * geno).sum(axis=1)
        gy[lo : lo + len(geno)] = geno @ y
    gc = gc.astype(object)
    xtx[:, 1, 0] = xtx[:, 0, 1] = gc[:, 0]
    xtx[:, 1, 2] = xtx[:, 2, 1] = gc[:, 1]
    xtx[:, 1, 3] = xtx[:, 3, 1] = gc[:, 2]
    xtx[:, 1, 1] = gg.astype(object)
    xty = np.zeros((variants, 4), dtype=object)
    cy = (c.T @ y).astype(object)
    xty[:, 0], xty[:, 2], xty[:, 3] = cy[0], cy[1], cy[2]
    xty[:, 1] = gy.astype(object)
    yty = np.full(variants, int(y @ y), dtype=object)
    return {"n": np.full(variants, samples), "xtx": xtx, "xty": xty, "yty": yty}


# --------------------------------------------------------------------------- running parties


def _run_parties(
    tmp_path: Path, cfg: dict, data: dict, parties: int, timeout: float, flags: tuple = ()
) -> dict:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    np.savez(tmp_path / "data.npz", **data)
    cfg = {**cfg, "data": str(tmp_path / "data.npz"), "out": str(tmp_path / "out.json")}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, str(driver), str(tmp_path / "cfg.json"), "--no-log", *flags]
    if parties == 1:
        commands = [[*base, "-M1"]]
    else:
        ports = [free_port() for _ in range(parties)]
        addresses = [a for port in ports for a in ("-P", f"127.0.0.1:{port}")]
        commands = [[*base, *addresses, "-I", str(i)] for i in range(parties)]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]  # fmt: skip
    deadline = time.monotonic() + timeout
    # A party that fails leaves the others waiting for it: stop them and show why.
    while any(proc.poll() is None for proc in procs):
        failed = [proc for proc in procs if proc.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for proc in procs:
                proc.kill()
            break
        time.sleep(0.05)
    errors = []
    for i, proc in enumerate(procs):
        _, err = proc.communicate()
        if proc.returncode:
            errors.append(f"party {i} exited {proc.returncode}:\n{err[-3000:]}")
    assert not errors, "\n".join(errors)
    return json.loads((tmp_path / "out.json").read_text())


def _fractions(pairs: list[list[str]]) -> list[Fraction | None]:
    return [None if int(d) == 0 else Fraction(int(n), int(d)) for n, d in pairs]


def _check_assoc(got: dict, data: dict) -> None:
    want = _expected_assoc(data)
    assert got["swap"] == want["swap"]
    for key in ("f_a", "f_u", "chisq", "or"):
        assert _fractions(got[key]) == want[key], key
    for pair in got["chisq"] + got["or"] + got["f_a"]:
        if int(pair[1]):
            assert math.gcd(int(pair[0]), int(pair[1])) == 1 and int(pair[1]) > 0
    from scipy.stats import chi2, chi2_contingency

    for i, pair in enumerate(got["chisq"][:200]):  # and scipy's Pearson statistic agrees
        if int(pair[1]):
            a, n1, c, n2 = (int(data[k][i]) for k in ("a_case", "n_case", "a_ctrl", "n_ctrl"))
            if got["swap"][i]:
                a, c = n1 - a, n2 - c
            table = [[a, n1 - a], [c, n2 - c]]
            stat = chi2_contingency(table, correction=False).statistic
            assert int(pair[0]) / int(pair[1]) == pytest.approx(stat, rel=1e-9, abs=1e-12)
    for p, x in zip(got["p"], want["chisq"], strict=True):
        if x is None:
            assert p is None
        else:
            assert p == pytest.approx(chi2.sf(float(x), 1), rel=1e-12, abs=1e-300)


def _check_linear(got: dict, plain: list, scale: Fraction) -> None:
    from scipy.stats import t as student_t

    betas, t2s = _fractions(got["beta"]), _fractions(got["t2"])
    for v, (x, y) in enumerate(plain):
        n, k = x.shape
        assert got["nmiss"][v] == n
        xf, yf = x.astype(float), y.astype(float)
        rank = np.linalg.matrix_rank(xf)
        coef, _, _, _ = np.linalg.lstsq(xf, yf, rcond=None)
        rss = float(((yf - xf @ coef) ** 2).sum())
        gram = np.column_stack([x, y]).T @ np.column_stack([x, y])
        if rank < k or n <= k or _det(gram) == 0:  # singular, no df, or RSS = 0
            assert betas[v] is None and t2s[v] is None and got["t"][v] is None
            continue
        # Exact: Cramer's rule with fractions.
        xtx = x.T @ x
        a_t = xtx.copy()
        a_t[:, 1] = x.T @ y
        exact_beta = Fraction(_det(a_t), _det(xtx))
        assert betas[v] == exact_beta * scale
        se = math.sqrt(rss / (n - k) * np.linalg.inv(xf.T @ xf)[1, 1])
        t = coef[1] / se
        assert float(betas[v]) == pytest.approx(coef[1] * float(scale), rel=1e-9)
        assert got["t"][v] == pytest.approx(t, rel=1e-9)
        assert float(t2s[v]) == pytest.approx(t * t, rel=1e-9)
        assert got["p"][v] == pytest.approx(2 * student_t.sf(abs(t), n - k), rel=1e-7)


def _det(m: np.ndarray) -> int:
    """Exact integer determinant (fraction-free Bareiss)."""
    a = [[int(v) for v in row] for row in m]
    size, sign, prev = len(a), 1, 1
    for i in range(size - 1):
        if a[i][i] == 0:
            swap = next((r for r in range(i + 1, size) if a[r][i]), None)
            if swap is None:
                return 0
            a[i], a[swap], sign = a[swap], a[i], -sign
        for r in range(i + 1, size):
            for c in range(i + 1, size):
                a[r][c] = (a[r][c] * a[i][i] - a[r][i] * a[i][c]) // prev
        prev = a[i][i]
    return sign * a[-1][-1]


def _small_case(seed: int) -> tuple[dict, dict, list, Fraction]:
    rng = np.random.default_rng(seed)
    samples = 300
    assoc = _assoc_data(rng, 40, samples)
    lin, plain = _linear_data(rng, 25, 60, cov_bits=8, y_bits=12, missing=0.1)
    # The ADD column recoded as 2 − g on the shares where the minor allele swaps.
    lin["lin_swap"] = rng.integers(0, 2, size=25).astype(bool)
    for v in np.flatnonzero(lin["lin_swap"]):
        x = plain[v][0].copy()
        x[:, 1] = 2 - x[:, 1]
        plain[v] = (x, plain[v][1])
    scale = Fraction(1, 2**4)
    cfg = {
        "assoc": {
            "max_alleles": 2 * samples,
            "field_bits": assoc_field_bits(2 * samples),
            "value_bits": 16,
        },
        "linear": {
            "n_max": 60, "col_bounds": [1, 2, 2**8, 2**8], "y_bound": 2**12,
            "beta_scale_num": scale.numerator, "beta_scale_den": scale.denominator,
        },
    }  # fmt: skip
    rnum = np.array([0, 5, -7, 2**40, 3], dtype=object)
    rden = np.array([0, 0, 21, 3, 1], dtype=object)
    cfg["ratio"] = True
    return cfg, {**assoc, **lin, "r_num": rnum, "r_den": rden}, plain, scale


@pytest.mark.slow
@pytest.mark.parametrize(
    ("parties", "flags"),
    [(1, ()), (3, ()), (3, ("--no-prss",))],
    ids=["M1", "3-parties", "3-parties-no-prss"],
)
def test_secure_statistics_equal_plaintext(tmp_path, parties, flags):
    cfg, data, plain, scale = _small_case(11)
    out = _run_parties(tmp_path, cfg, data, parties, timeout=150, flags=flags)
    assert out["parties"] == parties
    _check_assoc(out["assoc"], data)
    _check_linear(out["linear"], plain, scale)
    # open_ratio: den = 0 is NA whatever num is; fractions come back reduced.
    assert _fractions(out["ratio"]) == [None, None, Fraction(-1, 3), Fraction(2**40, 3), 3]


@pytest.mark.parametrize("parties", [1, 3], ids=["M1", "3-parties"])
def test_opened_signs_equal_numpy_at_zero_and_at_the_width_edges(tmp_path, parties):
    """The A1 choice's signs (less-than test and public zero test) and the filters' bits,
    in batches (COMPARISON_BATCH = 7 here), for values from -2^(w-1) to 2^(w-1) - 1;
    also where a public side (x ≥ 0 or x ≤ 0, true of the value) spares the comparison."""
    width = 16
    rng = np.random.default_rng(4)
    edge = [0, 1, -1, 2, -2, 2 ** (width - 1) - 1, -(2 ** (width - 1)), 0]
    values = np.array(edge + rng.integers(-(2**15), 2**15, 21).tolist() + [0, 0], dtype=object)
    sign = np.sign(values.astype(np.int64))
    side = np.where(sign == 0, rng.choice([-1, 1], len(values)), sign)
    side[rng.random(len(values)) < 0.4] = 0  # unknown: compared securely
    cfg = {"signs": {"width": width, "batch": 7, "side": side.tolist()}}
    out = _run_parties(tmp_path, cfg, {"sign_x": values}, parties, timeout=120)
    assert out["signs"]["sign"] == sign.tolist()
    assert out["signs"]["lt"] == (values.astype(np.int64) < 0).astype(int).tolist()
    assert out["signs"]["sided"] == sign.tolist()


@pytest.mark.parametrize("parties", [1, 3], ids=["M1", "3-parties"])
def test_convert_field_keeps_every_value_from_a_narrow_to_a_wide_field(tmp_path, parties):
    """Wide sums shared in a 192-bit field reach the determinants' ~1,300-bit field intact."""
    rng = np.random.default_rng(2)
    bits = 150
    edge = [0, 1, -1, 2 ** (bits - 1) - 1, -(2 ** (bits - 1)) + 1]
    values = edge + [int(v) * 2**100 + int(w) for v, w in rng.integers(-(2**48), 2**48, (2, 40)).T]
    data = {"conv": np.array(values, dtype=object).reshape(5, 9)}
    cfg = {"convert": {"from_bits": 192, "to_bits": 1300, "bits": bits}}
    out = _run_parties(tmp_path, cfg, data, parties, timeout=120)["convert"]
    assert out["from_field"] == 192 and out["to_field"] >= 1300
    assert [int(v) for v in out["values"]] == values


@pytest.mark.slow
@pytest.mark.timeout(660)
def test_three_party_timings(tmp_path, capsys):
    """100,000 variants of minor swap + assoc, 10,000 of linear (k = 4); printed, not asserted."""
    rng = np.random.default_rng(5)
    samples = 10_000
    assoc = _assoc_data(rng, 100_000, samples)
    y_bits, cov_bits = 20, 17  # e.g. a trait scaled by 2^16, age·2^10
    lin = _linear_data_fast(rng, 10_000, samples, cov_bits=cov_bits, y_bits=y_bits)
    cfg = {
        "assoc": {
            "max_alleles": 2 * samples,
            "field_bits": assoc_field_bits(2 * samples),
            "value_bits": 16,
        },
        "linear": {
            "n_max": samples, "col_bounds": [1, 2, 2**cov_bits, 2**cov_bits],
            "y_bound": 2**y_bits, "beta_scale_num": 1, "beta_scale_den": 2**16,
        },
    }  # fmt: skip
    out = _run_parties(tmp_path, cfg, {**assoc, **lin}, 3, timeout=600)  # a hang guard
    a, li = out["assoc"], out["linear"]
    # Spot checks: every statistic of the timed run is right too.
    sub = {k: v[:2000] for k, v in assoc.items()}
    _check_assoc({k: (v[:2000] if isinstance(v, list) else v) for k, v in a.items()}, sub)
    for v in range(0, 10_000, 97):  # BETA and T from the normal equations, in floats
        xtx = lin["xtx"][v].astype(float)
        xty = lin["xty"][v].astype(float)
        beta = np.linalg.solve(xtx, xty)
        rss = float(lin["yty"][v]) - xty @ beta
        t = beta[1] / math.sqrt(rss / (samples - 4) * np.linalg.inv(xtx)[1, 1])
        assert float(_fractions([li["beta"][v]])[0]) == pytest.approx(beta[1] / 2**16, rel=1e-6)
        assert li["t"][v] == pytest.approx(t, rel=1e-6)
    with capsys.disabled():
        print(
            f"\n[gwas secure, 3 parties] minor swap 100k ({a['swap_field_bits']}-bit field): "
            f"{a['seconds_swap']:.2f} s; "
            f"assoc 100k ({a['field_bits']}-bit field): {a['seconds_assoc']:.2f} s; "
            f"linear k=4 10k ({li['field_bits']}-bit field): {li['seconds']:.2f} s"
        )


def test_batched_regression_results_join_in_order():
    from smpc.protocols.gwas.mpc.session import _joined

    def part(values: list[int], se2: bool) -> LinearResult:
        ratio = Ratio(np.array(values, dtype=object), np.array([1] * len(values), object))
        return LinearResult(
            nmiss=np.array(values), beta=ratio, t2=None if se2 else ratio, n_params=2,
            se2=ratio if se2 else None,
        )  # fmt: skip

    for se2 in (False, True):
        joined = _joined([part([1, 2], se2), part([3], se2), part([4, 5], se2)])
        assert joined.nmiss.tolist() == [1, 2, 3, 4, 5]
        assert joined.beta.num.tolist() == [1, 2, 3, 4, 5]
        assert (joined.t2 is None) == se2 and (joined.se2 is None) != se2
