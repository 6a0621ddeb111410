"""Distributed differential privacy: Skellam noise added by the computing parties.

A ``sum`` or ``fedavg`` spec with ``dp: {epsilon, delta, clip}`` opens its sums with
integer noise inside. Who does what:

- **Sites clip** before encoding: every record's values of an input (``sum``: one CSV
  cell, or one row of an .npy/.npz array) to L2 norm ``clip``; every site's model update
  (``fedavg``: the difference to the round's global model, all arrays as one vector) to
  L2 norm ``clip``. That bounds how much one record (one site) moves the sums.
- **Parties add noise** in the encoded integers: party i draws Skellam noise
  ``Sk(mu_i) = Poisson(mu_i) - Poisson(mu_i)`` per value and secret-shares it like a
  site's input (Shamir: an MPyC input, so the noise is a degree-t polynomial too;
  additive: its own share), so the opened sum carries the noise of all N parties. The
  noise of any ``N - t`` parties alone must suffice, since ``t`` colluding parties know
  (and could subtract) their own: ``mu_i = mu / (N - t)``, and a sum of Skellam variables
  is Skellam, so any ``N - t`` honest parties contribute ``Sk(mu)`` or more.
- **The accountant** calibrates ``mu`` to the spec. Skellam noise ``Sk(mu)`` on a query
  of L2 sensitivity D2 and L1 sensitivity D1 is (alpha, eps(alpha))-Renyi-DP with
  ``eps(alpha) <= alpha D2^2 / (4 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (16 mu^2),
  3 D1 / (4 mu))`` (Agarwal, Kairouz, Liu 2021, "The Skellam Mechanism for Differentially
  Private Federated Learning"). Its leading term is the Gaussian's (zCDP with
  ``rho = D2^2 / (4 mu)``); Renyi divergences add up over the rounds of a job, and the
  total converts to (epsilon, delta) by ``eps = min_alpha eps_total(alpha) +
  log(1/delta) / (alpha - 1)``. ``mu`` is the smallest (by bisection) that meets the
  spec's epsilon over all rounds.

Sensitivities are in encoded units (values times 2^frac_bits): rounding each of d
clipped values to an integer moves a vector by at most sqrt(d)/2, so
``D2 = clip 2^f + sqrt(d)/2`` per input and ``D1 <= sqrt(d) D2``; one record can touch
every input of a ``sum``, so the inputs' D2 add in squares and their D1 add.

Not noised, and so public to the analyst as exact values: the counts of a ``sum``
(``<input>.count``) and ``num_examples`` of a ``fedavg`` (with dp every site weighs 1:
a site's weight must be bounded for its influence to be; its record count still goes
to the parties for their minimum-records policy).

Noise comes from NumPy's Poisson sampler seeded with 256 bits from the operating
system's CSPRNG per job; it samples integers, so the floating-point attacks on
textbook Laplace samplers do not apply.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from smpc.errors import UserError

DEFAULT_DELTA = 1e-6
"""delta when a spec gives only epsilon (Skellam noise has no pure epsilon-DP)."""

ORDERS: tuple[float, ...] = tuple(
    [1.0 + x / 10 for x in range(1, 10)] + [2, 2.5, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64]
    + [128, 256, 512, 1024]
)  # fmt: skip
"""Renyi orders the accountant optimises over."""

MAX_POISSON = 1e18  # the accountant's upper end for mu
POISSON_CHUNK = float(2**40)
"""Largest mean drawn in one NumPy Poisson call: above ~1e14 its variance is visibly
wrong (float64 cancellation in its rejection sampler), so larger means are drawn as a
sum of Poissons of at most this mean (a sum of Poissons is Poisson)."""
MAX_PER_PARTY = POISSON_CHUNK * 64  # at most 64 draws per value and sign
RESOLUTION_BITS = 20
"""With dp, the default encoding resolves the clip bound into 2^20 steps: fine enough
that rounding barely adds to the sensitivity, coarse enough for the noise to stay
within :data:`MAX_PER_PARTY`."""


def default_frac_bits(clip: float) -> int:
    """Fractional bits of a dp spec without an explicit encoding: clip * 2^f ~ 2^20."""
    return min(29, max(0, RESOLUTION_BITS - math.ceil(math.log2(clip))))


@dataclass(frozen=True)
class Sensitivity:
    """How far one record (sum) or one site (fedavg) moves the noised outputs."""

    l2: float
    l1: float


@dataclass(frozen=True)
class NoisePlan:
    """The noise a job's parties add, in encoded units, and the guarantee it gives."""

    mu: float  # Sk(mu) per value: what any N - t parties' noise adds up to
    per_party: float  # mu / (N - t): what each party draws
    parties: int  # N: all parties add noise, so the opened noise is Sk(N * per_party)
    sensitivity: Sensitivity
    compositions: int  # noised releases covered (the rounds of a job)
    epsilon: float  # achieved over all compositions (at most the spec's)
    delta: float
    frac_bits: int

    @property
    def std(self) -> float:
        """Standard deviation of the opened noise per value, in the data's units."""
        return math.sqrt(2 * self.parties * self.per_party) / 2.0**self.frac_bits

    @property
    def guaranteed_std(self) -> float:
        """Standard deviation of the noise N - t honest parties guarantee, data units."""
        return math.sqrt(2 * self.mu) / 2.0**self.frac_bits

    def summary(self) -> dict[str, float | int]:
        """What result.json reports about the noise."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rounds": self.compositions,
            "noise_std": self.std,
            "guaranteed_noise_std": self.guaranteed_std,
            "skellam_mu_per_party": self.per_party,
        }


def skellam_rdp(alpha: float, mu: float, sens: Sensitivity) -> float:
    """Renyi-DP of one Skellam release at order ``alpha`` (module docstring)."""
    d2, d1 = sens.l2**2, sens.l1
    lead = alpha * d2 / (4 * mu)
    return lead + min(((2 * alpha - 1) * d2 + 6 * d1) / (16 * mu**2), 3 * d1 / (4 * mu))


def epsilon_for(mu: float, sens: Sensitivity, compositions: int, delta: float) -> float:
    """(epsilon, delta)-DP of ``compositions`` Skellam releases with parameter ``mu``."""
    return min(
        compositions * skellam_rdp(a, mu, sens) + math.log(1 / delta) / (a - 1) for a in ORDERS
    )


def calibrate(epsilon: float, delta: float, sens: Sensitivity, compositions: int) -> float:
    """The smallest Skellam ``mu`` giving (epsilon, delta)-DP over all compositions."""
    if epsilon_for(MAX_POISSON, sens, compositions, delta) > epsilon:
        raise UserError(
            f"dp: epsilon {epsilon:g} needs more noise than can be drawn; raise epsilon or "
            "delta, lower clip, or use fewer frac_bits in encoding"
        )
    low, high = 1e-3, MAX_POISSON
    while epsilon_for(low, sens, compositions, delta) <= epsilon:
        low /= 1e3
    for _ in range(200):  # geometric bisection: mu spans many orders of magnitude
        mid = math.sqrt(low * high)
        if epsilon_for(mid, sens, compositions, delta) <= epsilon:
            high = mid
        else:
            low = mid
        if high / low < 1 + 1e-9:
            break
    return high


def sensitivity(shapes: Iterable[Sequence[int]], clip: float, frac_bits: int) -> Sensitivity:
    """Sensitivity of noised outputs with these per-record (per-site) shapes."""
    scale = clip * 2.0**frac_bits
    l2_squares, l1 = 0.0, 0.0
    for shape in shapes:
        d = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        l2 = scale + math.sqrt(d) / 2
        l2_squares += l2**2
        l1 += math.sqrt(d) * l2
    return Sensitivity(l2=math.sqrt(l2_squares), l1=l1)


def plan(
    dp: object,
    shapes: Iterable[Sequence[int]],
    *,
    parties: int,
    threshold: int,
    frac_bits: int,
    compositions: int = 1,
) -> NoisePlan:
    """The noise for a spec's ``dp`` (epsilon, delta, clip) over outputs of ``shapes``.

    ``shapes`` are the shapes of one record's (sum) or one site's (fedavg) contribution
    to each noised output; ``threshold`` is t: any N - t parties' noise suffices.
    """
    delta = DEFAULT_DELTA if dp.delta is None else dp.delta  # type: ignore[attr-defined]
    epsilon = dp.epsilon  # type: ignore[attr-defined]
    sens = sensitivity(shapes, dp.clip, frac_bits)  # type: ignore[attr-defined]
    mu = calibrate(epsilon, delta, sens, compositions)
    honest = parties - threshold
    if mu / honest > MAX_PER_PARTY:
        raise UserError(
            f"dp: the noise (Skellam mu {mu:.3g} in encoded units) is too large to draw "
            f"exactly; use fewer encoding.frac_bits (now {frac_bits}; the dp default is "
            f"{default_frac_bits(dp.clip)})"  # type: ignore[attr-defined]
        )
    return NoisePlan(
        mu=mu,
        per_party=mu / honest,
        parties=parties,
        sensitivity=sens,
        compositions=compositions,
        epsilon=epsilon_for(mu, sens, compositions, delta),
        delta=delta,
        frac_bits=frac_bits,
    )


def secure_generator() -> np.random.Generator:
    """NumPy's samplers on ChaCha20 (randomgen) keyed with 256 bits from ``secrets``.

    ChaCha20 with a secret key is a cryptographically secure generator; NumPy's own
    bit generators (PCG64, Philox, SFC64) are not meant to be.
    """
    from randomgen import ChaCha

    return np.random.Generator(ChaCha(key=secrets.randbits(256), rounds=20))


def skellam(mu: float, shape: Sequence[int], rng: np.random.Generator | None = None) -> np.ndarray:
    """Integer Skellam noise Sk(mu) = Poisson(mu) - Poisson(mu), int64.

    Means above :data:`POISSON_CHUNK` are drawn as sums of k Poissons of mean mu/k.
    The default generator is :func:`secure_generator`: noise that hides a site's data
    must not be predictable from earlier draws, as NumPy's PCG64 outputs would be.
    """
    rng = rng or secure_generator()
    k = max(1, math.ceil(mu / POISSON_CHUNK))
    noise = np.zeros(shape, dtype=np.int64)
    for _ in range(k):
        noise += rng.poisson(mu / k, shape).astype(np.int64)
        noise -= rng.poisson(mu / k, shape).astype(np.int64)
    return noise


def clip_rows(values: np.ndarray, clip: float) -> np.ndarray:
    """Scale each record (first axis; a scalar per record for 1-D) to L2 norm <= clip."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim <= 1:
        return np.clip(values, -clip, clip)
    flat = values.reshape(len(values), -1)
    norms = np.linalg.norm(flat, axis=1)
    factor = np.minimum(1.0, clip / np.maximum(norms, np.finfo(np.float64).tiny))
    return (flat * factor[:, None]).reshape(values.shape)


def clip_update(arrays: dict[str, np.ndarray], clip: float) -> dict[str, np.ndarray]:
    """Scale a model update (all arrays as one vector) to L2 norm <= clip."""
    norm = math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values()))
    factor = 1.0 if norm <= clip else clip / norm
    return {k: np.asarray(a, dtype=np.float64) * factor for k, a in arrays.items()}
