"""Generate completions for problems and grade them with THE grader: the shared path of evaluation and the demo."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tina.rollout import Sampling


@dataclass
class Graded:
    completions: list[list[str]]  # [problems][samples]
    extracted: list[list[str | None]]
    correct: np.ndarray  # [problems, samples]: 1.0 / 0.0 / nan (ungradable)
    n_tokens: int


def generate_and_grade(backend, prompts: list[str], golds: list[str], sampling: Sampling, *, task: str = "math",
                       timeout: float = 5.0, batch_problems: int | None = None, progress=None) -> Graded:
    """``sampling.n`` completions per prompt, graded against ``golds``; batched over problems."""
    from tina.grading import grade_many

    n = sampling.n
    step = batch_problems or len(prompts)
    completions, extracted, rows, n_tokens = [], [], [], 0
    for i in range(0, len(prompts), step):
        rollout = backend.generate(prompts[i : i + step], sampling)
        n_tokens += rollout.n_tokens
        gold_rep = [g for g in golds[i : i + step] for _ in range(n)]
        verdicts = grade_many(rollout.texts, gold_rep, task=task, timeout=timeout)
        for j in range(len(rollout.texts) // n):
            sl = slice(j * n, (j + 1) * n)
            completions.append(rollout.texts[sl])
            extracted.append([v.extracted for v in verdicts[sl]])
            rows.append([np.nan if v.correct is None else float(v.correct) for v in verdicts[sl]])
        if progress is not None:
            progress(len(rollout.texts) // n, rollout.n_tokens)
    return Graded(completions, extracted, np.array(rows, dtype=float).reshape(len(prompts), n), n_tokens)
