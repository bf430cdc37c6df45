"""Reward registry: built-in rewards by name, custom rewards by import path ``"package.module:function"``.

A reward is any callable ``fn(batch: RewardBatch, **params) -> list[float | None]`` returning one value per
completion (None = not applicable / ungradable). Its parameters are keyword arguments with defaults; the recipe may
override them, and `check_params` rejects names the function does not take.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from tina.errors import ConfigError, did_you_mean
from tina.rewards import graded, text

RewardFn = Callable[..., list[float | None]]

REWARDS: dict[str, RewardFn] = {
    "accuracy": graded.accuracy,
    "format": text.format_reward,
    "boxed_number": text.boxed_number,
    "overlong": text.overlong,
    "tag_count": text.tag_count,
    "reasoning_steps": text.reasoning_steps,
    "cosine": graded.cosine,
    "repetition_penalty": text.repetition_penalty,
    "length": graded.length,
    "length_l1_exact": graded.length_l1_exact,
    "length_l1_max": graded.length_l1_max,
}


def get_reward(name: str) -> RewardFn:
    """The reward function for a built-in name or a ``"package.module:function"`` import path.

    >>> get_reward("format").__name__
    'format_reward'
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"reward name must be a non-empty string, got {name!r}")
    if ":" in name:
        return _import_reward(name)
    try:
        return REWARDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown reward '{name}'{did_you_mean(name, REWARDS)}. Built-in rewards: {', '.join(sorted(REWARDS))}; "
            "or give a custom one as 'package.module:function'."
        ) from None


def _import_reward(path: str) -> RewardFn:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ConfigError(f"custom reward '{path}' must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"custom reward '{path}': cannot import module '{module_name}' ({e})") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(module) if not n.startswith("_")]
            raise ConfigError(
                f"custom reward '{path}': module '{module_name}' has no '{attr}'{did_you_mean(attr, public)}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"custom reward '{path}' is a {type(obj).__name__}, not a function")
    return obj


def _signature(fn: RewardFn, name: str) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError) as e:  # builtins without a signature
        raise ConfigError(f"reward '{name}': cannot read its signature ({e})") from e


def reward_params(name: str) -> dict[str, Any]:
    """The keyword parameters of a reward and their defaults (everything after the batch argument).

    A parameter with no default maps to `inspect.Parameter.empty` (the recipe must then give it).

    >>> reward_params("repetition_penalty")
    {'ngram_size': 3, 'max_penalty': -1.0}
    """
    fn = get_reward(name)
    params = list(_signature(fn, name).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise ConfigError(f"reward '{name}' must take the batch as its first positional argument: fn(batch, **params)")
    return {p.name: p.default for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_params(name: str, params: Mapping[str, Any]) -> None:
    """Raise ConfigError if `params` has a key the reward does not take, lacks one it requires, or gives a value
    outside the choices the reward declares (``fn.param_choices``, e.g. accuracy's ``extraction``: boxed | lenient).

    A reward that takes ``**kwargs`` accepts any key.

    >>> check_params("accuracy", {"extraction": "boxd"})
    Traceback (most recent call last):
    ...
    tina.errors.ConfigError: reward 'accuracy': extraction must be one of boxed, lenient, got 'boxd' (did you mean...
    """
    fn = get_reward(name)
    known = reward_params(name)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in _signature(fn, name).parameters.values())
    if not takes_any:
        for key in params:
            if key not in known:
                accepted = ", ".join(known) if known else "none"
                raise ConfigError(
                    f"reward '{name}' has no parameter '{key}'{did_you_mean(key, known)}; it accepts: {accepted}"
                )
    missing = [k for k, default in known.items() if default is inspect.Parameter.empty and k not in params]
    if missing:
        raise ConfigError(f"reward '{name}' needs parameter(s) {', '.join(missing)} in the recipe")
    for key, allowed in getattr(fn, "param_choices", {}).items():
        if key in params and (error := graded.choice_error(name, key, params[key], allowed)):
            raise ConfigError(error)
