"""The demo's synthetic multi-step reasoning task: ``a+b-c`` with single-digit operands.

A worked completion thinks in two dependent steps and then boxes the answer, in the R1 style that Tina's rewards
expect (``format`` looks for exactly one ``"\\n</think>\\n"``)::

    <think>
    3+4=7
    7-2=5
    </think>
    \\boxed{5}

The answer is graded by the project's grader (:mod:`tina.grading`), the same code that scores benchmarks.  There are
1000 distinct problems; a seeded split holds some out for evaluation and training never sees them.
"""

from __future__ import annotations

import random

PROBLEMS = [(a, b, c) for a in range(10) for b in range(10) for c in range(10)]


def problem_text(a: int, b: int, c: int) -> str:
    return f"{a}+{b}-{c}"


def answer(a: int, b: int, c: int) -> str:
    return str(a + b - c)


def _perturb(value: int, rng: random.Random) -> int:
    return value + rng.choice((-10, -2, -1, 1, 2, 10))


def solution(a: int, b: int, c: int, *, noise: float = 0.0, rng: random.Random | None = None) -> str:
    """The worked completion; with ``noise`` > 0 each step's result is corrupted with that probability.

    Later text stays consistent with a corrupted value (a wrong ``s`` is carried into the second step), so noisy
    solutions look like a careless student's, not like random text.

    >>> solution(3, 4, 2)
    '<think>\\n3+4=7\\n7-2=5\\n</think>\\n\\\\boxed{5}'
    """
    rng = rng or random.Random(0)
    s = a + b
    if noise and rng.random() < noise:
        s = _perturb(s, rng)
    r = s - c
    if noise and rng.random() < noise:
        r = _perturb(r, rng)
    return f"<think>\n{a}+{b}={s}\n{s}-{c}={r}\n</think>\n\\boxed{{{r}}}"


def split(*, n_eval: int = 256, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows), each ``{"id", "problem", "answer"}``; the split is fixed by ``seed``."""
    order = list(range(len(PROBLEMS)))
    random.Random(seed).shuffle(order)
    rows = [{"id": f"arith-{i}", "problem": problem_text(*PROBLEMS[i]), "answer": answer(*PROBLEMS[i])} for i in order]
    return rows[n_eval:], rows[:n_eval]


def operands(problem: str) -> tuple[int, int, int]:
    """Inverse of :func:`problem_text`: ``"3+4-2"`` -> (3, 4, 2)."""
    left, c = problem.split("-")
    a, b = left.split("+")
    return int(a), int(b), int(c)
