"""The per-step record written to metrics.jsonl: every process's metrics reduced, costs and rates, and the progress
bar's postfix."""

from __future__ import annotations

import math

from tina import distributed
from tina.ledger import Ledger

# timings; the rest of a record is reproducible
WALL_TIME_FIELDS = ("seconds", "step_seconds", "device_hours", "usd", "rollout/wait_s", "rollout/worker_s")
SUMMED_METRICS = ("ungradable", "grader_timeouts", "tokens")  # totals over the step; the others are means
# dynamic/rounds: summed over processes (a count); dynamic/groups_with_signal: a share (mean)
LAST_IN_WINDOW = ("step", "seconds", "device_hours", "usd", "learning_rate")


def window_mean(records: list[dict]) -> dict:
    """One record for a logging window: numeric metrics averaged (None skipped), running totals from the last.

    >>> window_mean([{"step": 1, "reward": 0.5, "usd": 1.0}, {"step": 2, "reward": 1.0, "usd": 2.0}])
    {'step': 2, 'reward': 0.75, 'usd': 2.0}
    """
    out: dict = {}
    for key in records[-1]:
        if key in LAST_IN_WINDOW:
            out[key] = records[-1][key]
            continue
        values = [
            r.get(key) for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
        ]
        if values:
            out[key] = sum(values) / len(values)
        elif key in records[-1]:
            out[key] = records[-1][key]
    return out


def step_record(
    step: int,
    rollout_metrics: dict,
    out: dict,
    lr: float,
    step_seconds: float,
    ledger: Ledger,
    dist: distributed.Dist | None = None,
) -> dict:
    """One metrics.jsonl line: each rollout metric's (sum, count) pooled over every process; ledger
    token counts grow by the step's totals over every process."""
    dist = dist or distributed.Dist()
    rec: dict = {"step": step}
    keys = list(rollout_metrics)
    flat = dist.sum([float(x) for k in keys for x in rollout_metrics[k]])
    for i, k in enumerate(keys):
        total, count = flat[2 * i], flat[2 * i + 1]
        if k in SUMMED_METRICS:
            rec[k] = int(total)
        else:
            rec[k] = total / count if count else None
    rec.update(out)
    ledger.tokens_generated += int(rec.get("tokens", 0) or 0)
    ledger.tokens_trained += int(rec.pop("tokens_trained", 0) or 0)
    rec["learning_rate"] = lr
    rec["seconds"] = round(ledger.wall_seconds, 3)  # training wall time so far (all sessions), as in the ledger
    rec["step_seconds"] = round(step_seconds, 3)
    rec["device_hours"] = round(ledger.device_hours, 9)
    rec["usd"] = round(ledger.usd, 9)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}


def postfix(rec: dict) -> str:
    parts = [f"reward={rec['reward']:.3f}" if rec.get("reward") is not None else "reward=n/a"]
    if rec.get("reward/accuracy") is not None:
        parts.append(f"acc={rec['reward/accuracy']:.2f}")
    if rec.get("completion_length") is not None:
        parts.append(f"len={rec['completion_length']:.0f}")
    parts.append(f"${rec['usd']:.4f}" if rec.get("usd") else f"{rec.get('device_hours', 0):.4f} dev-h")
    return " ".join(parts)
