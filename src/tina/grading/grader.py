r"""The grader: one function used by both the training reward and the benchmark evaluation.

Project rule: **a reward is never given to an answer that hedges or never finishes.**

Which text counts (`tina.grading.extract`)
-------------------------------------------

Only the *final answer part*: the text after the last ``</think>``. A completion that opened a think block and never
closed it has none -- whether it opened ``<think>`` itself or the prompt did (R1-distill's generation prompt ends
with ``<think>\n``; pass ``prompts`` so the grader knows) -- and neither has a completion that hit the token limit
(``finished=False``). Both get ``Verdict(False, None, "unfinished")``: not correct, and not ungradable either (None
would leave them out of the advantage; they are real failures the policy must learn to avoid). A last ``\boxed{``
that never closes is "unfinished" too. A completion without any think tag is all final answer part.

Extraction modes, both in this one module:

========== ========================================================== ===========================================
mode       what counts                                                used by
========== ========================================================== ===========================================
"boxed"    the last ``\boxed{}``/``\fbox{}`` of the final answer part  the training reward (Tina's reward read only
                                                                      the box): ``accuracy: {extraction: boxed}``,
                                                                      the default of every correctness reward
"lenient"  that box; else the last "answer is ..." / "Answer: ..."    the benchmark grader (`grade_many` default)
           phrase; else the last ``$...$``/``\[...\]`` math span --
           all in the final answer part only
========== ========================================================== ===========================================

Lenient extraction tries the box first, so `restrict` turns a lenient verdict into the boxed one: training grades
once per batch (`tina.rewards.grade_batch`, lenient) and each reward restricts to its own mode.

Hedges (`tina.grading.hedge`) -> ``Verdict(False, <answer>, "hedged")``
-----------------------------------------------------------------------

* an uncertainty word or "?" in the answer or right next to it: ``\boxed{7\text{ (or maybe 8)}}``,
  ``\boxed{7?}``, "the answer is probably $7$";
* several candidates for a single-valued gold: ``7 \text{ or } 8``, ``7, 8``, ``7; 8``, ``7 \pm 1``, ``7 \lor 8``,
  ``\boxed{7} \boxed{8}`` / ``\boxed{7} or \boxed{8}`` (boxes with only punctuation or connectors between them),
  ``\boxed{7} (or 8)``, "$x = 7$ or $x = 8$". Each candidate is graded; the answer is correct only if every one
  is (one value in two forms: ``\boxed{15\frac{39}{40}}, or \boxed{\frac{639}{40}}``), else it is hedged;
* GPQA: several letters for one choice: "C or D", "C/D", "C, D", ``\boxed{C,D}``, "(C) and (D)", "C (or maybe D)".

Not hedges: wrapper text around ONE answer (``\boxed{12 \text{ cm}}``, ``\text{(B)}``), the equation form of one
answer (``x = 3``), fractions (``7/8``), thousands separators (``1,000``, MATH's ``10,\!000``), and lists when the
gold is a list (a set, tuple, interval, several solutions, or has ``\pm``): ``x = 1, 2`` or ``1 \text{ or } 2``
against gold ``1,2``.
"approximately 7" names one value and is not a hedge.

Math pipeline for one completion (`grade_many` does it for a batch with one round trip to the worker):

1. ``finished`` False -> "unfinished"; `find_answer` -> "unfinished" / "no_answer" (``correct=False``).
2. `hedge.plan`: doubt or unsplittable disjunction -> "hedged"; else the candidate(s) to grade.
3. Gold and each candidate are reduced to bare strings (`gold_core`, `pred_core`: box/``$`` removed, prediction cut
   to `MAX_ANSWER_CHARS`).
4. Fast path, in-process: if both are plain numbers (`tina.grading.numeric`), compare them exactly (integer and
   fraction golds) or with relative tolerance 1e-4 (decimal and scientific-notation golds). No sympy. A plain-number
   gold answered with arithmetic on number literals (``\boxed{2 + 3}``, or ``\boxed{x = 2 + 3}``: an equation by its
   last side, for "What is 2 + 3?") gets ``Verdict(False, <answer>, "unevaluated")``: math-verify would simplify it
   and call it correct, which pays a policy for copying the question into the box (a reward hack the SmolLM2 demo
   found; `tina.grading.numeric.is_unevaluated`). ``2 + 3 = 5`` is an answer; powers, roots and symbols still go
   to sympy (``2^{10}``, ``6 + 2\sqrt{3}``).
5. Otherwise the sympy worker (`tina.grading.pool`, math-verify with its SIGALRM timeouts disabled) decides:
   gold that math-verify cannot parse -> ``correct=None, reason="gold_unparseable"`` (never True); else textual
   equality, ``math_verify.verify``, and the numeric tolerance for measured golds. An item that overruns `timeout`
   -> ``reason="timeout"``; an exception inside the grader -> ``reason="grader_error"`` (logged); both have
   ``correct=None`` and should be counted, not scored as wrong.

GPQA: the gold is a letter; `find_choice` on the completion; case-insensitive comparison.

>>> grade(r"... so the answer is \boxed{25}.", "025")
Verdict(correct=True, extracted='25', reason='ok', source='boxed')
>>> grade("I give up.", "7")
Verdict(correct=False, extracted=None, reason='no_answer', source=None)
>>> grade("Answer: (b)", "B", task="gpqa").correct
True

Hedges and unfinished completions, the worked examples of the rule:

>>> grade(r"\boxed{7\text{ (or maybe 8)}}", "7")
Verdict(correct=False, extracted='7\\text{ (or maybe 8)}', reason='hedged', source='boxed')
>>> grade(r"so \boxed{7} or \boxed{8}", "8").reason, grade(r"\boxed{7, 8}", "7").reason
('hedged', 'hedged')
>>> grade("Answer: C or D", "C", task="gpqa").reason
'hedged'
>>> grade(r"<think> ... then $y = 4$. Hmm, wait", "4")
Verdict(correct=False, extracted=None, reason='unfinished', source=None)
>>> grade(r"Let me see: $y = 4$. Hmm, wait", "4", prompt="<｜Assistant｜><think>\n").reason
'unfinished'
>>> grade(r"\boxed{4}", "4", finished=False).reason
'unfinished'
>>> grade(r"2 + 3 is \boxed{2 + 3}", "5")
Verdict(correct=False, extracted='2 + 3', reason='unevaluated', source='boxed')

What must stay correct:

>>> [grade(rf"\boxed{{{a}}}", g).correct for a, g in [(r"12 \text{ cm}", "12"), ("x = 3", "3"), ("1,000", "1000"),
...      (r"\{1,2\}", r"\{2,1\}"), ("x = 1, 2", "1,2"), (r"1 \pm \sqrt{2}", r"1 \pm \sqrt{2}"), ("7/8", r"\frac78"),
...      (r"10,\!000", "10000")]]
[True, True, True, True, True, True, True, True]

Training (boxed) versus evaluation (lenient):

>>> text = "<think>\nthe answer is 5? no...\n</think>\nThe answer is $4$."
>>> grade(text, "4").correct, grade(text, "4", extraction="boxed").reason
(True, 'no_answer')
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
from tina.grading.extract import EXTRACTIONS, find_answer, find_choice, opens_think
from tina.grading.hedge import plan
from tina.grading.normalize import gold_core
from tina.grading.numeric import NumberLit, is_unevaluated, numbers_match, parse_number

__all__ = [
    "EXTRACTIONS",
    "REASONS",
    "TASKS",
    "Verdict",
    "gold_is_parseable",
    "grade",
    "grade_many",
    "restrict",
    "shutdown",
]

log = logging.getLogger(__name__)

REASONS = ("ok", "no_answer", "unfinished", "hedged", "unevaluated", "gold_unparseable", "timeout", "grader_error")
TASKS = ("math", "gpqa")
_RESULT_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class Verdict:
    """The outcome of grading one completion.

    correct: True/False, or None when the item is ungradable (gold unparseable, timeout, grader failure).
    extracted: the answer taken from the completion (normalised, at most `MAX_ANSWER_CHARS`; candidates joined by
        "; " when several were written next to each other), or None.
    reason: one of `REASONS`.
    source: where the answer was found (`tina.grading.extract.SOURCES`: "boxed", "phrase", "span", ...), or None
        when there is none. `restrict` uses it to turn a lenient verdict into a boxed-only one.
    """

    correct: bool | None
    extracted: str | None
    reason: str
    source: str | None = None


_UNFINISHED = Verdict(False, None, "unfinished")
_NO_ANSWER = Verdict(False, None, "no_answer")


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


def _fast(spec: GoldSpec, pred: str) -> tuple[bool, str] | None:
    """Fast path, in-process, for a plain-number gold: the verdict for a plain-number prediction, or
    ``(False, "unevaluated")`` for arithmetic on literals (``2 + 3``); None when sympy is needed."""
    if spec[0] != "num":
        return None
    pred_number = parse_number(pred)
    if pred_number is None:
        return (False, "unevaluated") if is_unevaluated(pred) else None
    return numbers_match(NumberLit(Fraction(spec[1], spec[2]), exact=spec[3]), pred_number.value), "ok"


def _combine(results: list[tuple[bool | None, str]], display: str, source: str | None) -> Verdict:
    """One verdict from the verdicts of an answer's candidates: correct only when every candidate is."""
    if len(results) == 1:
        return Verdict(results[0][0], display, results[0][1], source)
    if any(correct is False for correct, _ in results):
        return Verdict(False, display, "hedged", source)
    if all(correct is True for correct, _ in results):
        return Verdict(True, display, "ok", source)
    return Verdict(None, display, next(reason for correct, reason in results if correct is None), source)


