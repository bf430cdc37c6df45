"""Phase transitions in a training curve (Tina §5).

Phase transition (Tina §5: format reward and completion length turn sharply while accuracy drifts smoothly; the best
checkpoint tends to lie just before or around the turn) is found with :func:`detect_phase_transition`:

1. smooth the series with a centred moving average of ``w = n // 15`` points (rounded up to odd; none for short runs);
2. for every break ``b`` leaving at least ``m = max(3, n // 10)`` points on each side, fit one straight line to the
   points before ``b`` and another to those from ``b`` on (least squares, on the smoothed series), and keep the ``b``
   with the smallest total squared error (SSE);
3. ``strength = 1 - SSE(two lines) / SSE(one line)``: the share of the smoothed series' misfit to a straight line
   that the break explains (0 = no better than one line, 1 = two lines fit perfectly);
   ``effect = max |two-line fit - one-line fit| / noise``, with ``noise`` the step-to-step noise of the smoothed series
   (robust: 1.4826 * MAD of first differences / sqrt(2), divided by sqrt(w));
4. the transition is **clear** when strength >= 0.6 and effect >= 3, **weak** when strength >= 0.4 and effect >= 2,
   otherwise there is **no clear transition** (a straight trend or flat noise gives a small strength).

On synthetic data (see tests) a kink or jump is found within a few steps; flat noise and straight trends are "none".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLEAR = (0.6, 3.0)  # (strength, effect) thresholds
WEAK = (0.4, 2.0)
FORMAT_REWARDS = ("reward/format", "reward/boxed_number", "reward/tag_count")  # the "format" of the paper's story


def series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [
        (m["step"], m[key])
        for m in metrics
        if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool) and math.isfinite(m[key])
    ]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


@dataclass
class Transition:
    """Where a series turns: the first step of the second segment, and how convincing the turn is."""

    step: float | None
    strength: float  # 1 - SSE(two lines) / SSE(one line), smoothed series
    effect: float  # largest gap between the two fits, in units of the smoothed series' noise
    label: str  # "clear" | "weak" | "none"
    slope_before: float = 0.0
    slope_after: float = 0.0
    window: int = 1
    fit: tuple | None = None  # (steps, two-line fit values) for plotting
    note: str = ""  # why there is no verdict (too few steps, constant series)

    @property
    def found(self) -> bool:
        return self.label != "none"

    def describe(self, what: str, unit: str = "") -> str:
        if self.note:
            return f"{what}: no transition to look for ({self.note})"
        if not self.found:
            return (
                f"{what}: no clear transition (strength {self.strength:.2f}, effect {self.effect:.1f}; "
                f"a straight line fits about as well)"
            )
        per = f" {unit}/step" if unit else "/step"
        return (
            f"{what}: {self.label} transition at step {self.step:g} (strength {self.strength:.2f}, effect "
            f"{self.effect:.1f}); slope {self.slope_before:+.3g}{per} before, {self.slope_after:+.3g}{per} after"
        )


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at the ends (no padding bias).

    >>> moving_average(np.array([0., 0., 3., 0., 0.]), 3).tolist()
    [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    if window <= 1:
        return y.astype(float).copy()
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(y, dtype=float)])
    idx = np.arange(len(y))
    lo, hi = np.maximum(0, idx - half), np.minimum(len(y), idx + half + 1)
    return (csum[hi] - csum[lo]) / (hi - lo)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(slope, intercept, SSE) of the least-squares line."""
    a = np.vstack([x, np.ones_like(x)]).T
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    r = y - a @ coef
    return float(coef[0]), float(coef[1]), float(r @ r)


def detect_phase_transition(steps, values, *, window: int | None = None, min_segment: int | None = None) -> Transition:
    """Two-segment piecewise-linear change point of a series (see the module docstring for the method).

    >>> x = np.arange(1, 101); y = np.where(x < 40, 0.1 + 0.02 * x, 0.88)
    >>> t = detect_phase_transition(x, y); (t.label, abs(t.step - 40) <= 3)
    ('clear', True)
    >>> detect_phase_transition(x, 0.5 + 0.001 * x).label
    'none'
    """
    pts = [
        (float(s), float(v)) for s, v in zip(steps, values, strict=True) if v is not None and math.isfinite(float(v))
    ]
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    n = len(y)
    m = min_segment or max(3, n // 10)
    w = window or max(1, (n // 15) | 1)
    if n < 2 * m + 1:
        return Transition(None, 0.0, 0.0, "none", window=w, note=f"{n} steps; at least {2 * m + 1} are needed")
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        return Transition(None, 0.0, 0.0, "none", window=w, note="the series is constant")
    s = moving_average(y, w)
    slope1, icpt1, sse1 = _line(x, s)
    best = None
    for b in range(m, n - m + 1):
        left, right = _line(x[:b], s[:b]), _line(x[b:], s[b:])
        total = left[2] + right[2]
        if best is None or total < best[0]:
            best = (total, b, left, right)
    sse2, b, left, right = best
    strength = max(0.0, 1.0 - sse2 / sse1) if sse1 > 1e-18 else 0.0
    fit2 = np.concatenate([left[0] * x[:b] + left[1], right[0] * x[b:] + right[1]])
    gap = float(np.max(np.abs(fit2 - (slope1 * x + icpt1))))
    d = np.diff(y)
    noise = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2) / math.sqrt(w)
    effect = gap / noise if noise > 0 else (math.inf if gap > 0 else 0.0)
    if strength >= CLEAR[0] and effect >= CLEAR[1]:
        label = "clear"
    elif strength >= WEAK[0] and effect >= WEAK[1]:
        label = "weak"
    else:
        label = "none"
    return Transition(
        float(x[b]) if label != "none" else None, strength, effect, label, left[0], right[0], w, (x, fit2)
    )


def transitions(metrics: list[dict]) -> dict[str, Transition]:
    """Change points of the format reward(s) the run has and of the completion length."""
    out = {}
    for key in (*FORMAT_REWARDS, "completion_length"):
        x, y = series(metrics, key)
        if x:
            out[key] = detect_phase_transition(x, y)
    return out


def primary_transition(found: dict[str, Transition]) -> tuple[str | None, Transition | None]:
    """The strongest clear (else weak) transition among the format reward(s) and completion length."""
    ranked = sorted(((t.label == "clear", t.strength, k) for k, t in found.items() if t.found), reverse=True)
    if not ranked:
        return None, None
    key = ranked[0][2]
    return key, found[key]
