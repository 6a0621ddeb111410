"""This party's raw shares inside MPyC: reading, resharing, and opening products, ratios, ints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from smpc.mpc import mpyc_adapter
from smpc.mpc.mpyc_adapter import MpcType
from smpc.protocols.gwas.mpc.rational import Ratio, inverse, rational_reconstruct

__all__ = [
    "open_ints",
    "open_products",
    "open_ratio_shares",
    "random_shares",
    "raw_shares",
    "reshare",
]


async def raw_shares(mpc: Any, x: Any) -> tuple[MpcType, np.ndarray]:
    """This party's shares of a secure array: (field, object array of ints in [0, p)).

    The share-level code works on raw ints and reduces mod p once per inner product
    instead of after every operation.
    """
    shares = await mpc.gather(x) if isinstance(x, mpc.SecureArray) else x
    return shares.field, shares.value


async def random_shares(mpc: Any, field: MpcType, n: int) -> np.ndarray:
    """Shares of n uniformly random field elements (PRSS: no communication)."""
    return (await mpyc_adapter.random_field_elements(mpc, field, n)).value


async def reshare(mpc: Any, field: MpcType, local: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Degree-2t local products (sums of products) back to degree-t shares, in one round.

    ``local`` are equally long 1-D raw int arrays; they travel as one message.
    """
    z = np.concatenate(local) % field.order
    if mpc.threshold and z.size:
        z = (await mpyc_adapter.reshare(mpc, field.array(z, check=False))).value
    size = z.size // len(local)
    return [z[i * size : (i + 1) * size] for i in range(len(local))]


async def open_products(mpc: Any, field: MpcType, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Open a·b elementwise for degree-t shares a, b (raw ints) without resharing a·b.

    The local product is a degree-2t sharing whose polynomial is not uniformly random;
    adding a pseudorandom degree-2t sharing of zero makes it so, and opening it then
    reveals a·b only (MPyC's ``np_random_bits`` opens its squares the same way).
    Without PRSS the product is reshared first. Returns ints in [0, p).
    """
    p = field.order
    if a.size == 0:
        return np.zeros(a.shape, dtype=object)
    t = mpc.threshold
    if t == 0:
        opened = await mpc.output(field.array(a * b % p, check=False))
    elif mpc.options.no_prss:
        (z,) = await reshare(mpc, field, [a * b])
        opened = await mpc.output(field.array(z, check=False))
    else:
        zero = mpyc_adapter.pseudorandom_zero(mpc, field, a.size)
        z = field.array((a * b + zero.value) % p, check=False)
        opened = await mpc.output(z, threshold=2 * t)
    return opened.value


async def open_ratio_shares(
    mpc: Any,
    field: MpcType,
    num: Any,
    den: np.ndarray,
    num_bound: int,
    den_bound: int,
    r: np.ndarray | None = None,
    *,
    den_nonzero: bool = False,
) -> Ratio:
    """Open num/den (raw 1-D shares) as exact reduced fractions.

    Opens den·r first for a fresh secret random r: zero exactly where den = 0, which
    makes that variant NA (0/0) and opens nothing more about it; elsewhere den·r is
    uniform and independent of den. Then num·r is opened for the other variants only
    and num/den = (num·r)·(den·r)⁻¹ mod p is reconstructed. Leak: the NA pattern and
    the fraction, nothing else. Returns a :class:`.rational.Ratio`.

    With ``r`` given (shares of the mask of den), ``num`` is a pair (x, y) of shares
    with x·y = num·r: K of ``--assoc`` opens (n1·n2)·(N·r), three factors. Where den
    is known not to be 0 (``den_nonzero``), den·r and num·r are opened together.
    """
    p = field.order
    if r is None:
        r = await random_shares(mpc, field, den.size)
        num = (num, r)
    out_num = np.zeros(den.size, dtype=object)
    out_den = np.zeros(den.size, dtype=object)
    if den_nonzero:
        both = await open_products(
            mpc, field, np.concatenate([den, num[0]]), np.concatenate([r, num[1]])
        )
        den_r, num_r = both[: den.size], both[den.size :]
        if not np.all(den_r != 0):
            raise ValueError("a denominator said to be nonzero is 0")
        ok = np.arange(den.size)
    else:
        den_r = await open_products(mpc, field, den, r)
        ok = np.flatnonzero(den_r != 0)  # den·r = 0 iff den = 0 (r = 0: probability 1/p)
    if ok.size:
        if not den_nonzero:
            num_r = await open_products(mpc, field, num[0][ok], num[1][ok])
        x = num_r * inverse(den_r[ok], p) % p
        out_num[ok], out_den[ok] = rational_reconstruct(x, p, num_bound, den_bound)
    return Ratio(out_num, out_den)


async def open_ints(mpc: Any, x: Any) -> np.ndarray:
    """Open a secure integer array as signed Python ints (what PLINK prints anyway)."""
    field, values = await raw_shares(mpc, x)
    opened = (await mpc.output(field.array(values.reshape(-1), check=False))).value
    p = field.order
    return np.array([v - p if v > p // 2 else v for v in opened], dtype=object)
