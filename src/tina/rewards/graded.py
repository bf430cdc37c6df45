r"""Rewards that need correctness: accuracy, cosine, length (Kimi-1.5), length_l1_exact, length_l1_max.

They read `batch.verdicts` (filled once per batch by `grade_batch`, using the same grader as evaluation) and return
None for a completion whose verdict is ungradable (``verdict.correct is None``: gold unparseable or grader timeout).
Unlike open-r1/Tina, an unparseable gold never turns into a reward of 1.0 or into "treated as correct".

Each takes ``extraction`` (recipe: ``rewards: {accuracy: {weight: 1.0, extraction: boxed}}``): "boxed" (the default,
Tina's reward: only the last ``\boxed{}`` of the final answer part counts) or "lenient" (also "answer is" phrases and
math spans, as the benchmark grader). A completion that is truncated (`RewardBatch.truncated`), unfinished (think block
never closed) or hedged is wrong (``correct=False``) -- a real failure, never None -- whatever the extraction; see the
rules in `tina.grading.grader`.

Parameters that reproduce Tina's released code where tina deliberately differs (docs/fidelity.md): ``ungradable``
(what an ungradable completion scores: tina leaves it out; Tina's accuracy counted it 0, its cosine paid 1.0, its
length rewards treated it as correct), cosine's ``clip`` (Tina's cosine was not clipped past `max_len`) and the L1
rewards' ``unit`` (Tina counted characters against the token target).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import TypeVar

from tina.errors import ConfigError, RewardError, did_you_mean
from tina.rewards.batch import RewardBatch

F = TypeVar("F", bound=Callable[..., list])

#: Values of the ``extraction`` parameter (same as `tina.grading.EXTRACTIONS`; repeated so this module imports no
#: grader). "boxed" is the training default.
EXTRACTIONS = ("boxed", "lenient")

#: Values of each reward's ``ungradable`` parameter: what a completion whose verdict is ungradable (gold unparseable,
#: grader timeout) scores.  "exclude" (tina's default): None, so the caller leaves it out of the advantage and the loss
#: and counts it.  The other value is what Tina's released code did (tina/post_train_hf/rewards.py):
#: accuracy returned None, which its trainer turned into NaN and then 0 in the ``nansum`` over rewards ("zero");
#: cosine appended 1.0 ("one"); length and the L1 rewards treated the completion as correct ("correct").
UNGRADABLE_ACCURACY = ("exclude", "zero")
UNGRADABLE_COSINE = ("exclude", "one")
UNGRADABLE_LENGTH = ("exclude", "correct")
#: Values of the L1 rewards' ``unit``: what n_y counts. "tokens" (L1's definition) or "chars" (Tina's code:
#: ``len(completion text)`` against a target given in tokens).
UNITS = ("tokens", "chars")


def choice_error(reward: str, key: str, value, allowed: tuple) -> str | None:
    """The one-line error for a parameter value outside its declared choices, or None.  True == 1 in Python: a flag
    must be a boolean, and a choice of words never one.  Recipes spell booleans as YAML's true / false."""
    if value in allowed and isinstance(value, bool) == isinstance(allowed[0], bool):
        return None
    shown = [("true" if a else "false") if isinstance(a, bool) else str(a) for a in allowed]
    hint = did_you_mean(str(value).lower() if isinstance(value, str) else str(value), shown)
    return f"reward '{reward}': {key} must be one of {', '.join(shown)}, got {value!r}{hint}"


def param_choices(**choices: tuple) -> Callable[[F], F]:
    """Declare the allowed values of some keyword parameters: `tina.rewards.check_params` checks recipes against them
    (``fn.param_choices``), and a direct call with another value is the same one-line ConfigError."""

    def mark(fn: F) -> F:
        @functools.wraps(fn)
        def checked(*args, **kwargs):
            for key, allowed in choices.items():
                if key in kwargs and (error := choice_error(fn.__name__, key, kwargs[key], allowed)):
                    raise ConfigError(error)
            return fn(*args, **kwargs)

        checked.param_choices = {**getattr(fn, "param_choices", {}), **choices}  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return mark


def needs_verdicts(fn: F) -> F:
    """Mark a reward as reading `batch.verdicts`; `score` checks that the batch was graded before calling it."""
    fn.needs_verdicts = True  # type: ignore[attr-defined]
    return fn


