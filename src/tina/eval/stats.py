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


def summarize(correct: np.ndarray, *, seeds: list[int], samples: int, resamples: int = 2000) -> dict:
    """Statistics of one model on one benchmark from its correctness matrix [problems, seeds * samples].

    Columns are grouped by seed (seed 0's samples first).  Ungradable entries (nan) count as incorrect and are
    counted in ``n_ungradable``.

    >>> s = summarize(np.array([[1.0, 0.0], [1.0, 1.0]]), seeds=[0], samples=2)
    >>> s["mean"], s["pass_at_k"], s["n_samples"]
    (0.75, {'1': 0.75, '2': 1.0}, 2)
    """
    from tina.eval.stats import bootstrap_ci, mean_at_n, pass_at_k_all

    n_problems, n_samples = correct.shape
    per_seed = {str(s): mean_at_n(correct[:, i * samples : (i + 1) * samples]) for i, s in enumerate(seeds)}
    return {
        "mean": mean_at_n(correct),
        "ci95": list(bootstrap_ci(correct, resamples=resamples, seed=0)),
        "pass_at_k": {str(k): v for k, v in pass_at_k_all(correct).items()},
        "per_seed_mean": per_seed,
        "n_problems": int(n_problems),
        "n_samples": int(n_samples),  # completions per problem = samples x seeds
        "n_completions": int(n_problems * n_samples),
        "seeds": list(seeds),
        "n_ungradable": int(np.isnan(correct).sum()),
    }


def paired(baseline: np.ndarray, other: np.ndarray, *, label: str, resamples: int = 2000) -> dict:
    """Paired difference (other - baseline) with its 95% bootstrap CI over problems."""
    from tina.eval.stats import paired_bootstrap_ci

    diff, low, high = paired_bootstrap_ci(baseline, other, resamples=resamples, seed=0)
    return {"baseline": label, "diff": diff, "ci95": [low, high]}
