"""Shamir and additive secret sharing of NumPy arrays, with compact shares.

Parties are numbered 0..N−1 and, as in MPyC, party i holds the evaluation at
i + 1 of a polynomial f of degree t with f(0) the secret. Any t + 1 shares
determine f, hence the secret; any t of them are uniformly random.

One construction serves both schemes and both share forms. The first ``k``
shares are drawn at random (k = t for Shamir, k = N − 1 for additive), each
from its own ChaCha20 key stream; the remaining shares follow from the secret:

* Shamir: f is the polynomial through (0, secret), (1, r_0), …, (t, r_{t−1}),
  so party j ≥ t gets f(j+1) = λ_0·secret + Σ_i λ_{i+1}·r_i, with Lagrange
  coefficients λ over the consecutive nodes 0..t — integers, small for small N,
  so the hot path multiplies by small constants only.
* Additive: party N−1 gets secret − Σ_i r_i.

Choosing t values of f at t non-zero nodes uniformly at random is the same
distribution as choosing its t non-constant coefficients uniformly: this is
ordinary Shamir sharing.

**Compact shares.** A random share can travel as the 32-byte seed of its key
stream instead of the array, so a site uploads (N − t)× its data (Shamir) or
1× (additive) instead of N×. Privacy then rests on ChaCha20 being a
pseudo-random generator: t colluding parties see t seeds' expansions and
nothing about the others, exactly as before except that "uniformly random" is
now "indistinguishable from uniformly random" to a computationally bounded
adversary; information-theoretic privacy becomes computational, at 256-bit
key strength. Every seed is fresh from ``os.urandom`` at each call of
:func:`split`, i.e. one per (job, input, site, party): a reused seed at t = 1
would let the seeded party subtract two shares and learn the difference of two
inputs. Compact or full is a per-job choice (``compact=``); full shares give
information-theoretic privacy at N× the upload.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Literal

import numpy as np

from smpc.core.field import BLOCK_ELEMENTS, PrimeField, expand
from smpc.core.prg import fresh_seed

Scheme = Literal["shamir", "additive"]
SCHEMES: tuple[Scheme, ...] = ("shamir", "additive")


CHUNK_ELEMENTS = BLOCK_ELEMENTS  # elements per step of split(): 512 KiB, fits in L2 cache


class SharingError(ValueError):
    """Parameters or shares that cannot work: bad (N, t), too few shares."""


@dataclass(frozen=True)
class Share:
    """Party ``party``'s share: a full array of field elements, or a seed."""

    party: int
    values: np.ndarray | None = None
    seed: bytes | None = None

    def __post_init__(self) -> None:
        if (self.values is None) == (self.seed is None):
            raise ValueError("a share is either values or a seed")

    @property
    def is_seed(self) -> bool:
        return self.seed is not None

    def expand(self, field: PrimeField, shape: tuple[int, ...]) -> np.ndarray:
        """The share as field elements (a seed is expanded with its key stream)."""
        if self.seed is not None:
            return expand(field, self.seed, math.prod(shape)).reshape(shape)
        assert self.values is not None  # __post_init__: values or a seed
        return self.values


