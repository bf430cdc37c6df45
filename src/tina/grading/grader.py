r"""The grader: one function used by both the training reward and the benchmark evaluation.

Math pipeline for one completion (`grade_many` does it for a batch with one round trip to the worker):

1. ``extract_answer(completion)`` -- no answer -> ``Verdict(False, None, "no_answer")``.
2. Gold and prediction are reduced to bare strings (`gold_core`, `pred_core`: box/``$`` removed, prediction cut to
   `MAX_ANSWER_CHARS`).
3. Fast path, in-process: if both are plain numbers (`tina.grading.numeric`), compare them exactly (integer and
   fraction golds) or with relative tolerance 1e-4 (decimal and scientific-notation golds). No sympy.
4. Otherwise the sympy worker (`tina.grading.pool`, math-verify with its SIGALRM timeouts disabled) decides:
   gold that math-verify cannot parse -> ``correct=None, reason="gold_unparseable"`` (never True); else textual
   equality, ``math_verify.verify``, and the numeric tolerance for measured golds. An item that overruns `timeout`
   -> ``reason="timeout"``; an exception inside the grader -> ``reason="grader_error"`` (logged); both have
   ``correct=None`` and should be counted, not scored as wrong.

GPQA: the gold is a letter; ``extract_choice`` on the completion; case-insensitive comparison.

>>> grade(r"... so the answer is \boxed{25}.", "025")
Verdict(correct=True, extracted='25', reason='ok')
>>> grade("I give up.", "7")
Verdict(correct=False, extracted=None, reason='no_answer')
>>> grade("Answer: (b)", "B", task="gpqa").correct
True
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from tina.grading import pool
from tina.grading.extract import extract_answer, extract_choice
from tina.grading.normalize import gold_core, pred_core
from tina.grading.numeric import NumberLit, numbers_match, parse_number

__all__ = ["REASONS", "TASKS", "Verdict", "gold_is_parseable", "grade", "grade_many", "shutdown"]

log = logging.getLogger(__name__)

REASONS = ("ok", "no_answer", "gold_unparseable", "timeout", "grader_error")
TASKS = ("math", "gpqa")
_RESULT_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class Verdict:
    """The outcome of grading one completion.

    correct: True/False, or None when the item is ungradable (gold unparseable, timeout, grader failure).
    extracted: the answer taken from the completion (normalised, at most `MAX_ANSWER_CHARS`), or None.
    reason: one of `REASONS`.
    """

    correct: bool | None
    extracted: str | None
    reason: str


GoldSpec = tuple


@lru_cache(maxsize=65_536)
def _gold_spec(gold: str) -> GoldSpec:
    r"""``("num", p, q, exact)`` for a plain-number gold, else ``("latex", core)``.

    >>> _gold_spec("$\\frac{1}{2}$")
    ('num', 1, 2, True)
    """
    core = gold_core(gold)
    number = parse_number(core)
    if number is not None:
        return ("num", number.value.numerator, number.value.denominator, number.exact)
    return ("latex", core)


class _ResultCache:
    """Thread-safe LRU of worker answers keyed by (op, args); timeouts and errors are never cached."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


_results = _ResultCache(_RESULT_CACHE_SIZE)


def _run_cached(requests: Sequence[tuple[str, tuple]], timeout: float) -> dict[tuple[str, tuple], tuple[str, object]]:
    """Answer unique ``(op, args)`` requests from the cache or, in one batch, from the worker."""
    answers = {}
    todo = []
    for request in dict.fromkeys(requests):
        cached = _results.get(request)
        if cached is not None:
            answers[request] = ("ok", cached)
        else:
            todo.append(request)
    if todo:
        fresh = pool.run_batch([(request, request[0], request[1]) for request in todo], timeout)
        for request, (status, payload) in fresh.items():
            if status == "ok":
                _results.put(request, payload)
            elif status == "error":
                log.warning("grader error on %r: %s", request, payload)
            answers[request] = (status, payload)
    return answers


