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
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tina.errors import TinaError, did_you_mean
from tina.eval.benchmarks import TINA_SIX, Benchmark, load_benchmark, load_validation
from tina.rollout.base import Sampling

_CKPT = re.compile(r"^checkpoint-(\d+)$")
MERGE_TOLERANCE = 1e-4  # merged vs unmerged: max |logit difference| / max |logit| on a probe batch
MERGE_SIGNAL_FRACTION = 0.5  # ... and at most half the adapter's own effect (adapter vs base) on them: a merge
#                              that lost the update (rounding) must not pass because the update itself is small
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


# ------------------------------------------------------------------------------------------------------ options
@dataclass
class EvalOptions:
    """Everything `tina eval` takes (the CLI fills it from its flags; Python callers build it directly)."""

    model: str | None = None  # hub id, folder or builtin:...; default: the run's / adapters' base model
    adapters: list[str] = field(default_factory=list)
    run: str | None = None  # evaluate every RUN/checkpoint-*
    benchmarks: list[str] = field(default_factory=lambda: list(TINA_SIX))
    samples: int = 1  # completions per problem and seed
    seeds: list[int] = field(default_factory=lambda: [0])
    temperature: float = 0.6  # 0 = greedy
    top_p: float = 0.95
    max_new_tokens: int = 32768
    limit: int | None = None  # first N problems of each benchmark (and of the validation set)
    batch_size: int = 64  # sequences decoded at once: hf rows per decode batch; vllm max_num_seqs
    output_dir: str | None = None
    data_dir: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    attn_implementation: str = "sdpa"
    template: str = "tokenizer"  # chat template (tina.prompts.TEMPLATE_NAMES)
    include_base: bool | None = None  # default: on with --run, off otherwise
    merge_adapters: bool = False  # hf: fold each adapter into float32 weights (checked); default: unmerged
    select_on: str | None = None  # validation JSONL or benchmark name
    select_prompt: str = "eval"  # "eval": Tina's math prompt; "train": the run's training format
    grader_timeout: float = 5.0
    bootstrap_resamples: int = 2000
    progress: bool = True
    overwrite: bool = False
    backend: str = "hf"  # hf | vllm
    resume: bool = False  # continue an interrupted evaluation from its samples.jsonl
    dry_run: bool = False  # print the expected token volume and time, generate nothing
    data_parallel: int = 1  # processes (one per GPU), each on a shard of the problems; results merged
    shard: tuple[int, int] | None = None  # (index, count): this process's share of the problems (set by data_parallel)
    data_parallel_of: int = 0  # recorded in the protocol when results are merged from shards
    gpu_memory_utilization: float = 0.9  # vllm
    max_model_len: int | None = None  # vllm: prompt + completion tokens (None: the model's maximum)


@dataclass(frozen=True)
class Candidate:
    """One model to evaluate: the base (adapter None) or the base with one adapter."""

    label: str
    adapter: Path | None = None
    step: int | None = None  # training step of a checkpoint-<step> folder


BASE = Candidate("base")


# ----------------------------------------------------------------------------------------------------- discovery
def run_checkpoints(run_dir: str | Path) -> list[Candidate]:
    """Every ``RUN/checkpoint-<step>/`` holding a PEFT adapter, oldest first."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        m = _CKPT.match(path.name)
        if m and (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file():
            found.append(Candidate(path.name, path, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def adapter_candidates(paths: list[str]) -> list[Candidate]:
    """Candidates for ``--adapter`` folders, labelled by folder name (``run/checkpoint-50`` if names collide)."""
    out, seen = [], Counter()
    folders = [Path(p) for p in paths]
    names = Counter(p.name for p in folders)
    for p in folders:
        if not (p / "adapter_config.json").is_file() or not any((p / w).is_file() for w in ADAPTER_WEIGHTS):
            raise TinaError(
                f"--adapter {p}: expected a PEFT adapter folder (adapter_config.json and "
                f"{' or '.join(ADAPTER_WEIGHTS)})"
            )
        label = p.name if names[p.name] == 1 else f"{p.parent.name}/{p.name}"
        seen[label] += 1
        if seen[label] > 1:
            label = f"{label}#{seen[label]}"
        m = _CKPT.match(p.name)
        out.append(Candidate(label, p, int(m.group(1)) if m else None))
    return out


def read_run_config(run_dir: str | Path) -> dict:
    """RUN/config.yaml as a plain dict ({} when absent); read loosely, only a few keys are used."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TinaError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    return data if isinstance(data, dict) else {}


