"""Principal components of the pooled genotypes, as ``plink2 --pca K meanimpute`` computes them.

PLINK 2 (``CalcPca``, ``ExpandCenteredVarmaj`` in ``plink2_matrix_calc.cc``) standardises
each variant's A1 dosage ``g`` with the founders' A1 frequency ``p`` as
``(g − 2p)/sqrt(2p(1 − p))``, a missing call as 0 (the mean, after centring), and takes the
top eigenpairs of the relationship matrix ``G = Y Yᵀ / M`` over the ``M`` variants used:
``.eigenval`` holds the eigenvalues of ``G``, ``.eigenvec`` its unit-norm eigenvectors
(the sample scores), and ``--pca biallelic-var-wts`` writes ``.eigenvec.var``, the
variant weights ``Yᵀu/sqrt(λ)`` per copy of the non-major allele.

``G`` is never formed. Its nonzero eigenvalues are those of ``C = YᵀY / M`` (variants ×
variants), and ``C = Σ_s Y_sᵀY_s / M`` is a sum over sites. :class:`SubspaceIteration`
runs subspace iteration on ``YᵀY`` in variant space: each round the sites get the public
basis ``Q`` (``M × l``, ``l = K + OVERSAMPLE``), each computes ``Y_sᵀ(Y_s Q)``
(:func:`site_product`) and the federation adds them (a secure sum); the analyst solves the
small Rayleigh–Ritz problem ``(QᵀZ) w = θ (QᵀQ) w`` and orthonormalises ``Z`` into the
next basis. It stops when every one of the top K Ritz values changes by less than
:data:`TOLERANCE` relative between two rounds. The eigenvalues are ``θ/M``, the variant
weights ``sqrt(M)·v``, and each site scores its own samples ``u_s = Y_s v / sqrt(θ)``
(:func:`site_scores`), which never leave it.

Missing calls: PLINK 2's exact (non-``approx``) ``--pca`` without ``meanimpute`` divides
each entry of ``G`` by the number of variants both samples have a call at, a matrix that
is not a sum of per-site products (an entry pairs samples of two sites). This module
computes what ``meanimpute`` asks for, which ``--pca approx`` always does; without
missing calls all three agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_COMPONENTS = 10
DEFAULT_MAF = 0.01
OVERSAMPLE = 5
"""Extra basis vectors: convergence goes as (λ_{K+OVERSAMPLE+1}/λ_K)^rounds."""
TOLERANCE = 1e-10
"""Stop when max_k |θ_k − θ_k'| / θ_k < TOLERANCE over the top K Ritz values of two rounds."""
MAX_ROUNDS = 200
SMALL_EPSILON = 2.0**-44  # PLINK's kSmallEpsilon: a variance at or below it is degenerate


