"""Run rewards safely and combine them: validated values, errors that name the reward and the sample, weighted sum."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tina.errors import ConfigError, RewardError, TinaError
from tina.rewards.batch import RewardBatch
from tina.rewards.registry import RewardFn, check_params, get_reward


@dataclass
class RewardSpec:
    """One reward of a recipe: its name (or ``"package.module:function"``), weight and keyword parameters."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _describe(error: BaseException, limit: int = 200) -> str:
    message = str(error)
    return f"{type(error).__name__}: {message if len(message) <= limit else message[:limit] + '...'}"


def _locate_failure(
    name: str, fn: RewardFn, batch: RewardBatch, params: Mapping[str, Any], error: Exception
) -> RewardError:
    """Re-run the reward one completion at a time to find the one it fails on; build the error to raise.

    Only runs after the reward already raised on the whole batch, so a working reward is never called twice.
    """
    for i in range(len(batch)):
        try:
            fn(batch.select([i]), **params)
        except Exception as e:  # diagnostic re-run only: the caller raises what we return
            return RewardError(
                f"reward '{name}' raised on sample {i} (completion {_excerpt(batch.completions[i])}): {_describe(e)}"
            )
    return RewardError(
        f"reward '{name}' raised on the batch of {len(batch)} completions (but on no single one alone): "
        f"{_describe(error)}"
    )


def _validate(name: str, batch: RewardBatch, values: Any) -> list[float | None]:
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__") or not hasattr(values, "__iter__"):
        raise RewardError(
            f"reward '{name}' returned a {type(values).__name__}; it must return a list with one value per completion"
        )
    values = list(values)
    if len(values) != len(batch):
        raise RewardError(f"reward '{name}' returned {len(values)} values for {len(batch)} completions")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise RewardError(
                f"reward '{name}' returned {v!r} ({type(v).__name__}) for sample {i} "
                f"(completion {_excerpt(batch.completions[i])}); expected a float or None"
            )
        v = float(v)
        if not math.isfinite(v):
            raise RewardError(
                f"reward '{name}' returned {v} for sample {i} (completion {_excerpt(batch.completions[i])})"
            )
        out.append(v)
    return out


def run_reward(name: str, batch: RewardBatch, params: Mapping[str, Any] | None = None) -> list[float | None]:
    """Compute one reward over the batch: one float (or None) per completion, checked.

    Raises ConfigError for an unknown reward or parameter, RewardError if the reward raises (naming the sample it
    fails on) or returns the wrong number of values or a non-number. A reward that needs correctness on an ungraded
    batch is a bug in the caller (ValueError).
    """
    params = dict(params or {})
    fn = get_reward(name)
    check_params(name, params)
    if getattr(fn, "needs_verdicts", False) and batch.verdicts is None:
        raise ValueError(f"reward '{name}' needs correctness: call tina.rewards.grade_batch(batch) before scoring")
    try:
        values = fn(batch, **params)
    except TinaError:
        raise  # already a user-facing message (bad parameter value, missing L1 target, ...)
    except Exception as e:
        raise _locate_failure(name, fn, batch, params, e) from e
    return _validate(name, batch, values)


def score(batch: RewardBatch, specs: Sequence[RewardSpec]) -> tuple[list[float | None], dict[str, list[float | None]]]:
    """Weighted sum of the rewards per completion, plus each reward's raw values by name.

    A completion for which any component is None (ungradable: gold unparseable or grader timeout) gets a total of
    None; the caller leaves it out of the advantage and counts it.

    >>> b = RewardBatch(["x\\n</think>\\n1", "no tag"], ["1"] * 2, ["p"] * 2, [3, 2], 1)
    >>> score(b, [RewardSpec("format", 2.0), RewardSpec("tag_count", 1.0)])
    ([2.5, 0.0], {'format': [1.0, 0.0], 'tag_count': [0.5, 0.0]})
    """
    if not specs:
        raise ConfigError("no rewards configured: give at least one reward")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"reward '{spec.name}' is listed twice; list each reward once")
        seen.add(spec.name)
        if isinstance(spec.weight, bool) or not isinstance(spec.weight, numbers.Real) or not math.isfinite(spec.weight):
            raise ConfigError(f"reward '{spec.name}': weight must be a finite number, got {spec.weight!r}")
        get_reward(spec.name)
        check_params(spec.name, spec.params)  # fail on any recipe mistake before computing anything

    components = {spec.name: run_reward(spec.name, batch, spec.params) for spec in specs}
    totals: list[float | None] = []
    for i in range(len(batch)):
        values = [components[spec.name][i] for spec in specs]
        if any(v is None for v in values):
            totals.append(None)
        else:
            totals.append(sum(float(spec.weight) * v for spec, v in zip(specs, values, strict=True)))  # type: ignore[operator]
    return totals, components
