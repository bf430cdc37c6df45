"""Reading an original recipe's values: numbers, flags and lists as TRL's parser took them, each a one-line error
naming the key when it is not one."""

from __future__ import annotations

from typing import Any

from tina.errors import ConfigError


def as_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        return float(value)  # YAML 1.1 reads "1e-06" as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None


def as_int(key: str, value: Any) -> int:
    number = as_float(key, value)
    if not number.is_integer():
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return int(number)


def as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def as_list(key: str, value: Any) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    return value


def copy_present(raw: dict, dst: dict, convert, keys: dict[str, str]) -> None:
    """``dst[ours] = convert(theirs, raw[theirs])`` for each ``theirs: ours`` present (not None) in ``raw``."""
    for theirs, ours in keys.items():
        if raw.get(theirs) is not None:
            dst[ours] = convert(theirs, raw[theirs])


def system_prompt_key(text: str) -> str:
    from tina.prompts import SYSTEM_PROMPTS

    for name, prompt in SYSTEM_PROMPTS.items():
        if text.strip() == prompt.strip():
            return name
    return text
