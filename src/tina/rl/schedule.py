"""Learning-rate schedules as plain functions of the step: constant, linear, cosine, cosine with a floor; linear warmup.

Tina's trick is a schedule laid over ``train.max_steps`` while the run stops at ``train.stop_step`` (about half), so
the learning rate is still high when training ends.  The schedule only knows ``total_steps``; the loop stops early.
"""

from __future__ import annotations

import math


def lr_multiplier(
    step: int,
    *,
    total_steps: int,
    kind: str,
    warmup_steps: int = 0,
    min_ratio: float = 0.0,
    warmup_from_zero: bool = False,
) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Warmup: step ``s < warmup_steps`` gets ``(s + 1) / warmup_steps``, so the first step already learns and the peak
    is reached on step ``warmup_steps - 1``.  ``warmup_from_zero=True`` is transformers' warmup (what Tina ran):
    ``s / warmup_steps``, a learning rate of 0 on step 0 (its gradient only moves AdamW's moments) and the peak on
    step ``warmup_steps``.  After warmup both are the same curve, equal to transformers' up to ``total_steps``.

    >>> lr_multiplier(0, total_steps=10, kind="cosine", warmup_steps=2)
    0.5
    >>> lr_multiplier(0, total_steps=10, kind="cosine", warmup_steps=2, warmup_from_zero=True)
    0.0
    >>> round(lr_multiplier(6, total_steps=10, kind="cosine", warmup_steps=2), 4)
    0.5
    >>> lr_multiplier(10, total_steps=10, kind="cosine_with_min_lr", min_ratio=0.1)
    0.1
    """
    if warmup_steps and step < warmup_steps:
        return (step if warmup_from_zero else step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":  # transformers' "linear": straight down to 0 at total_steps
        return 1.0 - progress
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "cosine":
        return cosine
    if kind == "cosine_with_min_lr":
        return min_ratio + (1.0 - min_ratio) * cosine
    raise ValueError(f"unknown schedule {kind!r}")


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)
