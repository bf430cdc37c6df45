"""Statistics for accuracy over problems x samples: mean@n, unbiased pass@k, bootstrap confidence intervals.

Resampling is always over *problems* (the unit that was drawn from a population); the samples of one problem stay
together.  A correctness matrix has shape [problems, samples] with 1.0 / 0.0 entries (``nan`` for ungradable, which
counts as incorrect in accuracy — the caller reports how many there were).
"""

from __future__ import annotations

import math

import numpy as np


def as_matrix(correct) -> np.ndarray:
    m = np.asarray(correct, dtype=float)
    if m.ndim == 1:
        m = m[:, None]
    return np.nan_to_num(m, nan=0.0)


def mean_at_n(correct) -> float:
    """Mean accuracy over all problems and samples (= expected pass@1).

    >>> mean_at_n([[1, 0], [1, 1]])
    0.75
    """
    return float(as_matrix(correct).mean())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct out of ``n`` samples (Chen et al. 2021).

    pass@k = 1 - C(n-c, k) / C(n, k)

    >>> pass_at_k(4, 1, 1)
    0.25
    >>> round(pass_at_k(4, 1, 2), 4)   # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_all(correct, ks: list[int] | None = None) -> dict[int, float]:
    """Mean unbiased pass@k over problems for every k (default: powers of two up to n, and n)."""
    m = as_matrix(correct)
    n = m.shape[1]
    if ks is None:
        ks = sorted({2**i for i in range(int(math.log2(n)) + 1)} | {n})
    counts = m.sum(axis=1).astype(int)
    return {k: float(np.mean([pass_at_k(n, int(c), k) for c in counts])) for k in ks if k <= n}


def bootstrap_ci(correct, *, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of mean@n, resampling problems with replacement."""
    per_problem = as_matrix(correct).mean(axis=1)
    return _bootstrap_mean(per_problem, resamples, seed, level)


def paired_bootstrap_ci(
    correct_a, correct_b, *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean_b - mean_a, low, high) for two models on the same problems, resampling problems jointly.

    Pairing removes the between-problem variance that two independent intervals would double count.
    """
    a = as_matrix(correct_a).mean(axis=1)
    b = as_matrix(correct_b).mean(axis=1)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same problems: {a.shape[0]} vs {b.shape[0]}")
    diff = b - a
    low, high = _bootstrap_mean(diff, resamples, seed, level)
    return float(diff.mean()), low, high


def _bootstrap_mean(values: np.ndarray, resamples: int, seed: int, level: float) -> tuple[float, float]:
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
