"""Federated logistic regression on scikit-learn's breast-cancer data, three uneven sites.

The 569 records are shuffled once (seed 0) and split 50% / 30% / 20% over the sites
``s0``, ``s1``, ``s2`` (a site named otherwise takes the slice of its trailing digit,
modulo 3). Each round, a site starts from the global model and runs ``epochs`` steps
of full-batch gradient descent on the logistic loss over its slice; secure FedAvg
averages the local models weighted by the sites' record counts.

Features are standardised with the pooled mean and standard deviation. A real
federation gets those from one secure ``sum`` job over x and x² (``smpc run`` of a
``protocol: sum`` spec) before training; this example computes them from the public
data set for brevity.

Run it (from the repository root)::

    smpc local --spec examples/breast_cancer.yaml \\
        --trainer examples/breast_cancer.py:train --site s0 --site s1 --site s2 --out bc
    python examples/breast_cancer.py bc/model.npz

The second command prints the federated model's accuracy on the pooled data next to
the same procedure (``rounds × epochs`` gradient steps) run on the pooled data.
"""

from __future__ import annotations

import functools
import re
import sys

import numpy as np

SHARES = (0.5, 0.3, 0.2)
EPOCHS = 5  # local gradient steps per round
LEARNING_RATE = 0.5
L2 = 1e-3


@functools.cache
def dataset() -> tuple[np.ndarray, np.ndarray]:
    """The standardised features and the 0/1 labels, in a fixed shuffled order."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    order = np.random.default_rng(0).permutation(len(data.target))
    x = data.data[order]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x, data.target[order].astype(np.float64)


def site_slice(site: str) -> tuple[np.ndarray, np.ndarray]:
    """This site's records: s0 the first 50%, s1 the next 30%, s2 the last 20%."""
    x, y = dataset()
    digits = re.search(r"(\d+)$", site)
    index = int(digits.group(1)) % len(SHARES) if digits else 0
    bounds = np.round(np.cumsum((0.0, *SHARES)) * len(y)).astype(int)
    return x[bounds[index] : bounds[index + 1]], y[bounds[index] : bounds[index + 1]]


def initial_model() -> dict[str, np.ndarray]:
    return {"coef": np.zeros(dataset()[0].shape[1]), "intercept": np.zeros(())}


def gradient_descent(model, x, y, steps: int, lr: float = LEARNING_RATE, l2: float = L2):
    """``steps`` full-batch steps on the L2-regularised mean logistic loss."""
    w, b = model["coef"].astype(np.float64).copy(), float(model["intercept"])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        w -= lr * (x.T @ (p - y) / len(y) + l2 * w)
        b -= lr * float(np.mean(p - y))
    return {"coef": w, "intercept": np.array(b)}


def train(model, round, *, site, epochs=EPOCHS, lr=LEARNING_RATE):
    """The trainer ``smpc site serve`` calls each round: (local model, num_examples)."""
    x, y = site_slice(site)
    start = initial_model() if model is None else model
    return gradient_descent(start, x, y, int(epochs), float(lr)), len(y)


def pooled(rounds: int, epochs: int = EPOCHS, lr: float = LEARNING_RATE) -> dict[str, np.ndarray]:
    """The same procedure on the pooled data: ``rounds × epochs`` gradient steps."""
    x, y = dataset()
    return gradient_descent(initial_model(), x, y, rounds * epochs, lr)


def accuracy(model) -> float:
    """Accuracy of a model on the pooled data."""
    x, y = dataset()
    predicted = (x @ np.asarray(model["coef"]) + float(model["intercept"])) > 0
    return float(np.mean(predicted == y))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    with np.load(argv[0]) as archive:
        model = {k: archive[k] for k in archive.files}
    import json
    from pathlib import Path

    history = Path(argv[0]).with_name("history.json")
    rounds = len(json.loads(history.read_text())["rounds"]) if history.exists() else 10
    print(f"federated ({rounds} rounds): accuracy {accuracy(model):.4f}")
    print(f"pooled (same procedure):  accuracy {accuracy(pooled(rounds)):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