def _math_verdicts(completions: Sequence[str], golds: Sequence[str], timeout: float) -> list[Verdict]:
    verdicts: list[Verdict | None] = [None] * len(completions)
    slow: dict[int, tuple[str, tuple]] = {}
    for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
        extracted = extract_answer(completion)
        pred = pred_core(extracted) if extracted is not None else ""
        if not pred:
            verdicts[i] = Verdict(False, None, "no_answer")
            continue
        spec = _gold_spec(gold)
        if spec[0] == "num":
            pred_number = parse_number(pred)
            if pred_number is not None:  # fast path: two plain numbers, no sympy
                gold_number = NumberLit(Fraction(spec[1], spec[2]), exact=spec[3])
                verdicts[i] = Verdict(numbers_match(gold_number, pred_number.value), pred, "ok")
                continue
        slow[i] = ("grade", (spec, pred))
    if slow:
        answers = _run_cached(list(slow.values()), timeout)
        for i, request in slow.items():
            status, payload = answers[request]
            pred = request[1][1]
            if status == "ok":
                correct, reason = payload
                verdicts[i] = Verdict(correct, pred, reason)
            elif status == "timeout":
                verdicts[i] = Verdict(None, pred, "timeout")
            else:
                verdicts[i] = Verdict(None, pred, "grader_error")
    return verdicts  # type: ignore[return-value]


def _gpqa_verdict(completion: str, gold: str) -> Verdict:
    """GPQA: gold is a letter ("C", "c", "(C)"); the completion's choice among A-D is compared case-insensitively."""
    gold_letter = gold.strip().strip("()[]. ").upper()
    choice = extract_choice(completion)
    if len(gold_letter) != 1 or not gold_letter.isalpha():
        return Verdict(None, choice, "gold_unparseable")
    if choice is None:
        return Verdict(False, None, "no_answer")
    return Verdict(choice == gold_letter, choice, "ok")


def grade_many(
    completions: Sequence[str], golds: Sequence[str], *, task: str = "math", timeout: float = 5.0
) -> list[Verdict]:
    r"""Grade completions against golds (same length), one worker round trip for the whole batch.

    `timeout` is per item that needs sympy (see `tina.grading.pool` for the batch policy); fast-path items are
    graded in-process and never time out. Identical (gold, answer) pairs are graded once.

    >>> [v.correct for v in grade_many([r"\boxed{27}", r"\boxed{26}", "no idea"], ["27.0", "27.0", "27.0"])]
    [True, False, False]
    """
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
    if task == "math":
        return _math_verdicts(completions, golds, timeout)
    if task == "gpqa":
        return [_gpqa_verdict(c, g) for c, g in zip(completions, golds, strict=True)]
    raise ValueError(f"unknown grading task {task!r}; expected one of {TASKS}")


def grade(completion: str, gold: str, *, task: str = "math", timeout: float = 5.0) -> Verdict:
    r"""Grade one completion; see `grade_many`.

    >>> grade(r"$\boxed{\frac12}$", "0.5")
    Verdict(correct=True, extracted='\\frac12', reason='ok')
    """
    return grade_many([completion], [gold], task=task, timeout=timeout)[0]


def gold_is_parseable(gold: str, timeout: float = 5.0) -> bool:
    r"""Whether `gold` can be graded at all (a plain number, or math-verify parses it). False on timeout.

    Use it to audit a dataset before training: rows with an unparseable gold can only ever get ``correct=None``.

    >>> gold_is_parseable("025"), gold_is_parseable("E_{1},E_{2}")
    (True, False)
    """
    spec = _gold_spec(gold)
    if spec[0] == "num":
        return True
    if not spec[1]:
        return False
    request = ("gold", (spec,))
    status, payload = _run_cached([request], timeout)[request]
    if status == "error":
        raise RuntimeError(f"grader error while parsing gold {gold!r}: {payload}")
    return status == "ok" and bool(payload)


def shutdown() -> None:
    """Stop the grader worker process of this process, if any (also done automatically at exit)."""
    pool.shutdown()