def _check_extraction(extraction: str) -> None:
    if extraction not in EXTRACTIONS:
        hint = did_you_mean(str(extraction), EXTRACTIONS)
        raise ConfigError(f"extraction must be one of {', '.join(EXTRACTIONS)}, got {extraction!r}{hint}")


def correctness(batch: RewardBatch, extraction: str = "boxed") -> list[bool | None]:
    """Per-completion True / False / None (ungradable) from the batch's verdicts, with `extraction`'s answers only.

    A truncated completion (`batch.truncated`) is False whatever its verdict says (the grader already calls it
    "unfinished" when `grade_batch` had the flags; this also covers verdicts made elsewhere).
    """
    if batch.verdicts is None:
        raise ValueError(
            "batch.verdicts is None: call tina.rewards.grade_batch(batch) before a reward that needs correctness"
        )
    _check_extraction(extraction)
    from tina.grading.grader import restrict  # the one grader module decides what each extraction accepts

    out: list[bool | None] = []
    for i, verdict in enumerate(batch.verdicts):
        if batch.is_truncated(i):
            out.append(False)
            continue
        correct = restrict(verdict, extraction).correct
        if correct is not None and not isinstance(correct, bool):
            raise ValueError(f"verdict {i} has correct={correct!r}; expected True, False or None")
        out.append(correct)
    return out


@needs_verdicts
@param_choices(extraction=EXTRACTIONS, ungradable=UNGRADABLE_ACCURACY)
def accuracy(batch: RewardBatch, *, extraction: str = "boxed", ungradable: str = "exclude") -> list[float | None]:
    """1.0 if the grader says correct, 0.0 if wrong, None if ungradable (the sample is then left out of the update).

    Unfinished (truncated, think block never closed) and hedged completions are wrong: 0.0, not None -- the policy
    must learn to avoid them. `extraction`: "boxed" (default: only a boxed final answer counts) or "lenient".
    `ungradable`: "exclude" (default: None) or "zero" (Tina: 0.0, and the completion stays in its group).

    >>> from types import SimpleNamespace as V
    >>> b = RewardBatch(["a", "b", "c", "d"], ["1"] * 4, ["p"] * 4, [1] * 4, 1,
    ...                 [V(correct=True), V(correct=False), V(correct=None), V(correct=True)],
    ...                 truncated=[False, False, False, True])
    >>> accuracy(b)
    [1.0, 0.0, None, 0.0]
    >>> accuracy(b, ungradable="zero")
    [1.0, 0.0, 0.0, 0.0]
    """
    missing = None if ungradable == "exclude" else 0.0
    return [missing if c is None else float(c) for c in correctness(batch, extraction)]


@needs_verdicts
@param_choices(extraction=EXTRACTIONS, ungradable=UNGRADABLE_COSINE, clip=(True, False))
def cosine(
    batch: RewardBatch,
    *,
    min_value_wrong: float = 0.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    max_len: int = 1000,
    extraction: str = "boxed",
    clip: bool = True,
    ungradable: str = "exclude",
) -> list[float | None]:
    """Cosine-scaled correctness by completion length in characters (open-r1's ``get_cosine_scaled_reward``).

    With ``p = min(len(text) / max_len, 1)`` and ``c = cos(pi * p)`` the value is ``lo + 0.5 * (hi - lo) * (1 + c)``:
    ``hi`` at length 0, ``lo`` at length >= `max_len`, a half-cosine in between. For correct answers
    ``hi = max_value_correct``, ``lo = min_value_correct`` (1.0 -> 0.5: shorter is better). For wrong answers open-r1
    swaps the names: ``hi = min_value_wrong``, ``lo = max_value_wrong``. The defaults are open-r1's and Tina's
    (``min_value_wrong=0.0``, ``max_value_wrong=-0.5``), so a wrong answer scores 0.0 at length 0 down to -0.5 at
    `max_len`: with the defaults, shorter is better for wrong answers too, exactly as Tina ran. Two differences from
    open-r1/Tina, each with the parameter that restores theirs: the progress is clipped at 1 (``clip: false``: the
    cosine swings back up past `max_len`, so a correct answer of 2 x `max_len` characters scores 1.0 again), and an
    ungradable completion gets None (``ungradable: one``: 1.0).

    >>> from types import SimpleNamespace as V
    >>> b = RewardBatch(["", "x" * 10, "", "x" * 10], ["1"] * 4, ["p"] * 4, [1] * 4, 1,
    ...                 [V(correct=True), V(correct=True), V(correct=False), V(correct=False)])
    >>> cosine(b, max_len=10)
    [1.0, 0.5, 0.0, -0.5]
    >>> long = RewardBatch(["x" * 15, "x" * 20, "x" * 20, "y"], ["1"] * 4, ["p"] * 4, [1] * 4, 1,
    ...                    [V(correct=True), V(correct=True), V(correct=False), V(correct=None)])
    >>> cosine(long, max_len=10), cosine(long, max_len=10, clip=False, ungradable="one")
    ([0.5, 0.5, -0.5, None], [0.75, 1.0, 0.0, 1.0])
    """
    if max_len <= 0:
        raise ConfigError(f"cosine: max_len must be positive, got {max_len}")
    out: list[float | None] = []
    for text, correct in zip(batch.completions, correctness(batch, extraction), strict=True):
        if correct is None:
            out.append(None if ungradable == "exclude" else 1.0)
            continue
        progress = len(text) / max_len
        if clip:
            progress = min(progress, 1.0)
        cos = math.cos(math.pi * progress)
        lo, hi = (min_value_correct, max_value_correct) if correct else (max_value_wrong, min_value_wrong)
        out.append(lo + 0.5 * (hi - lo) * (1.0 + cos))
    return out


