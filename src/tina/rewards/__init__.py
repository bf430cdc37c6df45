"""Rewards: pure functions of a graded batch, a registry, and a weighted combination.

One training step::

    batch = RewardBatch(completions, answers, prompts, completion_lengths, group_size, truncated=rollout_truncated)
    batch = grade_batch(batch, timeout=5.0)
    totals, components = score(batch, [RewardSpec("format", 1.0), RewardSpec("accuracy", 2.0)])

`totals[i]` is None for an ungradable completion (the caller leaves it out of the advantage and counts it);
`components` maps each reward name to its raw per-completion values, for logging. A truncated, unfinished (think
block never closed) or hedged completion is never credited: accuracy gives it 0.0 (see `tina.grading.grader`).
Correctness rewards take ``extraction`` ("boxed", the training default, or "lenient").

Built-in rewards (Tina / open-r1 semantics, see each function's docstring): accuracy, format, tag_count,
reasoning_steps, cosine, repetition_penalty, length, length_l1_exact, length_l1_max. A custom reward is given as
``"package.module:function"`` with the signature ``fn(batch: RewardBatch, **params) -> list[float | None]``;
if it reads correctness, decorate it with `needs_verdicts` and use `correctness(batch)`.
"""

from tina.rewards.batch import RewardBatch, grade_batch
from tina.rewards.combine import RewardSpec, run_reward, score
from tina.rewards.graded import (
    accuracy,
    correctness,
    cosine,
    length,
    length_l1_exact,
    length_l1_max,
    needs_verdicts,
    target_tokens,
)
from tina.rewards.registry import REWARDS, RewardFn, check_params, get_reward, reward_params
from tina.rewards.text import format_reward, reasoning_steps, repetition_penalty, tag_count

__all__ = [
    "REWARDS",
    "RewardBatch",
    "RewardFn",
    "RewardSpec",
    "accuracy",
    "check_params",
    "correctness",
    "cosine",
    "format_reward",
    "get_reward",
    "grade_batch",
    "length",
    "length_l1_exact",
    "length_l1_max",
    "needs_verdicts",
    "reasoning_steps",
    "repetition_penalty",
    "reward_params",
    "run_reward",
    "score",
    "tag_count",
    "target_tokens",
]
