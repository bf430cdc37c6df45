"""Generate completions for problems and grade them with THE grader: the shared path of evaluation and the demo."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tina.rollout import Sampling


@dataclass
class Graded:
    completions: list[list[str]]  # [problems][samples]
    extracted: list[list[str | None]]
    correct: np.ndarray  # [problems, samples]: 1.0 / 0.0 / nan (ungradable)
    n_tokens: int
    reasons: list[list[str]] = field(default_factory=list)  # [problems][samples]: Verdict.reason
    lengths: np.ndarray | None = None  # [problems, samples] generated tokens (EOS included)
    truncated: np.ndarray | None = None  # [problems, samples] bool: hit max_new_tokens without an EOS


def generate_and_grade(
    engine,
    prompts: list[str],
    golds: list[str],
    sampling: Sampling,
    *,
    task: str = "math",
    timeout: float = 5.0,
    batch_problems: int | None = None,
    progress=None,
) -> Graded:
    """``sampling.n`` completions per prompt (rendered text, tokenised here once), graded against ``golds``; batched
    over problems.  A completion that hit the token limit is *unfinished* and never correct (tina.grading).

    ``progress(n_problems_done, n_tokens)`` is called after each batch.
    """
    from tina.grading import grade_many

    n = sampling.n
    prompt_ids = engine.tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    step = batch_problems or len(prompts)
    completions, extracted, reasons, rows, n_tokens = [], [], [], [], 0
    lengths, truncated = [], []
    for i in range(0, len(prompts), step):
        chunk = prompts[i : i + step]
        # keys = problem positions: with a seeded Sampling, a problem's samples do not depend on the batching
        rollout = engine.generate(prompt_ids[i : i + step], sampling, keys=list(range(i, i + len(chunk))))
        n_tokens += rollout.n_tokens
        gold_rep = [g for g in golds[i : i + step] for _ in range(n)]
        verdicts = grade_many(
            rollout.texts,
            gold_rep,
            task=task,
            timeout=timeout,
            finished=(~rollout.truncated).tolist(),
            prompts=[p for p in chunk for _ in range(n)],
        )
        lengths.extend(rollout.lengths.tolist())
        truncated.extend(rollout.truncated.tolist())
        for j in range(len(rollout.texts) // n):
            sl = slice(j * n, (j + 1) * n)
            completions.append(rollout.texts[sl])
            extracted.append([v.extracted for v in verdicts[sl]])
            reasons.append([v.reason for v in verdicts[sl]])
            rows.append([np.nan if v.correct is None else float(v.correct) for v in verdicts[sl]])
        if progress is not None:
            progress(len(rollout.texts) // n, rollout.n_tokens)
    shape = (len(prompts), n)
    return Graded(
        completions,
        extracted,
        np.array(rows, dtype=float).reshape(shape),
        n_tokens,
        reasons,
        np.array(lengths, dtype=int).reshape(shape),
        np.array(truncated, dtype=bool).reshape(shape),
    )
