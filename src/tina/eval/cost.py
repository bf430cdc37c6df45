"""``tina eval --dry-run``: what an evaluation will generate and how long it will take, from a measured throughput.

Token volume: for every benchmark, models x problems x seeds x samples completions, each of the mean length measured
by an earlier evaluation in the same output directory (its results.json), else ``--max-new-tokens`` (an upper bound,
and said so).  Throughput: the tokens/s of that earlier evaluation on the same engine, else measured now by a short
calibration run (the first problems of the first benchmark, at most 128 new tokens each, on the engine the evaluation
would use).  Nothing is written.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

CALIBRATION_PROBLEMS = 8
CALIBRATION_TOKENS = 128


def previous_measurements(out: Path) -> tuple[dict, float | None, str | None]:
    """(mean completion tokens per benchmark, tokens/s, engine) from an earlier results.json in ``out``."""
    path = out / "results.json"
    if not path.is_file():
        return {}, None, None
    try:
        results = json.loads(path.read_text())
    except ValueError:
        return {}, None, None
    lengths: dict[str, list[float]] = {}
    tokens = seconds = 0.0
    engine = None
    for per_bench in results.get("results", {}).values():
        for name, entry in per_bench.items():
            lengths.setdefault(name, []).append(entry.get("mean_completion_tokens", 0.0))
            tokens += entry.get("tokens_generated") or 0
            seconds += entry.get("seconds") or 0.0
            engine = (entry.get("protocol") or {}).get("engine", engine)
    means = {k: sum(v) / len(v) for k, v in lengths.items() if v}
    return means, (tokens / seconds if tokens and seconds else None), engine


def calibrate(opts, model_name: str, bench) -> float:
    """Tokens/s of the evaluation's own engine on the first problems of ``bench`` (at most 128 new tokens each)."""
    from tina.eval.candidates import BASE
    from tina.eval.protocol import eval_sampling, stream_key
    from tina.eval.serving import open_server
    from tina.prompts import render_prompt

    server = open_server(opts, model_name, [])
    items = bench.items(opts.seeds[0])[:CALIBRATION_PROBLEMS]
    template = bench.chat_template or opts.template
    texts = [
        render_prompt(server.tokenizer, it.text, system_prompt=bench.system_prompt, template=template) for it in items
    ]
    ids = server.tokenizer(texts, add_special_tokens=False)["input_ids"]
    sampling = replace(eval_sampling(opts), max_new_tokens=min(opts.max_new_tokens, CALIBRATION_TOKENS))
    with server.serve(BASE) as engine:
        start = time.perf_counter()
        rollout = engine.generate(
            ids, sampling, keys=[stream_key(opts.seeds[0], bench.name, i) for i in range(len(ids))]
        )
        seconds = time.perf_counter() - start
    return rollout.n_tokens / seconds if seconds else 0.0


def dry_run(
    opts, model_name: str, adapters: list, include_base: bool, benches: list, validation, out: Path, *, echo=print
) -> dict:
    means, rate, engine = previous_measurements(out)
    source = f"measured by the earlier evaluation in {out} ({engine})" if rate else None
    if rate is None:
        rate = calibrate(replace(opts, progress=False), model_name, benches[0])
        source = (
            f"measured now: {CALIBRATION_PROBLEMS} problems x {opts.samples} samples of {benches[0].name}, "
            f"at most {CALIBRATION_TOKENS} new tokens, --backend {opts.backend}"
        )
    n_models = len(adapters) + include_base
    rows, total_tokens = [], 0.0
    for bench in ([validation] if validation is not None else []) + benches:
        models = n_models if (bench is validation or validation is None) else include_base + 1
        completions = models * len(bench.rows) * len(opts.seeds) * opts.samples
        per = means.get(bench.name)
        tokens = completions * (per if per else opts.max_new_tokens)
        total_tokens += tokens
        rows.append(
            {
                "benchmark": bench.name,
                "models": models,
                "problems": len(bench.rows),
                "completions": completions,
                "tokens_per_completion": per or opts.max_new_tokens,
                "length_source": "measured" if per else "upper bound (--max-new-tokens)",
                "tokens": tokens,
                "seconds": tokens / rate if rate else None,
            }
        )
    echo(
        f"dry run: {n_models} model(s) x {len(benches)} benchmark(s) x {len(opts.seeds)} seed(s) x {opts.samples} "
        f"sample(s); throughput {rate:.0f} tokens/s ({source})"
    )
    echo("| benchmark | models | problems | completions | tokens/completion | tokens | time |")
    echo("|---|---|---|---|---|---|---|")
    for r in rows:
        length = f"{r['tokens_per_completion']:.0f} ({'measured' if r['length_source'] == 'measured' else 'max'})"
        echo(
            f"| {r['benchmark']} | {r['models']} | {r['problems']} | {r['completions']} | {length} | "
            f"{r['tokens']:.3g} | {_duration(r['seconds'])} |"
        )
    echo(
        f"total: {total_tokens:.3g} tokens, about {_duration(total_tokens / rate if rate else None)} on this engine "
        "(lengths marked max are upper bounds)"
    )
    return {
        "dry_run": True,
        "tokens_per_second": rate,
        "throughput_source": source,
        "benchmarks": rows,
        "total_tokens": total_tokens,
        "total_seconds": total_tokens / rate if rate else None,
    }


def _duration(seconds: float | None) -> str:
    """'3.2 h', '14 min', '40 s'.

    >>> _duration(11520), _duration(840), _duration(40)
    ('3.2 h', '14 min', '40 s')
    """
    if seconds is None:
        return "?"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
