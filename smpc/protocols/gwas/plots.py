"""Manhattan and QQ plots of a GWAS result (PNG, matplotlib), with the inflation factor λ.

λ (genomic control) is the median of the 1-df chi-square statistics that the P-values
correspond to, divided by the chi-square distribution's median (≈ 0.4549): 1 when the
test statistics follow the null, above 1 under population stratification. It is
computed from the P-values, so it applies to every test (assoc, linear, logistic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

CHI2_MEDIAN = float(stats.chi2.ppf(0.5, 1))


def inflation(p: np.ndarray) -> float:
    """Genomic inflation factor λ of the P-values (NaN ignored; NaN if none)."""
    p = np.asarray(p, dtype=np.float64)
    p = p[np.isfinite(p) & (p > 0) & (p <= 1)]
    if p.size == 0:
        return float("nan")
    # isf decreases, so the median statistic is that of the one or two middle P values
    middle = np.partition(p, [(p.size - 1) // 2, p.size // 2])[[(p.size - 1) // 2, p.size // 2]]
    return float(stats.chi2.isf(middle, 1).mean() / CHI2_MEDIAN)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def manhattan(path: Path, chrom: np.ndarray, bp: np.ndarray, p: np.ndarray, title: str) -> Path:
    """−log10 P along the genome, chromosomes in alternating colours, 5e-8 marked."""
    plt = _pyplot()
    chrom = np.asarray(chrom).astype(str)
    bp = np.asarray(bp, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    ok = np.isfinite(p) & (p > 0)
    chromosomes = sorted(
        np.unique(chrom), key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c)
    )
    fig, ax = plt.subplots(figsize=(10, 4))
    offset, ticks = 0.0, []
    for k, c in enumerate(chromosomes):
        on = (chrom == c) & ok
        if not (chrom == c).any():
            continue
        span = bp[chrom == c]
        x = offset + bp[on] - span.min()
        ax.scatter(x, -np.log10(p[on]), s=4, color=("#1f4e79", "#7aa6d6")[k % 2])
        ticks.append((offset + (span.max() - span.min()) / 2, c))
        offset += span.max() - span.min() + max(1.0, 0.02 * (span.max() - span.min()))
    ax.axhline(-np.log10(5e-8), color="#b22222", linewidth=0.8, linestyle="--")
    if ticks:
        ax.set_xticks([t for t, _ in ticks], [c for _, c in ticks])
    ax.set_xlabel("chromosome")
    ax.set_ylabel("−log10 P")
    ax.set_title(f"{title}  (λ = {inflation(p):.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def qq(path: Path, p: np.ndarray, title: str) -> Path:
    """Observed against expected −log10 P, with the identity line and λ."""
    plt = _pyplot()
    p = np.asarray(p, dtype=np.float64)
    p = np.sort(p[np.isfinite(p) & (p > 0) & (p <= 1)])
    expected = -np.log10((np.arange(1, p.size + 1) - 0.5) / max(p.size, 1))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(expected, -np.log10(p), s=4, color="#1f4e79")
    top = max(float(expected.max(initial=1.0)), float(-np.log10(p).max(initial=1.0)))
    ax.plot([0, top], [0, top], color="#b22222", linewidth=0.8)
    ax.set_xlabel("expected −log10 P")
    ax.set_ylabel("observed −log10 P")
    ax.set_title(f"{title}  (λ = {inflation(p):.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pc_scatter(path: Path, pc1: np.ndarray, pc2: np.ndarray, title: str) -> Path:
    """A site's own samples on the pooled PC1 and PC2 (its ``.eigenvec``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(pc1, pc2, s=5, color="#1f4e79", alpha=0.7)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title(f"{title}: this site's samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def scree(path: Path, eigenvalues: np.ndarray, title: str) -> Path:
    """The pooled PCA's eigenvalues (``.eigenval``) against their component number."""
    plt = _pyplot()
    values = np.asarray(eigenvalues, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, values.size + 1), values, marker="o", color="#1f4e79")
    ax.set_xlabel("principal component")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"{title}: scree")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
