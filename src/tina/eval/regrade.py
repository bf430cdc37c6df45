"""`tina grade`: regrade a JSONL file of completions with THE grader (e.g. samples.jsonl after a grader fix).

Each line needs ``completion`` and ``gold``; the task is ``--task`` or the line's own ``task`` (samples.jsonl has
one), else ``math``.  Every line is written back with ``correct`` (true/false/null), ``extracted`` and ``reason``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tina.errors import DataError


def read_gradable(path: str | Path, task: str | None = None) -> list[dict]:
    """The file's lines, checked: each has a string ``completion`` and a ``gold`` (a number is read as its text)."""
    from tina.eval.benchmarks import answer_text, read_jsonl
    from tina.grading import TASKS

    rows = read_jsonl(path)
    for lineno, row in enumerate(rows, start=1):
        where = f"{path}: object {lineno}"
        if not isinstance(row.get("completion"), str):
            raise DataError(f"{where}: needs a string 'completion'")
        try:
            row["gold"] = answer_text(row.get("gold"))
        except ValueError:
            raise DataError(f"{where}: needs a 'gold' answer (string or number), got {row.get('gold')!r}") from None
        row_task = task or row.get("task") or "math"
        if row_task not in TASKS:
            raise DataError(f"{where}: unknown task {row_task!r}; expected one of {', '.join(TASKS)}")
        row["task"] = row_task
    if not rows:
        raise DataError(f"{path}: no lines to grade")
    return rows


def regrade(rows: list[dict], *, timeout: float = 5.0) -> list[dict]:
    """Rows with ``correct``, ``extracted`` and ``reason`` set by the grader (one batch per task)."""
    from tina.grading import grade_many

    out = [dict(r) for r in rows]
    for task in sorted({r["task"] for r in out}):
        idx = [i for i, r in enumerate(out) if r["task"] == task]
        verdicts = grade_many(
            [out[i]["completion"] for i in idx], [out[i]["gold"] for i in idx], task=task, timeout=timeout
        )
        for i, v in zip(idx, verdicts, strict=True):
            out[i].update(correct=v.correct, extracted=v.extracted, reason=v.reason)
    return out


def summary(rows: list[dict]) -> dict:
    """Counts and accuracy (ungradable lines count as incorrect, as in `tina eval`).

    >>> summary([{"correct": True}, {"correct": False}, {"correct": None}, {"correct": True}])["accuracy"]
    0.5
    """
    counts = Counter(r["correct"] for r in rows)
    n = len(rows)
    return {
        "n": n,
        "correct": counts[True],
        "incorrect": counts[False],
        "ungradable": counts[None],
        "accuracy": counts[True] / n if n else float("nan"),
    }


def format_summary(s: dict) -> str:
    """The one summary line.

    >>> format_summary({"n": 4, "correct": 2, "incorrect": 1, "ungradable": 1, "accuracy": 0.5})
    'n=4 correct=2 incorrect=1 ungradable=1 accuracy=0.5000 (ungradable counts as incorrect)'
    """
    return (
        f"n={s['n']} correct={s['correct']} incorrect={s['incorrect']} ungradable={s['ungradable']} "
        f"accuracy={s['accuracy']:.4f} (ungradable counts as incorrect)"
    )


def write_jsonl(rows: list[dict], handle) -> None:
    for row in rows:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