@needs_verdicts
@param_choices(extraction=EXTRACTIONS, ungradable=UNGRADABLE_LENGTH)
def length(batch: RewardBatch, *, extraction: str = "boxed", ungradable: str = "exclude") -> list[float | None]:
    """Kimi-1.5 group-relative length reward, length in characters (as open-r1/Tina measure it).

    Within each group of `batch.group_size` completions, ``lam = 0.5 - (len - min_len) / (max_len - min_len)``;
    correct -> ``lam`` (shortest +0.5, longest -0.5), wrong -> ``min(0, lam)`` (never rewarded for being short).
    If every completion of the group has the same length, every value is 0.0. Ungradable completions get None but
    their length still counts toward the group's min and max (``ungradable: correct``: scored as correct, as Tina's
    code did). open-r1/Tina take min/max over the reward call's batch, which in Tina's recipes (per-device batch ==
    num_generations) is exactly one group.

    >>> from types import SimpleNamespace as V
    >>> b = RewardBatch(["ab", "abcd", "abcdef", "ab"], ["1"] * 4, ["p"] * 4, [1] * 4, 4,
    ...                 [V(correct=True), V(correct=True), V(correct=True), V(correct=False)])
    >>> length(b)
    [0.5, 0.0, -0.5, 0.0]
    """
    correct = _as_correct(correctness(batch, extraction), ungradable)
    out: list[float | None] = [None] * len(batch)
    for group in batch.group_slices():
        lengths = [len(batch.completions[i]) for i in group]
        lo, hi = min(lengths), max(lengths)
        for i, n in zip(group, lengths, strict=True):
            if correct[i] is None:
                continue
            if hi == lo:
                out[i] = 0.0
                continue
            lam = 0.5 - (n - lo) / (hi - lo)
            out[i] = lam if correct[i] else min(0.0, lam)
    return out


def _as_correct(correct: list[bool | None], ungradable: str) -> list[bool | None]:
    """``ungradable: correct`` (Tina's length rewards): an ungradable completion is scored as a correct one."""
    return [True if c is None and ungradable == "correct" else c for c in correct]


def _lengths(batch: RewardBatch, unit: str) -> list[int]:
    """n_y per completion: generated tokens (EOS included) or, ``unit: chars`` (Tina), characters of the text."""
    return [len(t) for t in batch.completions] if unit == "chars" else list(batch.completion_lengths)


# L1 (Aggarwal & Welleck 2025) appends "Think for N tokens." (L1-Exact) or "Think for maximum N tokens." (L1-Max) to
# the problem (Tina appended "Think for N tokens." to the system prompt, for both). We also accept "at most" / "up to",
# any case, and thousands separators ("1,024").
TARGET_PATTERN = re.compile(
    r"think\s+for\s+(?:maximum\s+|max\s+|at\s+most\s+|up\s+to\s+)?(\d[\d,]*)\s+tokens", re.IGNORECASE
)