def founder_frequency(counts: np.ndarray) -> np.ndarray:
    """The founders' A1 frequency per variant from genotype counts ``(V, 3, 2, 4)``
    (:func:`.align.site_counts`: axes class, founder flag, genotype A1A1/het/A2A2/missing)."""
    founders = np.asarray(counts, dtype=np.float64)[:, :, 1, :].sum(axis=1)
    called = 2.0 * founders[:, :3].sum(axis=1)
    a1 = 2.0 * founders[:, 0] + founders[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(called > 0, a1 / np.where(called > 0, called, 1.0), np.nan)


def standardize(genotypes: np.ndarray, p: np.ndarray) -> np.ndarray:
    """PLINK 2's variance-standardised A1 dosages: ``(g − 2p)/sqrt(2p(1−p))``, missing 0.

    ``genotypes`` int8 ``(n, m)``, copies of A1 with -1 missing; ``p`` the A1 frequency.
    A variant with variance ``2p(1 − p) ≤ 2^-44`` is all zero, as PLINK 2 sets it.
    """
    g = np.asarray(genotypes)
    p = np.asarray(p, dtype=np.float64)
    variance = 2.0 * p * (1.0 - p)
    ok = variance > SMALL_EPSILON
    inv = np.where(ok, 1.0 / np.sqrt(np.where(ok, variance, 1.0)), 0.0)
    y = (g.astype(np.float64) - 2.0 * p) * inv
    y[g < 0] = 0.0
    return y


def site_product(
    genotypes: np.ndarray, p: np.ndarray, basis: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """A site's ``Y_sᵀ(Y_s Q)`` (``m × l``): two passes over its variants in chunks, so
    only one chunk is ever standardised in float64."""
    q = np.asarray(basis, dtype=np.float64)
    n, m = genotypes.shape
    yq = np.zeros((n, q.shape[1]))
    for start in range(0, m, chunk):
        part = slice(start, start + chunk)
        yq += standardize(genotypes[:, part], p[part]) @ q[part]
    out = np.empty((m, q.shape[1]))
    for start in range(0, m, chunk):
        part = slice(start, start + chunk)
        out[part] = standardize(genotypes[:, part], p[part]).T @ yq
    return out


def site_scores(
    genotypes: np.ndarray, p: np.ndarray, vectors: np.ndarray, theta: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """A site's sample scores ``Y_s v / sqrt(θ)`` (``n × K``): its rows of the unit-norm
    eigenvectors of ``G``. ``vectors`` are the unit-norm variant-space vectors ``v``."""
    v = np.asarray(vectors, dtype=np.float64)
    n, m = genotypes.shape
    out = np.zeros((n, v.shape[1]))
    for start in range(0, m, chunk):
        part = slice(start, start + chunk)
        out += standardize(genotypes[:, part], p[part]) @ v[part]
    return out / np.sqrt(np.asarray(theta, dtype=np.float64))


def orthonormal(z: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of ``z`` (thin QR)."""
    q, _ = np.linalg.qr(np.asarray(z, dtype=np.float64))
    return q


@dataclass
class SubspaceIteration:
    """The analyst's side of the PCA: the public basis of each round and the Ritz values.

    ``basis`` is what the next round's job carries (float32, as it travels: the Rayleigh–Ritz
    step uses exactly these values, so the rounding only perturbs the start of a round).
    """

    variants: int
    components: int
    seed: int = 0
    basis: np.ndarray = field(init=False)
    ritz: np.ndarray | None = field(default=None, init=False)
    vectors: np.ndarray | None = field(default=None, init=False)
    rounds: int = field(default=0, init=False)
    change: float = field(default=math.inf, init=False)

    def __post_init__(self) -> None:
        width = min(self.components + OVERSAMPLE, self.variants)
        start = np.random.default_rng(self.seed).standard_normal((self.variants, width))
        self.basis = orthonormal(start).astype(np.float32)

    def update(self, z: np.ndarray) -> bool:
        """One round's pooled ``Σ_s Y_sᵀ(Y_s Q)``: the Ritz pairs and the next basis;
        True once converged (:data:`TOLERANCE`)."""
        from scipy.linalg import eigh

        q = self.basis.astype(np.float64)
        z = np.asarray(z, dtype=np.float64)
        h = q.T @ z
        h = (h + h.T) / 2.0
        theta, w = eigh(h, q.T @ q)
        order = np.argsort(theta)[::-1]
        theta, w = theta[order], w[:, order]
        k = self.components
        top = theta[:k]
        if self.ritz is not None:
            self.change = float(np.max(np.abs(top - self.ritz) / np.abs(top)))
        self.ritz = top
        # one more power than Q w: C Q w / θ, normalised
        v = z @ w[:, :k]
        self.vectors = v / np.linalg.norm(v, axis=0)
        self.rounds += 1
        self.basis = orthonormal(z @ w).astype(np.float32)
        return self.change < TOLERANCE

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(θ (K,), v (M, K))``: eigenvalues of YᵀY and unit-norm vectors, sign fixed so
        that each vector's largest entry is positive."""
        assert self.ritz is not None and self.vectors is not None
        v = self.vectors.copy()
        pivot = np.argmax(np.abs(v), axis=0)
        v *= np.sign(v[pivot, np.arange(v.shape[1])])
        return self.ritz.copy(), v


def eigenvalues(theta: np.ndarray, variants: int) -> np.ndarray:
    """The eigenvalues of ``G = YYᵀ/M`` that ``.eigenval`` prints."""
    return np.asarray(theta, dtype=np.float64) / variants


def variant_weights(vectors: np.ndarray, a1_freq: np.ndarray) -> np.ndarray:
    """``--pca biallelic-var-wts``: ``sqrt(M)·v`` per copy of the non-major allele (the
    A1 dosage's weight, negated where A1 is the major allele)."""
    m = vectors.shape[0]
    major_a1 = np.asarray(a1_freq) > 0.5
    return np.sqrt(m) * np.where(major_a1[:, None], -vectors, vectors)


# --- PLINK 2's files ------------------------------------------------------------------


def plink2_g(value: float) -> str:
    """PLINK 2's ``dtoa_g``: six significant digits, like C's ``%g``."""
    return f"{value:.6g}"


def write_eigenval(path: Path, values: Iterable[float]) -> None:
    """``.eigenval``: one eigenvalue per line."""
    path.write_text("".join(plink2_g(float(v)) + "\n" for v in values))


def write_eigenvec(path: Path, fid: Sequence[str], iid: Sequence[str], scores: np.ndarray) -> None:
    """``.eigenvec``: ``#FID IID PC1 … PCK`` (the FID column only when some FID is not 0,
    PLINK 2's ``maybefid``), tab separated."""
    k = scores.shape[1]
    with_fid = any(f != "0" for f in fid)
    head = (["#FID", "IID"] if with_fid else ["#IID"]) + [f"PC{j + 1}" for j in range(k)]
    lines = ["\t".join(head)]
    for f, i, row in zip(fid, iid, scores, strict=True):
        ids = [str(f), str(i)] if with_fid else [str(i)]
        lines.append("\t".join(ids + [plink2_g(float(x)) for x in row]))
    path.write_text("\n".join(lines) + "\n")


def write_eigenvec_var(
    path: Path,
    chrom: Iterable[str],
    snp: Iterable[str],
    a1: Iterable[str],
    a2: Iterable[str],
    a1_freq: np.ndarray,
    weights: np.ndarray,
) -> None:
    """``.eigenvec.var`` as PLINK 2 (v2.00a3) writes it: ``#CHROM ID MAJ NONMAJ PC1 …``."""
    k = weights.shape[1]
    major_a1 = np.asarray(a1_freq) > 0.5
    lines = ["\t".join(["#CHROM", "ID", "MAJ", "NONMAJ"] + [f"PC{j + 1}" for j in range(k)])]
    for c, s, x, y, maj, row in zip(chrom, snp, a1, a2, major_a1, weights, strict=True):
        alleles = [x, y] if maj else [y, x]
        lines.append("\t".join([str(c), str(s), *alleles] + [plink2_g(float(w)) for w in row]))
    path.write_text("\n".join(lines) + "\n")
