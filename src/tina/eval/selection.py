"""``--select-on``: choose one checkpoint on a held-out validation set (never a test benchmark, no shared problems),
then evaluate only it on the test benchmarks; ties go to the earliest checkpoint."""

from __future__ import annotations

import math
from typing import Protocol

from tina.errors import TinaError
from tina.eval.benchmarks import Benchmark, load_validation
from tina.eval.candidates import BASE, Candidate, read_run_config
from tina.eval.options import EvalOptions
from tina.eval.stats import summarize


class Evaluates(Protocol):
    """What selection needs of an evaluation session (:class:`tina.eval.runner.Session`)."""

    def evaluate(self, cand: Candidate, bench: Benchmark, *, phase: str): ...


def choose_checkpoint(scores: list[tuple[Candidate, float]]) -> Candidate:
    """The candidate with the highest validation score; ties go to the earliest (lowest step, then list order).

    >>> a, b, c = (Candidate(f"checkpoint-{s}", step=s) for s in (1, 2, 3))
    >>> choose_checkpoint([(c, 0.5), (a, 0.25), (b, 0.5)]).label
    'checkpoint-2'
    """
    if not scores:
        raise ValueError("no checkpoints to choose from")
    order = {id(c): i for i, (c, _) in enumerate(scores)}
    best = max(s for _, s in scores)
    tied = [c for c, s in scores if s == best]
    return min(tied, key=lambda c: (c.step if c.step is not None else math.inf, order[id(c)]))


def validation_set(opts: EvalOptions, benches: list[Benchmark]) -> Benchmark:
    if opts.select_on in opts.benchmarks:
        raise TinaError(
            f"--select-on {opts.select_on} is also a test benchmark: choosing a checkpoint on the test set "
            f"leaks; select on a held-out file (e.g. RUN/holdout.jsonl) or another benchmark"
        )
    style, system_prompt, template = "math", None, None
    if opts.select_prompt == "train":
        data = (read_run_config(opts.run).get("data") or {}) if opts.run else {}
        style, system_prompt, template = "raw", data.get("system_prompt"), data.get("template", "tokenizer")
    val = load_validation(
        opts.select_on,
        data_dir=opts.data_dir,
        limit=opts.limit,
        style=style,
        system_prompt=system_prompt,
        chat_template=template,
    )
    test_problems = {r.get("problem") or r.get("question") for b in benches for r in b.rows}
    overlap = [r["id"] for r in val.rows if (r.get("problem") or r.get("question")) in test_problems]
    if overlap:
        raise TinaError(
            f"validation set {opts.select_on} shares {len(overlap)} problem(s) with the test benchmarks "
            f"(ids {', '.join(overlap[:5])}); selecting on them would leak"
        )
    return val


def select_checkpoint(
    session: Evaluates, val: Benchmark, adapters: list[Candidate], include_base: bool, opts: EvalOptions
):
    """Evaluate every checkpoint (and the base, for reference) on the validation set; choose the best."""
    scored, rows = [], []
    for cand in ([BASE] if include_base else []) + adapters:
        outcome = session.evaluate(cand, val, phase="selection")
        s = summarize(outcome.correct, seeds=opts.seeds, samples=opts.samples, resamples=opts.bootstrap_resamples)
        rows.append(
            {
                "model": cand.label,
                "step": cand.step,
                "mean": s["mean"],
                "ci95": s["ci95"],
                "n_problems": s["n_problems"],
                "n_samples": s["n_samples"],
                "n_ungradable": s["n_ungradable"],
            }
        )
        if cand.adapter is not None:
            scored.append((cand, s["mean"]))
    chosen = choose_checkpoint(scored)
    selection = {
        "on": opts.select_on,
        "name": val.name,
        "source": val.source,
        "data_sha256": val.data_sha256,
        "rows_sha256": val.rows_sha256,
        "n_problems": len(val.rows),
        "prompt": opts.select_prompt,
        "prompt_template": val.template,
        "metric": "mean@n over samples x seeds",
        "tie_break": "earliest checkpoint",
        "all_tied": len(scored) > 1 and len({m for _, m in scored}) == 1,
        "scores": rows,
        "chosen": chosen.label,
        "chosen_step": chosen.step,
        "chosen_adapter": str(chosen.adapter),
    }
    return selection, chosen