def target_tokens(prompt: str) -> int | None:
    """The token budget in an L1 prompt (the last "Think for [maximum] N tokens" in it), or None if there is none.

    >>> target_tokens("Solve x+1=2. Think for maximum 1,024 tokens.")
    1024
    """
    matches = TARGET_PATTERN.findall(prompt)
    return int(matches[-1].replace(",", "")) if matches else None


def _targets(batch: RewardBatch, reward_name: str) -> list[int]:
    targets = []
    for i, prompt in enumerate(batch.prompts):
        target = target_tokens(prompt)
        if target is None:
            tail = prompt[-80:].replace("\n", "\\n")
            raise RewardError(
                f'reward \'{reward_name}\' needs a target length in the prompt ("Think for N tokens." or "Think for '
                f"maximum N tokens.\"), but prompt {i} has none (it ends with '...{tail}'). Use a prompt template "
                "that appends the L1 length instruction, or drop this reward."
            )
        targets.append(target)
    return targets


@needs_verdicts
@param_choices(extraction=EXTRACTIONS, ungradable=UNGRADABLE_LENGTH, unit=UNITS)
def length_l1_exact(
    batch: RewardBatch,
    *,
    alpha: float = 0.0003,
    extraction: str = "boxed",
    unit: str = "tokens",
    ungradable: str = "exclude",
) -> list[float | None]:
    """L1-Exact: ``correct - alpha * |n_gold - n_y|``, n_gold from the prompt, n_y = generated tokens (EOS included).

    ``unit: chars``: n_y is the completion's length in characters (Tina's code), still against a target in tokens.
    ``ungradable: correct``: an ungradable completion scores as correct (Tina); default None.

    >>> from types import SimpleNamespace as V
    >>> b = RewardBatch(["a", "b"], ["1"] * 2, ["Think for 1000 tokens."] * 2, [1500, 900], 1,
    ...                 [V(correct=True), V(correct=False)])
    >>> [round(v, 6) for v in length_l1_exact(b)]
    [0.85, -0.03]
    >>> [round(v, 6) for v in length_l1_exact(b, unit="chars")]  # 1 character each: |1000 - 1| * 0.0003
    [0.7003, -0.2997]
    """
    correct = _as_correct(correctness(batch, extraction), ungradable)
    targets = _targets(batch, "length_l1_exact")
    out: list[float | None] = []
    for c, n_gold, n_y in zip(correct, targets, _lengths(batch, unit), strict=True):
        out.append(None if c is None else float(c) - alpha * abs(n_gold - n_y))
    return out


@needs_verdicts
@param_choices(extraction=EXTRACTIONS, ungradable=UNGRADABLE_LENGTH, unit=UNITS)
def length_l1_max(
    batch: RewardBatch,
    *,
    alpha: float = 0.0003,
    delta: float = 0.5,
    extraction: str = "boxed",
    unit: str = "tokens",
    ungradable: str = "exclude",
) -> list[float | None]:
    """L1-Max: ``correct * clip(alpha * (n_gold - n_y) + delta, 0, 1)``; n_y = generated tokens (EOS included).

    A correct answer exactly at the budget scores `delta`; under budget scores more (up to 1), over budget less (down
    to 0). A wrong answer scores 0. ``unit`` and ``ungradable`` as in `length_l1_exact` ("chars" / "correct": Tina).

    >>> from types import SimpleNamespace as V
    >>> b = RewardBatch(["a", "b"], ["1"] * 2, ["Think for maximum 1000 tokens."] * 2, [500, 3000], 1,
    ...                 [V(correct=True)] * 2)
    >>> [round(v, 6) for v in length_l1_max(b)]
    [0.65, 0.0]
    """
    correct = _as_correct(correctness(batch, extraction), ungradable)
    targets = _targets(batch, "length_l1_max")
    out: list[float | None] = []
    for c, n_gold, n_y in zip(correct, targets, _lengths(batch, unit), strict=True):
        if c is None:
            out.append(None)
            continue
        out.append(float(c) * min(1.0, max(0.0, alpha * (n_gold - n_y) + delta)))
    return out
