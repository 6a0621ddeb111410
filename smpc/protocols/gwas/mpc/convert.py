"""Secure integers from the sites' narrow sharing field into a regression's wide one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from smpc.mpc import mpyc_adapter
from smpc.mpc.mpyc_adapter import MpcType
from smpc.protocols.gwas.mpc.shares import raw_shares

__all__ = ["convert_field"]


async def convert_field(mpc: Any, x: Any, target: MpcType, bits: int) -> Any:
    """The values of secure integer array ``x`` (|x| < 2^(bits-1)) in ``target``'s field.

    Sites share their wide statistics as integers in a modest field (few bytes per
    value); the determinants need a far wider one. The conversion is MPyC's
    ``convert`` on whole arrays: a random r < 2^(bits + k) that every party holds
    shares of in *both* fields comes from pseudorandom secret sharing without any
    communication (the same PRF values, combined with each field's Shamir weights);
    x + r is opened in the small field (statistically hiding x, k = MPyC's security
    parameter) and r is subtracted in the target field. One opening per value.
    """
    field, xv = await raw_shares(mpc, x)
    target_field = target.field
    m, t = len(mpc.parties), mpc.threshold
    k = mpc.options.sec_param
    if (bits + k + 2) > field.order.bit_length():
        raise ValueError(
            f"{bits}-bit values do not convert from a {field.order.bit_length()}-bit field"
        )
    if mpc.options.no_prss:
        raise ValueError("convert_field draws its masks by PRSS: run MPyC without --no-prss")
    bound = (1 << (k + bits)) // math.comb(m, t) + 1
    draws = mpyc_adapter.prss_draws(mpc, bound, xv.shape)  # the same r in both fields

    def share_of_r(f: MpcType) -> np.ndarray:
        total = np.zeros(xv.shape, dtype=object)
        for subset, r in draws:
            total = total + r * mpyc_adapter.prss_weight(mpc, f, subset)
        return total % f.order

    offset = 1 << (bits - 1)
    masked = field.array((xv + offset + share_of_r(field)) % field.order, check=False)
    opened = (await mpc.output(masked)).value
    p = target_field.order
    y = (opened - offset - share_of_r(target_field)) % p
    return target.array(target_field.array(y, check=False))