def base_model_for(adapter_dir: str | Path) -> str | None:
    """The base model of an adapter: ``model.name_or_path`` of RUN/config.yaml next to it (portable: it keeps
    ``builtin:`` names and hub ids), else ``base_model_name_or_path`` of its adapter_config.json."""
    adapter_dir = Path(adapter_dir)
    name = (read_run_config(adapter_dir.parent).get("model") or {}).get("name_or_path")
    if name:
        return str(name)
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return cfg.get("base_model_name_or_path")


def sha256_files(folder: str | Path, names: tuple[str, ...] = ("adapter_config.json", *ADAPTER_WEIGHTS)) -> str:
    """sha256 over those of the named files that exist in a folder (name, then bytes, for each): the identity of an
    adapter."""
    h = hashlib.sha256()
    for name in names:
        if not (Path(folder) / name).is_file():
            continue
        h.update(name.encode())
        with open(Path(folder) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ adapter swapping
class AdapterSwitcher:
    """One base model in memory; adapters come and go in place -- the base is never reloaded.

    ``with switcher.use(path_or_None) as model:`` gives the model with exactly that adapter applied (None: the base).
    Two ways, the same results up to floating-point rounding:

    * ``merge=False``: PEFT ``load_adapter`` / ``set_adapter`` / ``delete_adapter`` (the previous adapter is deleted
      only once the new one is active); the base through PEFT's ``disable_adapter``.  The forward pass is the one
      training used, LoRA matmuls included.
    * ``merge=True``: the adapter is folded into the weights (PEFT ``merge_and_unload``), as Tina evaluated merged
      checkpoints; before the next adapter (or the base) the weights are restored bit for bit from a CPU copy taken
      at the first merge.  Generation runs at plain-model speed, for one CPU copy of the parameters.
    """

    def __init__(self, base, *, merge: bool = False):
        self.base = base
        self.merge = merge
        self.model = base  # unmerged: becomes a PeftModel with the first adapter
        self.active: str | None = None
        self.loaded_from: Path | None = None
        self._count = 0
        self._pristine: dict | None = None  # merged: name -> CPU copy of every base parameter

    @contextmanager
    def use(self, adapter: Path | None):
        adapter = Path(adapter) if adapter is not None else None
        if self.merge:
            if adapter != self.loaded_from:
                self._merge_in(adapter)
            yield self.base
            return
        if adapter is None:
            context = self.model.disable_adapter() if self.model is not self.base else nullcontext()
            with context:
                yield self.model
            return
        if self.loaded_from != adapter:
            self._swap(adapter)
        yield self.model

    def _swap(self, adapter: Path) -> None:
        name = f"adapter{self._count}"
        self._count += 1
        with _adapter_errors(adapter):
            if self.model is self.base:
                from peft import PeftModel

                self.model = PeftModel.from_pretrained(
                    self.base, str(adapter), adapter_name=name, low_cpu_mem_usage=True
                )
            else:
                self.model.load_adapter(str(adapter), adapter_name=name, low_cpu_mem_usage=True)
        if self.active is not None:
            self.model.set_adapter(name)
            self.model.delete_adapter(self.active)
        self.model.eval()
        self.active, self.loaded_from = name, adapter

    def _merge_in(self, adapter: Path | None) -> None:
        import torch
        from peft import PeftModel

        if self._pristine is None:
            self._pristine = {n: p.detach().to("cpu", copy=True) for n, p in self.base.named_parameters()}
        elif self.loaded_from is not None:
            with torch.no_grad():
                for n, p in self.base.named_parameters():
                    p.copy_(self._pristine[n])
        self.loaded_from = None
        if adapter is not None:
            probe = torch.tensor([[5, 17, 42, 99, 7, 3, 11, 64]], device=next(self.base.parameters()).device)
            probe = probe.clamp(max=self.base.config.vocab_size - 1)
            with _adapter_errors(adapter):
                wrapped = PeftModel.from_pretrained(self.base, str(adapter), low_cpu_mem_usage=True).eval()
                with torch.no_grad():
                    reference = wrapped(input_ids=probe).logits.float()  # base + adapter, unmerged
                    with wrapped.disable_adapter():
                        plain = wrapped(input_ids=probe).logits.float()  # the base alone
                merged = wrapped.merge_and_unload()
            if merged is not self.base:  # PEFT returns the wrapped model itself; anything else would be a copy
                raise RuntimeError(
                    "PEFT merge_and_unload returned a new model; merged adapter switching needs it "
                    "in place (use merge=False)"
                )
            self.base.eval()
            self.loaded_from = adapter
            with torch.no_grad():
                scale = reference.abs().max().clamp(min=1e-6)
                error = float((self.base(input_ids=probe).logits.float() - reference).abs().max() / scale)
                effect = float((reference - plain).abs().max() / scale)
            if error > MERGE_TOLERANCE:
                raise TinaError(
                    f"merging {adapter} changes the model's logits by {error:.2e} (relative, on a probe "
                    f"batch), above {MERGE_TOLERANCE:g}; evaluate it unmerged (drop --merge-adapters)"
                )
            # an update smaller than the merge's rounding would pass the check above even if the merge dropped it
            if error > MERGE_SIGNAL_FRACTION * effect:
                raise TinaError(
                    f"merging {adapter} changes the model's logits by {error:.2e} (relative, on a probe "
                    f"batch), more than {MERGE_SIGNAL_FRACTION:g} x the adapter's own effect on them "
                    f"({effect:.2e}): the update is too small to survive merging; evaluate it unmerged "
                    "(drop --merge-adapters)"
                )


@contextmanager
def _adapter_errors(adapter: Path):
    """Loading an adapter that is missing, corrupt or made for another model is a one-line TinaError."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
        raise TinaError(
            f"cannot load adapter {adapter}: {' '.join(lines[:2])[:300]} (is it a complete PEFT "
            f"adapter of this base model?)"
        ) from None


# --------------------------------------------------------------------------------------------------- statistics
def summarize(correct: np.ndarray, *, seeds: list[int], samples: int, resamples: int = 2000) -> dict:
    """Statistics of one model on one benchmark from its correctness matrix [problems, seeds * samples].

    Columns are grouped by seed (seed 0's samples first).  Ungradable entries (nan) count as incorrect and are
    counted in ``n_ungradable``.

    >>> s = summarize(np.array([[1.0, 0.0], [1.0, 1.0]]), seeds=[0], samples=2)
    >>> s["mean"], s["pass_at_k"], s["n_samples"]
    (0.75, {'1': 0.75, '2': 1.0}, 2)
    """
    from tina.eval.stats import bootstrap_ci, mean_at_n, pass_at_k_all

    n_problems, n_samples = correct.shape
    per_seed = {str(s): mean_at_n(correct[:, i * samples : (i + 1) * samples]) for i, s in enumerate(seeds)}
    return {
        "mean": mean_at_n(correct),
        "ci95": list(bootstrap_ci(correct, resamples=resamples, seed=0)),
        "pass_at_k": {str(k): v for k, v in pass_at_k_all(correct).items()},
        "per_seed_mean": per_seed,
        "n_problems": int(n_problems),
        "n_samples": int(n_samples),  # completions per problem = samples x seeds
        "n_completions": int(n_problems * n_samples),
        "seeds": list(seeds),
        "n_ungradable": int(np.isnan(correct).sum()),
    }


def paired(baseline: np.ndarray, other: np.ndarray, *, label: str, resamples: int = 2000) -> dict:
    """Paired difference (other - baseline) with its 95% bootstrap CI over problems."""
    from tina.eval.stats import paired_bootstrap_ci

    diff, low, high = paired_bootstrap_ci(baseline, other, resamples=resamples, seed=0)
    return {"baseline": label, "diff": diff, "ci95": [low, high]}


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


# ---------------------------------------------------------------------------------------------------- the ledger
def add_eval_cost(
    run_dir: str | Path,
    seconds: float,
    num_devices: int | None = None,
    *,
    label: str | None = None,
    extra: dict | None = None,
) -> dict | None:
    """Book ``seconds`` of evaluation into RUN/ledger.json, if the run has one; return the updated ledger.

    ``phases.evaluation`` and ``wall_seconds`` grow by ``seconds``, ``device_hours`` by
    ``num_devices * seconds / 3600`` (default: the ledger's own ``num_devices``) and ``usd`` is recomputed as
    ``device_hours * usd_per_device_hour``; ``evaluation`` holds the totals ``{"seconds", "device_hours", "usd",
    "runs"}``.  The bookkeeping lives in `tina.ledger.add_eval_cost` (an append-only RUN/eval_costs.jsonl, so an
    evaluation that runs beside a training process never overwrites its cost, nor the other way round).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "ledger.json").write_text(json.dumps({"wall_seconds": 3600, "phases": {"evaluation": 0},
    ...     "num_devices": 2, "device_hours": 2.0, "usd_per_device_hour": 1.5, "usd": 3.0}))
    >>> add_eval_cost(d, 1800)["usd"]      # 2 devices x 0.5 h more at $1.5
    4.5
    """
    from tina.ledger import add_eval_cost as book

    return book(run_dir, seconds, num_devices, label=label, extra=extra)


# ----------------------------------------------------------------------------------------------------- protocol
def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import tina

    out = {"tina": tina.__version__, "python": platform.python_version()}
    for dist in ("transformers", "torch", "peft", "math-verify", "numpy", "datasets"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def grader_digest() -> str:
    """sha256 of the grader's source files: a changed grader gives a different digest in results.json."""
    import tina.grading

    h = hashlib.sha256()
    for path in sorted(Path(tina.grading.__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- generation
def benchmark_seed(seed: int, benchmark: str) -> int:
    """The sampling seed of one benchmark under a user seed: ``row_seed(seed, first 7 bytes of sha256(name))``.

    Every model gets the same streams on a benchmark (paired comparisons compare like with like), while problem i
    of two benchmarks does not share its random stream.  Completion j of problem i draws from
    ``row_seed(0, row_seed(benchmark_seed, i), j)`` (tina.rollout.sampling; :func:`stream_key`), whatever the batch
    size, the engine's batching, the number of processes or an interruption.

    >>> benchmark_seed(0, "aime24") == benchmark_seed(0, "aime24") != benchmark_seed(0, "aime25")
    True
    """
    from tina.rollout.sampling import row_seed

    return row_seed(seed, int.from_bytes(hashlib.sha256(benchmark.encode()).digest()[:7], "big"))


def stream_key(seed: int, benchmark: str, problem: int) -> int:
    """The key of problem ``problem`` of a benchmark under a user seed (one engine call can hold every seed)."""
    from tina.rollout.sampling import row_seed

    return row_seed(benchmark_seed(seed, benchmark), problem)


def eval_sampling(opts: EvalOptions) -> Sampling:
    """What every completion of an evaluation samples: exactly the flags (``--temperature 0``: greedy), nothing else.

    Greedy decoding keeps temperature 1 inside the engine: it only scales the log-probabilities reported with the
    tokens, and dividing the logits by 0 would turn them into inf/nan (whose argmax is garbage).

    >>> eval_sampling(EvalOptions(temperature=0)).temperature, eval_sampling(EvalOptions(temperature=0)).greedy
    (1.0, True)
    """
    greedy = opts.temperature == 0
    return Sampling(
        n=opts.samples,
        max_new_tokens=opts.max_new_tokens,
        temperature=1.0 if greedy else opts.temperature,
        top_p=1.0 if greedy else opts.top_p,
        top_k=0,
        greedy=greedy,
        seed=0,
    )


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
    if opts.backend not in ("hf", "vllm"):
        raise TinaError(
            f"--backend: unknown engine '{opts.backend}'{did_you_mean(opts.backend, ['hf', 'vllm'])}; choose hf or vllm"
        )
    if opts.backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:  # before anything is read or written
            from tina.rollout.engines import VLLM_INSTALL

            raise TinaError(f"--backend vllm needs vLLM, which is not installed: {VLLM_INSTALL}; or use --backend hf")
    if opts.backend == "vllm" and opts.merge_adapters:
        raise TinaError("--merge-adapters is for --backend hf; vLLM serves every checkpoint as a LoRA request")
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
    validation = _validation_set(opts, benches) if opts.select_on else None
    if opts.dry_run:
        from tina.eval.cost import dry_run

        return dry_run(opts, model_name, adapters, include_base, benches, validation, out, echo=echo)
    if opts.data_parallel > 1:
        from tina.eval.parallel import run_data_parallel

        return run_data_parallel(opts, out, echo=echo)

    from tina.eval.serving import Server

    out.mkdir(parents=True, exist_ok=True)
    check_state(out, {**asdict(opts), "model": model_name}, resume=opts.resume)
    server = Server(opts, model_name, adapters)
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
                selection, chosen = _select(session, validation, adapters, include_base, opts)
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


def protocol(opts: EvalOptions, model_name: str, server) -> dict:
    """The protocol block shared by every (model, benchmark) entry of results.json."""
    from tina.models import base_weights_digest, resolve_model_path

    model = server.model
    return {
        "model": model_name,
        "model_path": resolve_model_path(model_name) if model_name.startswith("builtin:") else model_name,
        "model_revision": getattr(model.config, "_commit_hash", None) if model is not None else None,
        "base_weights_sha256": base_weights_digest(model) if model is not None else None,
        "base_files_sha256": None if model is not None else sha256_files(server.path, weight_files(server.path)),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else opts.dtype,
        "device": str(next(model.parameters()).device) if model is not None else "vllm",
        "engine": server.engine_name,
        "adapters": (
            "merged into float32 weights, checked against the unmerged model (max relative logit "
            f"difference {MERGE_TOLERANCE:g}, and at most {MERGE_SIGNAL_FRACTION:g} x the adapter's own "
            "effect on the logits); base restored exactly between adapters"
        )
        if opts.merge_adapters
        else "unmerged LoRA (never merged into the weights)",
        "chat_template": opts.template,
        "chat_template_sha256": hashlib.sha256(
            (getattr(server.tokenizer, "chat_template", None) or "").encode()
        ).hexdigest(),
        "sampling": _sampling_protocol(opts, server),
        "grader": {
            "name": "tina.grading",
            "source_sha256": grader_digest(),
            "timeout_seconds": opts.grader_timeout,
            "extraction": "lenient (boxed, then answer phrases, then the last math span, final answer part "
            "only); hedged and unfinished (truncated or thinking never closed) answers are wrong",
            "ungradable": "counted as incorrect in mean/pass@k; reported as n_ungradable",
        },
        "statistics": {
            "ci": "95% percentile bootstrap over problems",
            "resamples": opts.bootstrap_resamples,
            "pass_at_k": "unbiased (Chen et al. 2021) over samples x seeds",
            "bootstrap_seed": 0,
        },
        "versions": library_versions(),
    }


def _sampling_protocol(opts: EvalOptions, server) -> dict:
    """The sampling settings as run: the flags, what the engine applied, and where each completion's randomness is."""
    sampling = eval_sampling(opts)
    if server.backend == "vllm":
        streams = (
            "vLLM's own sampler, one request per completion: completion j of problem i under seed s is seeded "
            "with row_seed(0, row_seed(benchmark_seed(s, benchmark), i), j) & 0x7FFFFFFF (tina.rollout.vllm, "
            "tina.eval.runner.stream_key), the same for every model, batch size (max_num_seqs) and process "
            "count, and after a resume; not the hf engine's streams"
        )
    else:
        streams = (
            "batch-invariant: completion j of problem i under seed s draws from row_seed(0, "
            "row_seed(benchmark_seed(s, benchmark), i), j) (tina.rollout.sampling, "
            "tina.eval.runner.stream_key), the same for every model, batch size and process count, and after "
            "a resume"
        )
    return {
        "samples": opts.samples,
        "seeds": list(opts.seeds),
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "top_k": sampling.top_k,
        "max_new_tokens": opts.max_new_tokens,
        "greedy": sampling.greedy,
        "batch_size": opts.batch_size,
        "processors": sampling.protocol()["processors"],
        "generation_config": "not applied: no repetition penalty, n-gram blocking, top-k or minimum length from "
        "the model folder; only its end-of-sequence ids",
        "eos_token_ids": server.eos_ids,
        "streams": streams,
    }


def weight_files(folder: str | Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in Path(folder).glob("*.safetensors")))


def _validation_set(opts: EvalOptions, benches: list[Benchmark]) -> Benchmark:
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


def _select(session: Session, val: Benchmark, adapters: list[Candidate], include_base: bool, opts: EvalOptions):
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