def check_parameters(n: int, t: int, scheme: Scheme) -> None:
    """Refuse an impossible (N, t, scheme) with the reason."""
    if scheme not in SCHEMES:
        raise SharingError(f"unknown sharing scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if n < 1:
        raise SharingError(f"need at least one party, got N={n}")
    if not 0 <= t < n:
        raise SharingError(f"threshold t={t} must satisfy 0 <= t < N={n}")


def random_count(n: int, t: int, scheme: Scheme) -> int:
    """How many shares are pure randomness (and may travel as seeds)."""
    return t if scheme == "shamir" else n - 1


class Splitter:
    """Shares of one array, computed chunk by chunk: the streaming form of :func:`split`.

    Holds the fresh seeds of the random shares; :meth:`split_chunk` takes the
    next piece of the flattened secret and returns all N shares of that piece,
    so a site can seal shares of an array far larger than its cache (or memory)
    piece by piece. Pieces other than the last must be a multiple of
    :data:`~smpc.core.field.BLOCK_ELEMENTS` long, the granularity of seed expansion.
    """

    def __init__(self, field: PrimeField, n: int, t: int, scheme: Scheme = "shamir") -> None:
        check_parameters(n, t, scheme)
        self.field, self.n, self.t, self.scheme = field, n, t, scheme
        self.seeds = [fresh_seed() for _ in range(random_count(n, t, scheme))]
        self._offset = 0

    def split_chunk(self, chunk: np.ndarray) -> list[np.ndarray]:
        """All N shares (flat arrays, party order) of the next piece of the secret."""
        if self._offset % BLOCK_ELEMENTS:
            raise ValueError(
                f"only the last piece may be shorter than a multiple of {BLOCK_ELEMENTS}"
            )
        field, k = self.field, len(self.seeds)
        randoms = [expand(field, seed, chunk.size, self._offset) for seed in self.seeds]
        self._offset += chunk.size
        if self.scheme == "additive":
            return [*randoms, field.sub(chunk, field.sum(randoms)) if randoms else chunk]
        derived = []
        for j in range(k, self.n):
            coeffs = _extension_coefficients(self.t, j + 1)
            derived.append(
                field.linear_combination(
                    [(coeffs[0], chunk), *zip(coeffs[1:], randoms, strict=True)]
                )
            )
        return [*randoms, *derived]


def split(
    secret: np.ndarray,
    field: PrimeField,
    n: int,
    t: int,
    scheme: Scheme = "shamir",
    *,
    compact: bool = True,
) -> list[Share]:
    """Share an array of field elements among ``n`` parties with threshold ``t``.

    For additive sharing ``t`` is informational (every share is needed); pass
    ``n - 1``. With ``compact`` the random shares are returned as seeds.
    """
    splitter = Splitter(field, n, t, scheme)
    secret = np.asarray(secret)
    flat = secret.reshape(-1)
    k = len(splitter.seeds)
    stored = range(k, n) if compact else range(n)
    out = {j: np.empty(flat.size, dtype=field.dtype) for j in stored}
    for lo in range(0, flat.size, CHUNK_ELEMENTS):
        for j, values in enumerate(splitter.split_chunk(flat[lo : lo + CHUNK_ELEMENTS])):
            if j in out:
                out[j][lo : lo + values.size] = values
    return [
        Share(i, values=out[i].reshape(secret.shape))
        if i in out
        else Share(i, seed=splitter.seeds[i])
        for i in range(n)
    ]


def reconstruct(
    shares: Mapping[int, np.ndarray],
    field: PrimeField,
    t: int,
    scheme: Scheme = "shamir",
    *,
    n: int | None = None,
) -> np.ndarray:
    """The secret from shares given as {party index: field elements}.

    Shamir needs any t + 1 shares (the first t + 1 given are used); additive
    needs all ``n`` (when ``n`` is given it is checked).
    """
    if scheme == "additive":
        if n is not None and sorted(shares) != list(range(n)):
            missing = sorted(set(range(n)) - set(shares))
            raise SharingError(f"additive sharing needs every share; missing parties {missing}")
        return field.sum([shares[i] for i in sorted(shares)])
    if len(shares) < t + 1:
        raise SharingError(f"Shamir threshold t={t} needs {t + 1} shares, got {len(shares)}")
    parties = sorted(shares)[: t + 1]
    lambdas = lagrange_at_zero(tuple(i + 1 for i in parties), field.modulus)
    return field.linear_combination(
        [(lam, shares[i]) for lam, i in zip(lambdas, parties, strict=True)]
    )


def lagrange_at_zero(points: tuple[int, ...], modulus: int) -> list[int]:
    """Lagrange coefficients λ_i with f(0) = Σ λ_i f(x_i), modulo ``modulus``."""
    return lagrange_at(points, 0, modulus)


def lagrange_at(points: tuple[int, ...], x: int, modulus: int) -> list[int]:
    """Lagrange coefficients λ_i with f(x) = Σ λ_i f(x_i), modulo ``modulus``."""
    out = []
    for i, xi in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(points):
            if j != i:
                num = num * (x - xj) % modulus
                den = den * (xi - xj) % modulus
        out.append(num * pow(den, -1, modulus) % modulus)
    return out


def inconsistent_shares(shares: Mapping[int, np.ndarray], field: PrimeField, t: int) -> list[int]:
    """Parties whose Shamir share does not lie on the polynomial of the first t + 1.

    With more than t + 1 shares the extra ones are redundant: every honest share
    is the degree-t polynomial through the first t + 1 evaluated at its point, so
    a tampered share shows up here (as does a tampered base share, which moves
    every other point off the polynomial).
    """
    parties = sorted(shares)
    base = parties[: t + 1]
    points = tuple(i + 1 for i in base)
    bad = []
    for j in parties[t + 1 :]:
        lambdas = lagrange_at(points, j + 1, field.modulus)
        expected = field.linear_combination(
            [(lam, shares[i]) for lam, i in zip(lambdas, base, strict=True)]
        )
        if not np.array_equal(
            np.asarray(expected, dtype=object), np.asarray(shares[j], dtype=object)
        ):
            bad.append(j)
    return bad


@cache
def _extension_coefficients(t: int, x: int) -> tuple[int, ...]:
    """Integer λ_0..λ_t with f(x) = Σ_m λ_m f(m) for every f of degree ≤ t.

    Over the consecutive nodes 0..t these Lagrange coefficients are integers, so
    the caller multiplies by small constants (no modular inverse is involved).
    """
    coeffs = []
    for m in range(t + 1):
        c = Fraction(1)
        for k in range(t + 1):
            if k != m:
                c *= Fraction(x - k, m - k)
        assert c.denominator == 1
        coeffs.append(int(c))
    return tuple(coeffs)
