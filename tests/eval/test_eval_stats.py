"""Statistics against values worked out by hand or by an independent explicit loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tina.eval.candidates import BASE, Candidate
from tina.eval.selection import choose_checkpoint
from tina.eval.stats import (
    bootstrap_ci,
    mean_at_n,
    paired_bootstrap_ci,
    pass_at_k,
    pass_at_k_all,
    summarize,
)
from tina.ledger import add_eval_cost


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # n - c < k: every 4-subset holds a correct sample
        (5, 0, 3, 0.0),
        (5, 5, 1, 1.0),
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_needs_k_le_n():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_pass_at_k_all_and_mean_at_n_on_a_matrix():
    m = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=float)  # c = 2, 0, 4 of n = 4
    assert mean_at_n(m) == pytest.approx(6 / 12)
    got = pass_at_k_all(m)
    assert sorted(got) == [1, 2, 4]
    assert got[1] == pytest.approx((0.5 + 0 + 1) / 3)
    assert got[2] == pytest.approx((1 - 1 / 6 + 0 + 1) / 3)  # problem 1: 1 - C(2,2)/C(4,2)
    assert got[4] == pytest.approx(2 / 3)


def test_ungradable_counts_as_incorrect_and_is_counted():
    m = np.array([[1.0, np.nan], [1.0, 1.0]])
    assert mean_at_n(m) == 0.75
    s = summarize(m, seeds=[0], samples=2)
    assert s["n_ungradable"] == 1 and s["mean"] == 0.75


def test_summarize_groups_columns_by_seed():
    # 2 problems, seeds [7, 9] x 2 samples: seed 7 columns all right, seed 9 columns all wrong
    m = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=float)
    s = summarize(m, seeds=[7, 9], samples=2)
    assert s["per_seed_mean"] == {"7": 1.0, "9": 0.0}
    assert s["mean"] == 0.5 and s["n_samples"] == 4 and s["n_completions"] == 8 and s["seeds"] == [7, 9]
    assert s["pass_at_k"]["4"] == 1.0 and s["pass_at_k"]["1"] == 0.5


def _explicit_bootstrap(per_problem: np.ndarray, resamples: int, seed: int, level: float) -> tuple[float, float]:
    """The percentile bootstrap written out: one resample per loop turn, quantiles by linear interpolation."""
    rng = np.random.default_rng(seed)
    n = len(per_problem)
    means = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        means.append(sum(per_problem[i] for i in idx) / n)
    means.sort()

    def quantile(q):
        pos = q * (len(means) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(means) - 1)
        return means[lo] + (pos - lo) * (means[hi] - means[lo])

    alpha = (1 - level) / 2
    return quantile(alpha), quantile(1 - alpha)


def test_bootstrap_ci_matches_an_explicit_loop():
    m = np.array([[1, 1], [1, 0], [0, 0], [1, 1], [0, 1], [0, 0], [1, 1], [0, 0]], dtype=float)
    got = bootstrap_ci(m, resamples=500, seed=3)
    want = _explicit_bootstrap(m.mean(axis=1), 500, 3, 0.95)
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] <= mean_at_n(m) <= got[1]


def test_bootstrap_ci_degenerate_cases():
    assert bootstrap_ci(np.ones((5, 3))) == (1.0, 1.0)  # no spread, no interval
    assert all(math.isnan(x) for x in bootstrap_ci(np.zeros((0, 2))))


def test_paired_ci_is_narrower_than_unpaired_when_models_are_correlated():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(size=200)
    a = (rng.uniform(size=(200, 4)) > difficulty[:, None]).astype(float)  # [problems, samples]
    b = a.copy()
    flip = rng.choice(200, size=12, replace=False)
    b[flip] = 1.0  # b = a plus a few more problems solved: strongly correlated
    diff, low, high = paired_bootstrap_ci(a, b, resamples=2000, seed=0)
    assert diff == pytest.approx(b.mean() - a.mean())
    assert low <= diff <= high
    # unpaired: resample the two models' problems independently
    r1, r2 = np.random.default_rng(1), np.random.default_rng(2)
    pa, pb = a.mean(axis=1), b.mean(axis=1)
    unpaired = [pb[r2.integers(0, 200, 200)].mean() - pa[r1.integers(0, 200, 200)].mean() for _ in range(2000)]
    u_low, u_high = np.quantile(unpaired, [0.025, 0.975])
    assert (high - low) < 0.5 * (u_high - u_low)
    assert low > 0 > u_low  # the paired test sees the gain; the unpaired interval straddles zero


def test_choose_checkpoint_best_then_earliest():
    c1, c2, c3 = (Candidate(f"checkpoint-{s}", step=s) for s in (10, 20, 30))
    assert choose_checkpoint([(c1, 0.1), (c2, 0.3), (c3, 0.2)]) is c2
    assert choose_checkpoint([(c3, 0.3), (c2, 0.3), (c1, 0.1)]) is c2  # tie -> earliest step, whatever the order
    assert choose_checkpoint([(Candidate("x"), 0.5), (Candidate("y"), 0.5)]).label == "x"  # no steps: list order
    with pytest.raises(ValueError):
        choose_checkpoint([])
    assert BASE.adapter is None


def test_add_eval_cost_books_seconds_and_dollars(tmp_path):
    import json

    assert add_eval_cost(tmp_path, 10.0) is None  # no ledger, nothing to do
    (tmp_path / "ledger.json").write_text(
        json.dumps(
            {
                "wall_seconds": 3600.0,
                "phases": {"generation": 3000.0, "evaluation": 0.0, "other": 600.0},
                "num_devices": 2,
                "device_hours": 2.0,
                "usd_per_device_hour": 1.5,
                "usd": 3.0,
            }
        )
    )
    ledger = add_eval_cost(tmp_path, 1800.0)
    assert ledger["phases"]["evaluation"] == 1800.0
    assert ledger["wall_seconds"] == 5400.0
    assert ledger["device_hours"] == pytest.approx(3.0)  # 2 devices x 0.5 h
    assert ledger["usd"] == pytest.approx(4.5)
    assert ledger["evaluation"] == {"seconds": 1800.0, "device_hours": 1.0, "usd": 1.5, "runs": 1}
    ledger = add_eval_cost(tmp_path, 3600.0, num_devices=1)
    assert ledger["evaluation"]["runs"] == 2 and ledger["device_hours"] == pytest.approx(4.0)
    assert json.loads((tmp_path / "ledger.json").read_text()) == ledger