def _math_verdicts(
    completions: Sequence[str],
    golds: Sequence[str],
    timeout: float,
    finished: Sequence[bool] | None,
    think_open: Sequence[bool],
    extraction: str,
) -> list[Verdict]:
    verdicts: list[Verdict | None] = [None] * len(completions)
    pending: dict[int, tuple[list, str, str | None]] = {}  # i -> (per-candidate result or request, display, source)
    requests: list[tuple[str, tuple]] = []
    for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
        if finished is not None and not finished[i]:
            verdicts[i] = _UNFINISHED
            continue
        found = find_answer(completion, think_open=think_open[i], extraction=extraction)
        if found.status != "ok":
            verdicts[i] = Verdict(False, None, found.status)
            continue
        todo = plan(found, gold)
        if todo.hedged:
            verdicts[i] = Verdict(False, todo.display, "hedged", found.source)
            continue
        if not todo.preds:
            verdicts[i] = _NO_ANSWER
            continue
        spec = _gold_spec(gold)
        items: list = []
        for pred in todo.preds:
            fast = _fast(spec, pred)
            if fast is None:
                request = ("grade", (spec, pred))
                requests.append(request)
                items.append(request)
            else:
                items.append(fast)
        pending[i] = (items, todo.display, found.source)
    answers = _run_cached(requests, timeout) if requests else {}
    for i, (items, display, source) in pending.items():
        results = []
        for item in items:
            if item[0] != "grade":
                results.append(item)
                continue
            status, payload = answers[item]
            if status == "ok":
                results.append(tuple(payload))
            else:
                results.append((None, "timeout" if status == "timeout" else "grader_error"))
        verdicts[i] = _combine(results, display, source)
    return verdicts  # type: ignore[return-value]


