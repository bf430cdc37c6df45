"""Reading a dataset's fields: a column value -> text (answers, boxed solutions, verification info, reward-model
fields, OpenR1's answers), and L1's length targets (a prompt's "Think for N tokens." suffix, or targets drawn for
every row).  Each reader returns "" when the value holds no usable text.  :mod:`tina.data.schemas` maps datasets
onto these readers."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from tina.data.example import Example
from tina.errors import ConfigError, did_you_mean

# ----------------------------------------------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` (or `\fbox{...}`) in `text`, braces matched; None if there is none.

    >>> last_boxed(r"so $x = \boxed{\frac{1}{2}}$ and \boxed{3}")
    '3'
    >>> last_boxed(r"\boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> last_boxed(r"\boxed 7.") is None, last_boxed("none") is None
    (False, True)
    """
    if not isinstance(text, str):
        return None
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
        return None  # unbalanced braces
    # "\boxed 7" form: the answer runs to the next "$" or whitespace.
    m = re.match(r"[^\s$]+", text[i:])
    return m.group(0).rstrip(".") if m else None


def scalar_text(value: Any) -> str:
    """A scalar answer as text: strings stripped, numbers as their text (27.0 -> '27.0'), None -> ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        for key in ("value", "answer", "ground_truth"):
            if key in value:
                return scalar_text(value[key])
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value).strip()


def read_answer(value: Any) -> tuple[str, list[str]]:
    """A generic answer column -> (answer, alternatives).  A list gives its first non-empty element."""
    if isinstance(value, (list, tuple)):
        texts = [t for t in (scalar_text(v) for v in value) if t]
        return (texts[0], texts) if texts else ("", [])
    return scalar_text(value), []


def read_boxed(value: Any) -> tuple[str, list[str]]:
    """A worked-solution column -> the content of its last \\boxed{}."""
    boxed = last_boxed(value) if isinstance(value, str) else None
    return (boxed.strip() if boxed else ""), []


def read_verification_info(value: Any) -> tuple[str, list[str]]:
    """II-Thought's `verification_info` (JSON string or dict) -> the answer.

    >>> read_verification_info('{"answer": {"value": "12"}, "type": "math_verifiable"}')
    ('12', [])
    >>> read_verification_info({"answer": 3})
    ('3', [])
    >>> read_verification_info('{"test_cases": []}')
    ('', [])
    """
    info = value
    if isinstance(value, str):
        try:
            info = json.loads(value)
        except json.JSONDecodeError:
            return "", []
    if not isinstance(info, dict):
        return read_answer(info)
    for key in ("answer", "ground_truth", "expected_answer"):
        if key in info:
            inner = info[key]
            if isinstance(inner, dict) and "value" in inner:
                inner = inner["value"]
            return read_answer(inner)
    return "", []


def read_reward_model(value: Any) -> tuple[str, list[str]]:
    """verl's `reward_model` struct -> its ground_truth."""
    if isinstance(value, dict):
        return read_answer(value.get("ground_truth"))
    return read_answer(value)


NO_ANSWER = {"proof", "notfound", "not found"}


def read_openr1_answer(value: Any) -> tuple[str, list[str]]:
    """OpenR1-Math's `answer`, where proof problems say 'proof' and a few rows 'notfound': those count as empty."""
    text, alts = read_answer(value)
    return ("", []) if text.lower() in NO_ANSWER else (text, alts)


def read_text(value: Any) -> str:
    """A problem column -> text.  A chat-message list gives its last user message (or last message)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:
        return read_text(value["content"])
    if isinstance(value, (list, tuple)):
        if not value:
            return ""
        if all(isinstance(m, dict) for m in value):
            users = [m for m in value if m.get("role") == "user"]
            return read_text((users or list(value))[-1].get("content"))
        if len(value) == 1:
            return read_text(value[0])
    return str(value)


# ----------------------------------------------------------------------------------------------------------------------
# L1 target-length suffix
# ----------------------------------------------------------------------------------------------------------------------

_L1_SUFFIX = re.compile(r"\s*Think for (maximum )?(\d+) tokens\.?\s*$")


def split_l1_suffix(text: str) -> tuple[str, dict]:
    """Strip a trailing L1 'Think for [maximum] N tokens.' sentence; return (text, meta).

    >>> split_l1_suffix("Find x. Think for 512 tokens.")
    ('Find x.', {'l1_target': 512, 'l1_mode': 'exact'})
    >>> split_l1_suffix("Find x. Think for maximum 90 tokens.")
    ('Find x.', {'l1_target': 90, 'l1_mode': 'max'})
    >>> split_l1_suffix("Find x.")
    ('Find x.', {})
    """
    m = _L1_SUFFIX.search(text)
    if not m:
        return text, {}
    return text[: m.start()], {"l1_target": int(m.group(2)), "l1_mode": "max" if m.group(1) else "exact"}


def l1_post(row: dict, problem: str) -> tuple[str, dict]:
    problem, meta = split_l1_suffix(problem)
    rm = row.get("reward_model")
    if not meta and isinstance(rm, dict) and isinstance(rm.get("num_tokens"), int) and rm["num_tokens"] not in (-1, 0):
        n = rm["num_tokens"]
        meta = {"l1_target": abs(n), "l1_mode": "max" if n < 0 else "exact"}
    for key in ("l1_target", "target_length", "num_tokens"):
        if not meta and isinstance(row.get(key), int) and row[key] > 0:
            meta = {"l1_target": row[key], "l1_mode": str(row.get("l1_mode") or "exact")}
    return problem, meta


def with_l1_targets(
    examples: Iterable[Example], *, mode: str = "exact", low: int = 100, high: int = 4000, seed: int = 0
) -> list[Example]:
    """Give every example without an L1 target one drawn uniformly from [low, high] (as L1 and Tina did).

    Deterministic for a given seed and order.  Examples that already carry `meta["l1_target"]` keep it.

    >>> [e.meta["l1_target"] for e in with_l1_targets([Example("p", "1", "0")], low=5, high=5)]
    [5]
    """
    from tina.prompts import L1_MODES  # "exact", "max", and "tina" (Tina's sentence in the system prompt)

    if mode not in L1_MODES:
        raise ConfigError(f"unknown L1 mode '{mode}'{did_you_mean(mode, L1_MODES)}; use one of: {', '.join(L1_MODES)}")
    if not (0 < low <= high):
        raise ConfigError(f"L1 target range must satisfy 0 < low <= high; got low={low}, high={high}")
    rng = random.Random(seed)
    out = []
    for ex in examples:
        if "l1_target" in ex.meta:
            out.append(ex)
        else:
            out.append(replace(ex, meta={**ex.meta, "l1_target": rng.randint(low, high), "l1_mode": mode}))
    return out
