"""`tina eval`: models (the base and LoRA adapters) x benchmarks x seeds, with the base model loaded ONCE.

The flow, top to bottom (`run_eval`)::

    base, tokenizer = load_model_and_tokenizer(model)            # once; base_weights_digest for the protocol
    [--select-on]  every checkpoint on the validation set -> choose_checkpoint (ties -> earliest); keep only it
    for model in (base, adapters):                               # AdapterSwitcher: merged in place (the base
                                                                 # restored exactly after) or PEFT set_adapter
        for benchmark, seed:
            generate_and_grade(..., Sampling(seed=benchmark_seed(seed, benchmark)))  # correct [problems, samples]
            append every completion to samples.jsonl             # streamed: long completions never pile up
    summarize (tina.eval.stats) -> results.json, results.md, accuracy_by_checkpoint.png; book the cost in the ledger

Every model sees the same prompts and the same per-problem random streams (seeded, batch-invariant sampling), so a
paired comparison between two models is between two samples of the same problems; an adapter whose LoRA update is
zero gives exactly the base model's completions, and ``--limit`` keeps the samples of the problems it keeps.

The rooms: :mod:`~tina.eval.options` (what the user asks), :mod:`~tina.eval.candidates` (which models),
:mod:`~tina.eval.swap` (one base served as each adapter), :mod:`~tina.eval.protocol` (seeds, streams, sampling and
the record of them), :mod:`~tina.eval.selection` (``--select-on``), :mod:`~tina.eval.stats`; this module runs them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tina.errors import TinaError
from tina.eval.benchmarks import Benchmark, load_benchmark
from tina.eval.candidates import (
    BASE,
    Candidate,
    adapter_candidates,
    base_model_for,
    read_run_config,
    run_checkpoints,
    sha256_files,
)
from tina.eval.options import EvalOptions
from tina.eval.protocol import eval_sampling, protocol, stream_key
from tina.eval.selection import select_checkpoint, validation_set
from tina.eval.stats import paired, summarize
from tina.ledger import add_eval_cost

# ----------------------------------------------------------------------------------------------------- protocol


@dataclass
class Outcome:
    correct: np.ndarray  # [problems, seeds * samples]
    lengths: np.ndarray  # [problems, seeds * samples] completion tokens
    truncated: np.ndarray  # [problems, seeds * samples] bool
    reasons: Counter
    n_tokens: int  # every completion's tokens (resumed units included)
    seconds: float  # generation + grading time of this session
    tokens_generated: int  # tokens generated in this session


class Session:
    """The served models, their prompts, and samples.jsonl (the resumable log of finished units)."""

    FLUSH_UNITS = 32  # grade and write at least every this many finished problems

    def __init__(self, server, opts: EvalOptions, samples, bar):
        self.server = server
        self.tokenizer = server.tokenizer
        self.opts = opts
        self.samples = samples
        self.bar = bar
        self._sampling = eval_sampling(opts)
        self._prompts: dict[tuple[str, int], tuple[list, list[str], list[list[int]]]] = {}
        self.tokens = 0
        self.units = {"restored": 0, "generated": 0}  # (seed, problem) units read back from samples.jsonl / made now
        self._start = time.perf_counter()

    def prompts(self, bench: Benchmark, seed: int):
        """(items, rendered prompts, prompt token ids) of a benchmark under a seed -- the same for every model."""
        from tina.prompts import render_prompt

        key = (bench.name, seed)
        if key not in self._prompts:
            items = bench.items(seed)
            template = bench.chat_template or self.opts.template
            texts = [
                render_prompt(self.tokenizer, it.text, system_prompt=bench.system_prompt, template=template)
                for it in items
            ]
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
            self._prompts[key] = (items, texts, [list(x) for x in ids])
        return self._prompts[key]

    def evaluate(self, cand: Candidate, bench: Benchmark, *, phase: str = "test") -> Outcome:
        """Every (seed, problem) unit of ``cand`` on ``bench``: those already in samples.jsonl are read back, the
        others generated in ONE engine call (all problems x samples x seeds), graded and written as they finish."""
        o = self.opts
        shard = o.shard or (0, 1)
        units = [(seed, i) for seed in o.seeds for i in range(len(bench.rows)) if i % shard[1] == shard[0]]
        todo = [u for u in units if self.samples.complete(self._key(cand, bench, phase, *u)) is None]
        self.bar.update(len(units) - len(todo))
        self.units["restored"] += len(units) - len(todo)
        self.units["generated"] += len(todo)
        start, generated = time.perf_counter(), 0
        if todo:
            self.bar.set_description(f"{cand.label} {bench.name}")
            with self.server.serve(cand) as engine:
                prompts = [self.prompts(bench, s)[2][i] for s, i in todo]
                keys = [stream_key(s, bench.name, i) for s, i in todo]
                done: list[tuple[int, object]] = []
                for k, rollout in engine.generate_each(prompts, self._sampling, keys=keys):
                    done.append((k, rollout))
                    generated += rollout.n_tokens
                    if len(done) >= self.FLUSH_UNITS:
                        self._write(cand, bench, phase, todo, done)
                        done = []
                self._write(cand, bench, phase, todo, done)
            lost = sum(self.samples.complete(self._key(cand, bench, phase, *u)) is None for u in todo)
            if lost:  # an engine that silently returns fewer groups must not turn into accuracy 0 (or a resume loop)
                raise RuntimeError(
                    f"the {engine.name} engine returned completions for {len(todo) - lost} of "
                    f"{len(todo)} problem(s) of {cand.label} on {bench.name}; what it returned is "
                    f"kept in samples.jsonl"
                )
        return self._outcome(cand, bench, phase, units, time.perf_counter() - start, generated)

    def check_prompt_lengths(self, bench: Benchmark) -> None:
        """A prompt the engine cannot take (vLLM refuses one that fills its context) is a one-line error, before
        anything is generated."""
        limit = getattr(self.server, "context_tokens", None)
        if not limit or not bench.rows:
            return
        longest, seed, i = max(
            (len(self.prompts(bench, s)[2][i]), s, i) for s in self.opts.seeds for i in range(len(bench.rows))
        )
        if longest >= limit:
            raise TinaError(
                f"{bench.name}: the prompt of problem {bench.rows[i]['id']} is {longest} tokens, but the "
                f"{self.server.engine_name} engine serves at most {limit} tokens (prompt + completion) "
                "for this model; pass a larger --max-model-len (up to the model's context) or use "
                "--backend hf"
            )

    def _key(self, cand, bench, phase, seed, i):
        return (cand.label, bench.name, phase, seed, str(bench.rows[i]["id"]))

    def _write(self, cand, bench, phase, todo, done) -> None:
        """Grade finished units with THE grader (one worker round trip) and append them to samples.jsonl."""
        from tina.grading import grade_many

        if not done:
            return
        n = self.opts.samples
        texts, golds, finished, prompts, where = [], [], [], [], []
        for k, rollout in done:
            seed, i = todo[k]
            items, rendered, _ = self.prompts(bench, seed)
            texts += rollout.texts
            golds += [items[i].gold] * n
            finished += (~rollout.truncated).tolist()
            prompts += [rendered[i]] * n
            where.append((seed, i, rollout))
        verdicts = grade_many(
            texts, golds, task=bench.task, timeout=self.opts.grader_timeout, finished=finished, prompts=prompts
        )
        records, tokens = [], 0
        for u, (seed, i, rollout) in enumerate(where):
            item = self.prompts(bench, seed)[0][i]
            for j in range(n):
                v = verdicts[u * n + j]
                records.append(
                    {
                        "model": cand.label,
                        "benchmark": bench.name,
                        "phase": phase,
                        "problem_id": bench.rows[i]["id"],
                        "seed": seed,
                        "sample": j,
                        "task": bench.task,
                        "gold": item.gold,
                        "completion": rollout.texts[j],
                        "extracted": v.extracted,
                        "correct": v.correct,
                        "reason": v.reason,
                        "tokens": int(rollout.lengths[j]),
                        "truncated": bool(rollout.truncated[j]),
                        **item.meta,
                    }
                )
            tokens += rollout.n_tokens
        self.samples.add(records)
        self._tick(len(where), tokens)

    def _outcome(self, cand, bench, phase, units, seconds: float, generated: int) -> Outcome:
        """The correctness matrix [problems, seeds * samples] of ``cand`` on ``bench``, from samples.jsonl."""
        o = self.opts
        problems = sorted({i for _, i in units})
        row = {i: r for r, i in enumerate(problems)}
        shape = (len(problems), len(o.seeds) * o.samples)
        correct, lengths, truncated = np.full(shape, np.nan), np.zeros(shape, int), np.zeros(shape, bool)
        reasons, n_tokens = Counter(), 0
        for s_index, seed in enumerate(o.seeds):
            for i in problems:
                records = self.samples.complete(self._key(cand, bench, phase, seed, i))
                if records is None:
                    continue  # another shard's problem
                for j, rec in enumerate(records):
                    col = s_index * o.samples + j
                    correct[row[i], col] = np.nan if rec["correct"] is None else float(rec["correct"])
                    lengths[row[i], col] = rec["tokens"]
                    truncated[row[i], col] = rec["truncated"]
                    reasons[rec["reason"]] += 1
                    n_tokens += rec["tokens"]
        return Outcome(correct, lengths, truncated, reasons, n_tokens, seconds, generated)

    def _tick(self, n_problems: int, n_tokens: int) -> None:
        self.tokens += n_tokens
        self.bar.update(n_problems)
        elapsed = time.perf_counter() - self._start
        if elapsed > 0:
            self.bar.set_postfix_str(f"{self.tokens / elapsed:.0f} tok/s")


# ------------------------------------------------------------------------------------------------------- the run
def plan(opts: EvalOptions) -> tuple[str, list[Candidate], bool]:
    """(base model name, adapter candidates, include base) from the options; user errors are TinaErrors."""
    if opts.run and opts.adapters:
        raise TinaError("give --run or --adapter, not both")
    if opts.run:
        if not Path(opts.run).is_dir():
            raise TinaError(f"--run {opts.run}: no such directory")
        adapters = run_checkpoints(opts.run)
        if not adapters:
            raise TinaError(f"--run {opts.run}: no checkpoint-<step>/ folders with a PEFT adapter in it")
    else:
        adapters = adapter_candidates(opts.adapters)
    include_base = opts.include_base if opts.include_base is not None else bool(opts.run) or not adapters
    model = opts.model
    if model is None and opts.run:
        model = (read_run_config(opts.run).get("model") or {}).get("name_or_path")
    if model is None and adapters:
        bases = {base_model_for(c.adapter) for c in adapters} - {None}
        if len(bases) > 1:
            raise TinaError(f"the adapters have different base models ({', '.join(sorted(bases))}); pass --model")
        model = next(iter(bases), None)
    if model is None:
        raise TinaError("no model to evaluate: pass --model (a hub id, a folder or builtin:...), --run or --adapter")
    if opts.select_on and len(adapters) < 1:
        raise TinaError("--select-on chooses among checkpoints: pass --run RUN (or several --adapter)")
    if opts.samples < 1 or not opts.seeds:
        raise TinaError("--samples must be >= 1 and --seeds must name at least one seed")
    from tina.eval.serving import server_class

    server_class(opts.backend).check_options(opts)  # before anything is read or written
    if opts.data_parallel > 1 and opts.select_on:
        raise TinaError(
            "--select-on with --data-parallel: select first (one process), then evaluate the chosen "
            "checkpoint with --adapter ... --data-parallel N"
        )
    return str(model), adapters, include_base


def run_eval(opts: EvalOptions, *, echo=print) -> dict:
    """Evaluate, write results.json / samples.jsonl / results.md (and the checkpoint plot); return the results."""
    from tqdm.auto import tqdm

    from tina.eval import report
    from tina.eval.samples import SampleLog, check_state

    started = time.perf_counter()
    model_name, adapters, include_base = plan(opts)
    out = Path(opts.output_dir or (Path(opts.run) / "eval" if opts.run else "tina-eval"))
    if (
        not opts.overwrite
        and not opts.resume
        and not opts.dry_run
        and ((out / "results.json").exists() or (out / "samples.jsonl").exists())
    ):
        raise TinaError(
            f"{out} already holds evaluation results; pass --resume to continue an interrupted one, "
            "--overwrite to replace it, or choose another --output-dir"
        )
    benches = [load_benchmark(name, data_dir=opts.data_dir, limit=opts.limit) for name in opts.benchmarks]
    validation = validation_set(opts, benches) if opts.select_on else None
    if opts.dry_run:
        from tina.eval.cost import dry_run

        return dry_run(opts, model_name, adapters, include_base, benches, validation, out, echo=echo)
    if opts.data_parallel > 1:
        from tina.eval.parallel import run_data_parallel

        return run_data_parallel(opts, out, assemble=assemble_only, echo=echo)

    from tina.eval.serving import open_server

    out.mkdir(parents=True, exist_ok=True)
    check_state(out, {**asdict(opts), "model": model_name}, resume=opts.resume)
    server = open_server(opts, model_name, adapters)
    common = protocol(opts, model_name, server)
    from tina.eval.serving import check_adapters_base

    check_adapters_base(adapters, model_name, common["dtype"], common["base_weights_sha256"], warn=echo)
    adapter_sha = {c.label: sha256_files(c.adapter) for c in adapters}

    models_for_test = ([BASE] if include_base else []) + adapters
    shards = (opts.shard or (0, 1))[1]
    n_val = (len(validation.rows) * len(opts.seeds) * (len(adapters) + include_base)) if validation else 0
    n_test_models = (include_base + 1) if validation else len(models_for_test)
    total = (n_val + n_test_models * sum(len(b.rows) for b in benches) * len(opts.seeds)) // shards
    session = Session(server, opts, None, None)  # its log and progress bar are attached below
    for bench in ([validation] if validation is not None else []) + benches:
        session.check_prompt_lengths(bench)  # before samples.jsonl is opened: an error leaves it as it was
    samples = SampleLog(out / "samples.jsonl", samples=opts.samples, resume=opts.resume)
    if opts.resume and samples.restored:
        echo(f"resuming: {samples.restored} finished problem(s) read back from {out / 'samples.jsonl'}")
    try:
        with tqdm(total=total, unit="problem", disable=not opts.progress, dynamic_ncols=True) as bar:
            session.samples, session.bar = samples, bar
            selection = None
            if validation is not None:
                selection, chosen = select_checkpoint(session, validation, adapters, include_base, opts)
                models_for_test = ([BASE] if include_base else []) + [chosen]
            outcomes = {(c.label, b.name): session.evaluate(c, b) for c in models_for_test for b in benches}
    finally:
        samples.close()

    results = _assemble(opts, common, models_for_test, benches, outcomes, adapter_sha, session, selection)
    results["seconds"] = round(time.perf_counter() - started, 3)
    results["tokens_generated"] = session.tokens
    results["units"] = dict(session.units)
    if opts.run and not opts.shard:
        for cand in models_for_test:
            for bench in benches:
                o = outcomes[(cand.label, bench.name)]
                add_eval_cost(
                    opts.run,
                    o.seconds,
                    label=f"tina eval: {cand.label} on {bench.name}",
                    extra={
                        "tokens": o.tokens_generated,
                        "tokens_per_second": round(o.tokens_generated / o.seconds, 2) if o.seconds else None,
                        "engine": server.engine_name,
                    },
                )
        results["ledger"] = (Path(opts.run) / "ledger.json").is_file()
    report.write_all(out, results, plot=bool(opts.run))
    echo(report.markdown_table(results))
    echo(f"results: {out / 'results.json'}, {out / 'results.md'}, {out / 'samples.jsonl'}")
    return results


class _TokenizerOnly:
    """What assembling results from samples.jsonl needs of a server: the tokenizer (prompts for the protocol)."""

    def __init__(self, model_name: str):
        from tina.models import load_tokenizer, resolve_model_path

        self.tokenizer = load_tokenizer(resolve_model_path(model_name))

    def serve(self, cand):  # pragma: no cover - every unit is complete when results are only assembled
        raise RuntimeError("assemble_only found a unit that no shard finished")


def assemble_only(opts: EvalOptions, shard_results: dict, *, echo=print) -> dict:
    """Results from a complete samples.jsonl (the shards of a data-parallel evaluation): nothing is generated."""
    from tqdm.auto import tqdm

    from tina.eval import report
    from tina.eval.samples import SampleLog

    model_name, adapters, include_base = plan(opts)
    out = Path(opts.output_dir)
    benches = [load_benchmark(name, data_dir=opts.data_dir, limit=opts.limit) for name in opts.benchmarks]
    first = next(iter(next(iter(shard_results["results"].values())).values()))["protocol"]
    per_entry = ("adapter", "adapter_sha256", "benchmark", "prompt_template", "gpqa_choice_order", "example_prompt")
    common = {k: v for k, v in first.items() if k not in per_entry}
    common["data_parallel"] = opts.data_parallel_of or None
    adapter_sha = {c.label: sha256_files(c.adapter) for c in adapters}
    models = ([BASE] if include_base else []) + adapters
    samples = SampleLog(out / "samples.jsonl", samples=opts.samples, resume=True)
    try:
        with tqdm(total=0, disable=True) as bar:
            session = Session(_TokenizerOnly(model_name), opts, samples, bar)
            outcomes = {(c.label, b.name): session.evaluate(c, b) for c in models for b in benches}
    finally:
        samples.close()
    results = _assemble(opts, common, models, benches, outcomes, adapter_sha, session, None)
    report.write_all(out, results, plot=bool(opts.run))
    echo(report.markdown_table(results))
    echo(f"results: {out / 'results.json'}, {out / 'results.md'}, {out / 'samples.jsonl'}")
    return results


def _assemble(opts, common, models, benches, outcomes, adapter_sha, session, selection) -> dict:
    res: dict = {}
    for cand in models:
        res[cand.label] = {}
        for bench in benches:
            o = outcomes[(cand.label, bench.name)]
            s = summarize(o.correct, seeds=opts.seeds, samples=opts.samples, resamples=opts.bootstrap_resamples)
            s["reasons"] = dict(o.reasons)
            s["truncated_fraction"] = float(o.truncated.mean())
            s["mean_completion_tokens"] = float(o.lengths.mean())
            s["seconds"] = round(o.seconds, 3)  # generation + grading in this session (device-seconds: x devices)
            s["tokens"] = o.n_tokens
            s["tokens_generated"] = o.tokens_generated
            s["tokens_per_second"] = (
                round(o.tokens_generated / o.seconds, 2) if o.seconds and o.tokens_generated else None
            )
            items, prompts, _ = session.prompts(bench, opts.seeds[0])
            s["protocol"] = {
                **common,
                "adapter": str(cand.adapter) if cand.adapter else None,
                "adapter_sha256": adapter_sha.get(cand.label),
                "benchmark": {
                    "name": bench.name,
                    "source": bench.source,
                    "data_sha256": bench.data_sha256,
                    "rows_sha256": bench.rows_sha256,
                    "n_rows": bench.n_total,
                    "limit": bench.limit,
                    "grader_task": bench.task,
                },
                "prompt_template": bench.template,
                "gpqa_choice_order": "sorted by sha256('gpqa|{seed}|{id}|{i}')" if bench.task == "gpqa" else None,
                "example_prompt": prompts[0] if prompts else None,
            }
            res[cand.label][bench.name] = s
    base = BASE.label if BASE in models else None
    previous = None
    for cand in models:
        if cand.adapter is None:
            continue
        for bench in benches:
            entry = res[cand.label][bench.name]
            mine = outcomes[(cand.label, bench.name)].correct
            if base:
                entry["vs_base"] = paired(
                    outcomes[(base, bench.name)].correct, mine, label=base, resamples=opts.bootstrap_resamples
                )
            if previous is not None:
                entry["vs_previous"] = paired(
                    outcomes[(previous.label, bench.name)].correct,
                    mine,
                    label=previous.label,
                    resamples=opts.bootstrap_resamples,
                )
        previous = cand
    return {
        "tina_eval_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "models": [
            {
                "label": c.label,
                "adapter": str(c.adapter) if c.adapter else None,
                "step": c.step,
                "adapter_sha256": adapter_sha.get(c.label),
            }
            for c in models
        ],
        "benchmarks": [b.name for b in benches],
        "averages": {c.label: float(np.mean([res[c.label][b.name]["mean"] for b in benches])) for c in models},
        "results": res,
        "selection": selection,
    }