def _gpqa_verdict(completion: str, gold: str, finished: bool, think_open: bool, extraction: str) -> Verdict:
    """GPQA: gold is a letter ("C", "c", "(C)"); the completion's choice among A-D is compared case-insensitively."""
    if not finished:
        return _UNFINISHED
    found = find_choice(completion, think_open=think_open, extraction=extraction)
    if found.status in ("unfinished", "hedged"):
        return Verdict(False, found.answer, found.status, found.source)
    gold_letter = gold.strip().strip("()[]. ").upper()
    if len(gold_letter) != 1 or not gold_letter.isalpha():
        return Verdict(None, found.answer, "gold_unparseable", found.source)
    if found.answer is None:
        return _NO_ANSWER
    return Verdict(found.answer == gold_letter, found.answer, "ok", found.source)


def restrict(verdict: Verdict, extraction: str) -> Verdict:
    r"""The verdict `grade_many` gives with `extraction`, from the one it gives with ``extraction="lenient"``.

    Lenient extraction tries the box first, so its answer came from a box exactly when a boxed-only extraction finds
    one; any other source means "no boxed answer". The training rewards grade once (leniently, in `grade_batch`)
    and call this to score with their own `extraction`.

    >>> restrict(grade("The answer is 7.", "7"), "boxed")
    Verdict(correct=False, extracted=None, reason='no_answer', source=None)
    >>> restrict(grade(r"\boxed{7}", "7"), "boxed").correct
    True
    """
    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown extraction {extraction!r}; expected one of {EXTRACTIONS}")
    if extraction == "lenient" or getattr(verdict, "source", None) in (None, "boxed"):
        return verdict
    return _NO_ANSWER


