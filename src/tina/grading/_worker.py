r"""The sympy side of the grader, run in a separate process: ``python -m tina.grading._worker PARENT_PID``.

The parent (`tina.grading.pool`) sends ``("batch", [(key, op, args), ...])`` frames on stdin; the worker answers
one ``(key, "ok", result)`` or ``(key, "error", message)`` frame per item on its protocol pipe, in order, as soon
as each item is done, so the parent can time items out one by one and kill the process mid-item.

math-verify's own SIGALRM timeouts are disabled (``parsing_timeout=None``, ``timeout_seconds=None``): the parent
enforces the timeout by killing this process. The worker exits when stdin closes or the parent process dies.

The comparison itself lives in `check` and `gold_objects`, which are importable (and tested) in-process:

>>> check(("latex", r"\frac{1}{2}"), "0.5")
(True, 'ok')
>>> check(("latex", r"E_{1},E_{2}"), "E_{1},E_{2}")  # latex2sympy reads E as Euler's number
(None, 'gold_unparseable')
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from functools import lru_cache

import sympy
from math_verify import LatexExtractionConfig, parse, verify

from tina.grading._protocol import read_frame, write_frame
from tina.grading.normalize import math_input, text_key
from tina.grading.numeric import REL_TOL

# Latex extraction only: adding ExprExtractionConfig makes math-verify pick fragments out of unparseable gold
# (e.g. "2" out of "\hbar \omega(v+1 / 2)-...").
_LATEX_ONLY = (LatexExtractionConfig(),)
_REL_TOL = float(REL_TOL)

# A gold spec is ("num", numerator, denominator, exact) for plain numbers (see tina.grading.numeric) or
# ("latex", core_string) for everything else.
GoldSpec = tuple


def _parse(core: str) -> tuple:
    """math-verify parse of a core answer; only sympy objects are kept (no string fallbacks)."""
    parsed = parse(
        math_input(core),
        extraction_config=_LATEX_ONLY,
        fallback_mode="no_fallback",
        parsing_timeout=None,
    )
    return tuple(x for x in parsed if not isinstance(x, str))


@lru_cache(maxsize=16_384)
def gold_objects(spec: GoldSpec) -> tuple:
    r"""Parsed gold: sympy objects, or () when math-verify cannot parse it.

    >>> gold_objects(("num", 3, 4, True))
    (3/4,)
    """
    if spec[0] == "num":
        return (sympy.Rational(spec[1], spec[2]),)
    return _parse(spec[1])


@lru_cache(maxsize=65_536)
def pred_objects(core: str) -> tuple:
    """Parsed prediction: sympy objects, or () when it does not parse."""
    return _parse(core)


def _within_tolerance(gold: sympy.Basic, preds: tuple) -> bool:
    """Relative-tolerance check for measured golds (Minerva's 4.5e33), mirroring `numbers_match`."""
    g = float(gold)
    if not math.isfinite(g) or g == 0.0:
        return False
    for p in preds:
        if isinstance(p, sympy.Expr) and p.is_number and p.is_real:
            value = float(p)
            if math.isfinite(value) and abs(value - g) <= _REL_TOL * abs(g):
                return True
    return False


def check(spec: GoldSpec, pred: str) -> tuple[bool | None, str]:
    """Grade one prediction core against a gold spec: ``(correct, reason)``.

    Gold unparseable -> ``(None, "gold_unparseable")`` whatever the prediction; otherwise textual equality of
    `text_key`, then ``math_verify.verify``, then (for measured numeric golds) the relative tolerance.
    """
    gold = gold_objects(spec)
    if not gold:
        return None, "gold_unparseable"
    if spec[0] == "latex" and text_key(spec[1]) == text_key(pred) and text_key(pred):
        return True, "ok"
    preds = pred_objects(pred)
    if not preds:
        return False, "ok"
    if verify(list(gold), list(preds), timeout_seconds=None, raise_on_error=True):
        return True, "ok"
    if spec[0] == "num" and not spec[3]:
        return _within_tolerance(gold[0], preds), "ok"
    return False, "ok"


def gold_parseable(spec: GoldSpec) -> bool:
    """True when the gold parses to at least one sympy object."""
    return bool(gold_objects(spec))


OPS = {"grade": check, "gold": gold_parseable}


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent dies (stdin EOF is not enough while an item is being computed)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _warm_up() -> None:
    """Pay antlr/sympy lazy initialisation before announcing readiness, so it never counts against an item."""
    check(("latex", r"\frac{1}{2}"), "0.5")
    check(("latex", r"\{1,2\}"), r"\{2,1\}")


def main(argv: list[str]) -> int:
    try:
        return _serve(argv)
    except BrokenPipeError:  # the parent went away (it exited, or killed us); nothing to report to
        return 0


def _serve(argv: list[str]) -> int:
    parent_pid = int(argv[1]) if len(argv) > 1 else os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; we exit when it closes our stdin
    # Keep a private copy of stdout for frames and point fd 1 at stderr, so stray prints cannot corrupt frames.
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    proto_in = sys.stdin.buffer
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    _warm_up()
    write_frame(proto_out, ("ready", os.getpid()))
    while True:
        message = read_frame(proto_in)
        if message is None:
            return 0
        _, items = message
        for key, op, args in items:
            try:
                reply = (key, "ok", OPS[op](*args))
            except Exception as exc:  # noqa: BLE001 - reported to the parent as reason="grader_error", never hidden
                reply = (key, "error", f"{type(exc).__name__}: {exc}"[:1000])
            write_frame(proto_out, reply)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