def _flags(name: str, values: Sequence[bool] | None, n: int) -> list[bool] | None:
    if values is None:
        return None
    flags = [bool(v) for v in values]
    if len(flags) != n:
        raise ValueError(f"{n} completions but {len(flags)} {name}")
    return flags


def grade_many(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    task: str = "math",
    timeout: float = 5.0,
    finished: Sequence[bool] | None = None,
    extraction: str = "lenient",
    prompts: Sequence[str] | None = None,
) -> list[Verdict]:
    r"""Grade completions against golds (same length), one worker round trip for the whole batch.

    `timeout` is per item that needs sympy (see `tina.grading.pool` for the batch policy); fast-path items are
    graded in-process and never time out. Identical (gold, answer) pairs are graded once.

    `finished`: per completion, False when it hit the token limit without an end-of-sequence token (the rollout's
    ``~truncated``) -> ``Verdict(False, None, "unfinished")``. None: all finished.
    `extraction`: "lenient" (benchmarks; the default) or "boxed" (the training reward); see the module docstring.
    `prompts`: the rendered prompts; only used to know whether a prompt ends inside an open ``<think>`` block
    (R1-distill's generation prompt), in which case the completion must close it (`tina.grading.extract.opens_think`).

    >>> [v.correct for v in grade_many([r"\boxed{27}", r"\boxed{26}", "no idea"], ["27.0", "27.0", "27.0"])]
    [True, False, False]
    >>> [v.reason for v in grade_many([r"\boxed{4}", "so $y = 4$. Hmm, wait"], ["4", "4"], finished=[True, False])]
    ['ok', 'unfinished']
    """
    n = len(completions)
    if n != len(golds):
        raise ValueError(f"{n} completions but {len(golds)} golds")
    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown extraction {extraction!r}; expected one of {EXTRACTIONS}")
    done = _flags("finished flags", finished, n)
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"{n} completions but {len(prompts)} prompts")
    think_open = [False] * n if prompts is None else [opens_think(p) for p in prompts]
    if task == "math":
        return _math_verdicts(completions, golds, timeout, done, think_open, extraction)
    if task == "gpqa":
        return [
            _gpqa_verdict(c, g, True if done is None else done[i], think_open[i], extraction)
            for i, (c, g) in enumerate(zip(completions, golds, strict=True))
        ]
    raise ValueError(f"unknown grading task {task!r}; expected one of {TASKS}")


def grade(
    completion: str,
    gold: str,
    *,
    task: str = "math",
    timeout: float = 5.0,
    finished: bool = True,
    extraction: str = "lenient",
    prompt: str | None = None,
) -> Verdict:
    r"""Grade one completion; see `grade_many`.

    >>> grade(r"$\boxed{\frac12}$", "0.5")
    Verdict(correct=True, extracted='\\frac12', reason='ok', source='boxed')
    """
    return grade_many(
        [completion],
        [gold],
        task=task,
        timeout=timeout,
        finished=[finished],
        extraction=extraction,
        prompts=None if prompt is None else [prompt],
    )[0]


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
