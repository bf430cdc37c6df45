"""The life of a training run around its steps: run directory, processes, model and optimizer, resume, checkpoints,
logs, signals, aborts.  The step itself is in :mod:`tina.train`; it uses a :class:`Run` like this::

    run = Run.open(cfg, run_dir, resume=..., ...)    # RUN/, processes, ledger, model + LoRA, optimizer, resume point
    with run:                                        # SIGINT/SIGTERM, progress bar; ledger and trackers on exit
        for step in run.steps():                     # stops after the current step when asked to
            ...                                      # the step (tina.train)
            run.end_step(step, out, ...)             # metrics.jsonl, bad-step accounting, checkpoint, ledger
    return run.result()

Checkpoints are atomic and hold everything a bit-exact resume needs (adapter, optimizer, scheduler, every RNG,
sampler position, metrics and ledger copies); ``--resume`` falls back past a damaged checkpoint; SIGINT/SIGTERM stop
gracefully after the current step; non-finite steps are skipped and, after ``train.max_bad_steps`` in a row, the run
stops with the last good state checkpointed; write errors (a full disk) are one-line errors that leave earlier
checkpoints intact.  Determinism: everything random is drawn from the global torch, python and numpy RNGs (which are
checkpointed) or from keyed streams; the probe completion restores them; wall-time values (``seconds``, ``usd``, ...)
are only logged, never fed back into training.  Bit-exact resume needs the same hardware, library versions and thread
count as the original run.
"""

from __future__ import annotations

import copy
import errno
import json
import shlex
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tina import batch, distributed
from tina import config as cfgmod
from tina.build import (
    advance_schedule,
    build_model,
    make_optimizer,
    make_scheduler,
    render_probe,
    resolve_pass_tokens,
    seed_everything,
)
from tina.checkpoint import (
    clean_partial,
    latest_valid_checkpoint,
    list_checkpoints,
    load_adapter_weights,
    load_trainer_state,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tina.config import Config
from tina.console import say
from tina.errors import TinaError
from tina.files import append_jsonl, atomic_write_text, read_jsonl
from tina.ledger import Ledger, adopt_untracked_eval, read_eval_costs, read_ledger
from tina.models import base_weights_digest, count_parameters
from tina.problems import PromptSampler, load_problems, render_prompts
from tina.records import postfix, step_record
from tina.rewards import RewardSpec
from tina.rollout import Sampling
from tina.signals import GracefulStop
from tina.trackers import Windowed, check_available

# Keys that may differ when a run is resumed: none of them changes which prompts, samples or updates a step sees.
RESUMABLE_CHANGES = (
    "train.stop_step",
    "train.save_steps",
    "train.save_total_limit",
    "train.logging_steps",
    "train.report_to",
    "train.max_bad_steps",
    "train.probe_prompt",
    "train.probe_max_new_tokens",
    "train.logprob_memory_mb",
    "train.max_tokens_per_pass",
    "rollout.check_engine",
    "rollout.canary_tolerance",
    "rollout.max_logp_diff",
    "rollout.gpu_memory_utilization",
    "rollout.vllm_sleep",
    "cost.",
    "eval.",
)
BASE_FILE = "tina_base.json"  # in every checkpoint: the base model's name, dtype and weights digest


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    metrics: list[dict]
    trainable_params: int
    total_params: int
    base_digest_before: str
    base_digest_after: str
    model: object = None
    tokenizer: object = None
    stopped_early: bool = False
    stop_reason: str | None = None  # "SIGINT" / "SIGTERM" when stopped early
    resume_command: str = ""
    engine_info: dict = field(default_factory=dict)  # what the rollout engine reports of itself (tina doctor shows it)


@dataclass
class RunState:
    """What the loop carries from step to step besides the model, optimizer, scheduler and sampler."""

    history: list[dict] = field(default_factory=list)
    buffer: list = field(default_factory=list)  # micro-batches (tina.batch.MicroBatch) reused while num_iterations > 1
    bad_in_row: int = 0


@dataclass
class Snapshot:
    """The small, fast-changing part of the state after a step (model and optimizer are saved from memory)."""

    step: int
    n_history: int
    rng: dict
    sampler: dict
    scheduler: dict
    buffer: list
    bad_in_row: int


class Run:
    """One training run's lifecycle; see the module docstring."""

    def __init__(self, cfg: Config, run_dir: Path, *, progress: bool):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.engine = self.handover = None  # the rollout engine (attach_engine); the probe generates through it too
        self.ahead = None  # rollouts generated ahead by workers (tina.ahead.RolloutsAhead), when rollout.devices
        self.restored_ahead: list[dict] = []  # ... as a resumed checkpoint holds them
        self.published = None  # the adapter version last handed to the engine
        # the content check of the served adapter (check_content): the probe (prompt, completion token ids), the
        # trainer's probe log-probs under the base and under the last adapter version checked, this step's metrics
        self.probe: tuple[list[int], list[int]] | None = None
        self.probe_base: torch.Tensor | None = None
        self.probe_previous: tuple[int, torch.Tensor] | None = None
        self.probe_metrics: dict = {}

    # ---------------------------------------------------------------------------------------------------- open
    @classmethod
    def open(
        cls,
        cfg: Config,
        run_dir: str | Path,
        *,
        resume: bool = False,
        progress: bool = True,
        started_at: float | None = None,
    ) -> Run:
        """Create or resume RUN/, start the process group and the ledger, build the model (base + LoRA), the
        optimizer, scheduler and prompt sampler, and restore a checkpoint when resuming."""
        self = cls(cfg, Path(run_dir), progress=progress)
        t = cfg.train
        self.dist = dist = distributed.init(
            cpu=t.device == "cpu" or not torch.cuda.is_available(), timeout_s=t.collective_timeout
        )
        self.main = dist.is_main  # only the main process writes files
        self.per_micro = t.batch_size // cfg.rollout.num_generations  # prompts per micro-batch, over all processes
        if self.per_micro % dist.world_size:
            from tina.errors import ConfigError

            raise ConfigError(
                f"train.batch_size: {self.per_micro} prompts per micro-batch do not split over "
                f"{dist.world_size} processes; use a multiple of "
                f"{dist.world_size * cfg.rollout.num_generations} completions"
            )
        if (cfg.rollout.devices or cfg.rollout.servers) and dist.world_size > 1:
            from tina.errors import ConfigError

            raise ConfigError(
                f"rollout.devices / rollout.servers: rollout workers serve one training process, and this run has "
                f"{dist.world_size}; train in one process (no accelerate launch), or leave them empty"
            )
        self.resume_cmd = resume_command(self.run_dir)
        point = None
        if self.main:
            check_available(t.report_to)  # a missing tracker package fails before anything is loaded
            with self.writing("config.yaml"):
                point = prepare_run_dir(self.run_dir, cfg, resume=resume)
        self.start_step = int(dist.sum([point[0] if point else 0])[0])  # every process resumes from main's choice
        point = (self.start_step, self.run_dir / f"checkpoint-{self.start_step}") if self.start_step else None
        prior = (read_ledger(self.run_dir) or (read_ledger(point[1]) if point else None)) if resume else None
        if self.main:
            with self.writing("eval_costs.jsonl"):
                adopt_untracked_eval(self.run_dir, prior)
        # the devices this run uses (cost.num_devices only feeds the estimate printed before a run)
        self.ledger = Ledger(
            num_devices=dist.world_size + sum(d.startswith("cuda") for d in cfg.rollout.devices),  # + GPU workers
            usd_per_device_hour=cfg.cost.usd_per_device_hour,
            device_name=cfg.cost.device_name,
            prior=prior,
            started_at=started_at,
        )
        seed_everything(t.seed + dist.rank)  # sampling is keyed; these only seed e.g. LoRA dropout

        with self.ledger.phase("setup"):
            rows, holdout = load_problems(cfg)  # an unreadable dataset fails before the model is loaded
            self.model, self.tokenizer, self.digest_before = build_model(
                cfg, device=str(dist.device) if dist.enabled else None
            )
            self.device = next(self.model.parameters()).device
            self.cfg = cfg = resolve_pass_tokens(cfg, self.model, say_it=self.main and progress)
            self.base_dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
            self.trainable, self.total = count_parameters(self.model)
            self.problems = render_prompts(rows, self.tokenizer, cfg)
            self.specs = [RewardSpec(rw.name, rw.weight, dict(rw.params)) for rw in cfg.rewards]
            self.optimizer = make_optimizer(self.model, t)
            self.scheduler = make_scheduler(self.optimizer, t)
            self.sampler = PromptSampler(len(self.problems), t.seed)
            saved = load_trainer_state(point[1]) if point else None
            self.state = self._restore(point[1], saved) if point else RunState()
            self.train_model, self.optimizer = dist.prepare(self.model, self.optimizer, max_grad_norm=t.max_grad_norm)
            if point and dist.optimizer_format != "torch":  # sharded/partitioned state: loaded into the wrapped one
                dist.load_optimizer_state(self.model, self.optimizer, saved["optimizer"])
            self.probe_ids = render_probe(cfg, self.tokenizer)
            self.trackers = Windowed(
                t.report_to if self.main else [],
                self.run_dir,
                cfgmod.to_dict(cfg),
                start_step=self.start_step,
                every=t.logging_steps,
            )
            if self.main:
                with self.writing("metrics.jsonl"):
                    start_logs(self.run_dir, self.state.history, holdout, self.start_step)
            dist.barrier()
        self.last = cfg.last_step
        self.stop = GracefulStop()
        self.stopped_at: int | None = None
        self.good = self.snapshot(self.start_step)  # the last state reached by a finite update
        return self

    # ----------------------------------------------------------------------------------------------- the steps
    def __enter__(self) -> Run:
        if self.start_step >= self.last and self.main:
            say(f"{self.run_dir} is already complete ({self.start_step} of {self.last} steps); nothing to train")
        self.bar = progress_bar(self.start_step, self.last, enabled=self.progress and self.main)
        self.stop.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stop.__exit__(exc_type, exc, tb)
        self.bar.close()
        self.trackers.close()
        try:
            if self.main:
                self.ledger.write(self.run_dir)
        except OSError:
            pass  # the error that got us here (a full disk) has already been reported
        if exc_type is KeyboardInterrupt:
            done = list_checkpoints(self.run_dir)
            where = f"the last checkpoint is {done[-1][1].name}" if done else "no checkpoint was written"
            say(f"aborted; {where}; resume with: {self.resume_cmd}")
        return False

    def attach_engine(self, engine, handover) -> None:
        self.engine, self.handover = engine, handover

    def publish(self, version: int):
        """The adapter as it is now, published for the engine as ``version`` (the number of updates so far)."""
        state = self.dist.adapter_state(self.model) if self.handover.folder is not None else None  # FSDP: gathered
        self.published = self.handover.publish(self.model, version, state=state)
        return self.published

    def check_content(self, step: int, rollout) -> None:
        """Check *what* the engine serves, at every step that generates (inside the rollout's gathered block: FSDP
        needs the full weights): the engine and the trainer score one fixed probe, and the engine's log-probs must be
        clearly closer to the trainer's under the adapter just handed over (v``step``) than to those under the
        previous version handed over, or under the base model, whenever those differ by more than the numerical
        noise (:func:`tina.rollout.agreement.probe_verdict`); else the run stops in one line.  The version numbers
        that :func:`~tina.rollout.agreement.check_served` compares are set by the engine wrapper itself, and a
        one-step-stale adapter is far inside ``rollout.max_logp_diff``: this looks at the served weights.

        The probe is chosen once (:func:`~tina.rollout.agreement.choose_probe`, from the main process's first
        rollout; kept in checkpoints, with the last log-probs, so a resumed run checks and logs as an uninterrupted
        one).  Cost per step: one forward of ~100 tokens on each side.  On for engines that hold their own weights
        (adapters handed over through a folder: vllm) when ``rollout.check_engine``; the ``hf`` engine *is* the
        trainer's model -- nothing can go stale, and the check would compare the model with itself.  Eval mode and
        no gradients: no random number is drawn and training is unchanged."""
        if not self.checks_content():
            return
        from tina.rollout.agreement import choose_probe

        if self.probe is None:  # the same probe on every process (its trainer log-probs are then the same too)
            self.probe = self.dist.all_gather_object(choose_probe(rollout))[0]
        current = self.trainer_probe()  # [1, T]
        with self.ledger.phase("logprob"):
            served = self.engine.score([self.probe[0]], [self.probe[1]]).float()  # [1, T]
        self.judge_probe(step, served, current)

    def checks_content(self) -> bool:
        """Whether the content probe runs: engines with their own weights (a folder handover), check_engine on."""
        return self.cfg.rollout.check_engine and self.handover is not None and self.handover.folder is not None

    def trainer_probe(self) -> torch.Tensor:
        """[1, T] the trainer's log-probs of the probe under the adapter as it is now (the base's scored once)."""
        from tina.rollout.agreement import score_with_model

        prompts, completions = [self.probe[0]], [self.probe[1]]
        with self.ledger.phase("logprob"):
            if self.probe_base is None:  # the base never changes: scored once
                self.probe_base = score_with_model(self.model, prompts, completions, base=True)  # [1, T]
            return score_with_model(self.model, prompts, completions)  # [1, T]

    def judge_probe(self, version: int, served: torch.Tensor, current: torch.Tensor) -> None:
        """The content verdict for adapter v``version``: the engine's probe log-probs (``served``) against the
        trainer's under that version (``current``), the previous version judged and the base; a wrong one stops the
        run on every process in one line.  Versions are judged in increasing order."""
        from tina.rollout.agreement import probe_noise, probe_verdict

        previous = (
            self.probe_previous if self.probe_previous is not None and self.probe_previous[0] != version else None
        )
        noise = self.cfg.rollout.canary_tolerance or probe_noise(next(self.model.parameters()).dtype)
        metrics, problem = probe_verdict(
            served,
            current,
            torch.ones_like(current),
            noise=noise,
            version=version,
            previous=None if previous is None else previous[1],
            previous_version=None if previous is None else previous[0],
            base=self.probe_base,
            engine=self.engine.name,
        )
        if self.dist.broadcast_flag(problem is not None):  # every process stops at once
            raise TinaError(
                problem
                or f"adapter v{version}: another process's {self.engine.name} engine does not "
                "serve the trainer's adapter (see its error); the run stops here"
            )
        self.probe_previous, self.probe_metrics = (version, current), metrics

    def steps(self):
        """Step indices from the resume point to the last step; ends early after a graceful stop."""
        for step in range(self.start_step, self.last):
            yield step
            if self.stopped_at is not None:
                return

    def draw(self, step: int) -> list[tuple[int, int]]:
        """This process's prompts for ``step``: (problem index, key) pairs, micro-batch after micro-batch.

        Every process draws the same global prompts and keeps its contiguous share; the key (the prompt's position
        in the global order of the run) names its random stream, so completions do not depend on the process count
        or on how the step is split into micro-batches."""
        t, share = self.cfg.train, self.dist.share(self.per_micro)
        out = []
        for micro in range(t.gradient_accumulation_steps):
            chosen = self.sampler.take(self.per_micro)[share]
            first = (step * t.gradient_accumulation_steps + micro) * self.per_micro + share.start
            out += [(i, first + j) for j, i in enumerate(chosen)]
        return out

    def draw_more(self, step: int, round_: int) -> list[tuple[int, int]]:
        """More prompts for ``step`` (dynamic sampling's refill round ``round_`` >= 1): one step's worth, this
        process's share, with keys that no regular draw uses."""
        from tina.rollout.sampling import row_seed

        t, share = self.cfg.train, self.dist.share(self.per_micro)
        out = []
        for micro in range(t.gradient_accumulation_steps):
            chosen = self.sampler.take(self.per_micro)[share]
            out += [
                (i, row_seed(-1, step, round_, micro * self.per_micro + share.start + j)) for j, i in enumerate(chosen)
            ]
        return out

    def end_step(self, step: int, out: dict, rollout_metrics: list[dict], step_start: float) -> None:
        """After the update of 0-based ``step``: schedule, metrics.jsonl, bad steps, checkpoint, ledger."""
        n, t, dist = step + 1, self.cfg.train, self.dist
        lr = self.optimizer.param_groups[0]["lr"]
        advance_schedule(self.scheduler)  # a skipped step still counts, so the schedule stays on the step clock
        out = {**out, **self.pop_probe_metrics()}
        record = step_record(n, rollout_metrics, out, lr, time.perf_counter() - step_start, self.ledger, dist)
        self.state.history.append(record)
        if self.main:
            with self.writing("metrics.jsonl"):
                append_jsonl(self.run_dir / "metrics.jsonl", record)
        self.trackers.log(record)
        self.state.bad_in_row = self.state.bad_in_row + 1 if out["skipped"] else 0
        snap = self.snapshot(n)
        if out["skipped"] and self.main:
            say(
                f"warning: step {n}: non-finite loss or gradient; update skipped "
                f"({self.state.bad_in_row}/{t.max_bad_steps} in a row)"
            )
        if self.state.bad_in_row >= t.max_bad_steps:
            self.abort_bad_steps(n)
        if not out["skipped"]:
            self.good = snap
        stopping = dist.broadcast_flag(self.stop.requested) and n < self.last  # every process stops at one step
        if n % t.save_steps == 0 or n == self.last or stopping:
            with self.ledger.phase("checkpoint"), self.writing(f"checkpoint-{n}"):
                self.write_checkpoint(snap)
        if self.main:
            with self.writing("ledger.json"):
                self.ledger.write(self.run_dir)
        self.bar.update(1)
        self.bar.set_postfix_str(postfix(record))
        if stopping:
            self.stopped_at = n
            if self.main:
                say(
                    f"stopped by {self.stop.reason} after step {n}; saved checkpoint-{n}. Resume with:\n  "
                    f"{self.resume_cmd}"
                )

    def pop_probe_metrics(self) -> dict:
        """This step's content-check metrics (none at steps that reuse a rollout), averaged over the processes."""
        metrics, self.probe_metrics = self.probe_metrics, {}
        keys = sorted(metrics)
        flat = self.dist.sum([x for k in keys for x in ((metrics[k] or 0.0), float(metrics[k] is not None))])
        return {k: flat[2 * i] / flat[2 * i + 1] if flat[2 * i + 1] else None for i, k in enumerate(keys)}

    def result(self, *, keep_model: bool = False) -> TrainResult:
        digest_after = base_weights_digest(self.model)
        stopped = self.stopped_at is not None
        return TrainResult(
            self.run_dir,
            len(self.state.history),
            self.state.history,
            self.trainable,
            self.total,
            self.digest_before,
            digest_after,
            self.model if keep_model else None,
            self.tokenizer if keep_model else None,
            stopped,
            self.stop.reason if stopped else None,
            self.resume_cmd,
        )

    # ------------------------------------------------------------------------------------------- checkpoints
    def snapshot(self, step: int) -> Snapshot:
        s = self.state
        return Snapshot(
            step,
            len(s.history),
            rng_state(),
            self.sampler.state(),
            copy.deepcopy(self.scheduler.state_dict()),
            list(s.buffer),
            s.bad_in_row,
        )

    def write_checkpoint(self, snap: Snapshot) -> Path | None:
        """Probe completion, then checkpoint-<step>/ (adapter, trainer state, metrics and ledger copies), then prune.

        Called on every process (each contributes its RNG state); only the main process writes."""
        dist, cfg, model = self.dist, self.cfg, self.model
        rngs = dist.all_gather_object(snap.rng)
        adapter = dist.adapter_state(model)  # FSDP: the full LoRA tensors (every process takes part); else None
        optimizer_state = dist.optimizer_state(model, self.optimizer)
        completion = self.run_probe(snap.step)
        if not dist.is_main:
            dist.barrier()
            return None
        if completion is not None:
            append_jsonl(
                self.run_dir / "probes.jsonl", {"step": snap.step, "prompt": cfg.train.probe_prompt, **completion}
            )
        trainer_state = {
            "step": snap.step,
            "optimizer": optimizer_state,
            "optimizer_format": dist.optimizer_format,
            "scheduler": snap.scheduler,
            "rng": snap.rng,
            "rng_by_rank": rngs if dist.enabled else [],
            "sampler": snap.sampler,
            "bad_in_row": snap.bad_in_row,
            "buffer": [batch.state(mb) for mb in snap.buffer] if cfg.algorithm.num_iterations > 1 else [],
            # rollouts generated ahead (rollout.max_staleness): the resumed run trains on exactly these
            "ahead": self.ahead.state() if self.ahead is not None else [],
            "content_probe": None
            if self.probe is None
            else {  # check_content goes on after a resume as before
                "prompt": self.probe[0],
                "completion": self.probe[1],
                "previous": None if self.probe_previous is None else list(self.probe_previous),
            },
        }
        extra = {
            "metrics.jsonl": "".join(json.dumps(h) + "\n" for h in self.state.history[: snap.n_history]),
            "ledger.json": json.dumps(self.ledger.to_dict(read_eval_costs(self.run_dir)), indent=2),
            # the base this adapter belongs to: tina eval refuses another base (same shapes, other weights)
            BASE_FILE: json.dumps(
                {"model": cfg.model.name_or_path, "dtype": self.base_dtype, "base_weights_sha256": self.digest_before},
                indent=2,
            ),
        }
        try:
            path = save_checkpoint(self.run_dir, snap.step, model, trainer_state, extra, state_dict=adapter)
            prune_checkpoints(self.run_dir, cfg.train.save_total_limit)
        finally:
            dist.barrier()  # the others wait until the checkpoint is complete
        return path

    def run_probe(self, step: int) -> dict | None:
        """Greedy completion of the probe prompt through the engine, with the adapter as it is after ``step``
        (never longer than a rollout); every RNG is restored, so the training stream is undisturbed.  Under FSDP the
        main process alone generates, from gathered weights."""
        if self.probe_ids is None or self.engine is None:
            return None
        budget = min(self.cfg.train.probe_max_new_tokens, self.cfg.rollout.max_new_tokens)
        saved = rng_state()
        completion = None
        try:
            with self.dist.gathered(self.model):
                self.engine.load_adapter(self.publish(step))  # every process: each has its own engine
                if self.dist.is_main:
                    r = self.engine.generate([self.probe_ids], Sampling(n=1, max_new_tokens=budget, greedy=True))
                    completion = {
                        "completion": r.texts[0],
                        "tokens": int(r.lengths[0]),
                        "truncated": bool(r.truncated[0]),
                    }
        finally:
            set_rng_state(saved)
        return completion

    def _restore(self, ckpt: Path, ts: dict) -> RunState:
        """Load a checkpoint (``ts``: its trainer state) into the freshly built objects; return the run's history.

        Under FSDP and DeepSpeed the optimizer state is loaded after wrapping (see ``open``), not here."""
        from peft import set_peft_model_state_dict

        dist = self.dist
        result = set_peft_model_state_dict(self.model, load_adapter_weights(ckpt))
        if getattr(result, "unexpected_keys", None):
            raise TinaError(
                f"{ckpt.name}: the adapter does not fit this model/LoRA config (unexpected "
                f"{', '.join(result.unexpected_keys[:3])})"
            )
        written = ts.get("optimizer_format", "torch")
        if written != dist.optimizer_format:
            engines = {"torch": "a single-process or DDP", "by-name": "an FSDP", "deepspeed-by-rank": "a DeepSpeed"}
            raise TinaError(
                f"{ckpt.name} was written by {engines.get(written, written)} run and cannot be resumed by "
                f"{engines[dist.optimizer_format]} run; resume with the run's own --accelerate-config"
            )
        if written == "torch":
            self.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        self.sampler.load_state(ts["sampler"])
        by_rank = ts.get("rng_by_rank") or []
        set_rng_state(by_rank[dist.rank] if dist.rank < len(by_rank) else ts["rng"])
        probe = ts.get("content_probe")
        if probe:
            self.probe = (list(probe["prompt"]), list(probe["completion"]))
            self.probe_previous = (
                None if probe["previous"] is None else (int(probe["previous"][0]), probe["previous"][1])
            )
        copy_path = ckpt / "metrics.jsonl"
        history = read_jsonl(copy_path if copy_path.is_file() else self.run_dir / "metrics.jsonl")
        history = [h for h in history if h.get("step", 0) <= ts["step"]]
        buffer = [batch.from_state(mb, self.device) for mb in ts.get("buffer", [])]
        self.restored_ahead = list(ts.get("ahead") or [])
        return RunState(history, buffer, int(ts.get("bad_in_row", 0)))

    def abort_bad_steps(self, step: int):
        """Too many non-finite steps in a row: checkpoint the last good state (skipped steps changed neither the
        adapter nor the optimizer) and stop with a clear message."""
        good, cfg = self.good, self.cfg
        message = (
            f"stopped: {cfg.train.max_bad_steps} steps in a row (up to step {step}) had a non-finite loss or gradient; "
        )
        if good.step == 0:
            raise TinaError(
                message + "no step had a finite loss, so there is nothing to checkpoint. Lower "
                "train.learning_rate or check the rewards and the model"
            )
        if good.step not in {s for s, _ in list_checkpoints(self.run_dir)}:
            with self.ledger.phase("checkpoint"), self.writing(f"checkpoint-{good.step}"):
                self.write_checkpoint(good)
        raise TinaError(
            message + f"the last good state is checkpoint-{good.step}. Lower train.learning_rate or "
            "check the rewards; to go on from the good state, start a new run with "
            f"lora.init_adapter={self.run_dir / f'checkpoint-{good.step}'}"
        )

    @contextmanager
    def writing(self, what: str):
        """Turn an OSError while writing run files (full disk, read-only, permissions) into a one-line TinaError."""
        try:
            yield
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = "the disk is full" if full else (exc.strerror or str(exc))
            done = list_checkpoints(self.run_dir) if self.run_dir.is_dir() else []
            kept = f"{done[-1][1].name} is intact" if done else "no checkpoint had been written yet"
            fix = "free some space" if full else "fix the problem"
            raise TinaError(
                f"cannot write {what} in {self.run_dir}: {reason} ({exc.strerror or exc}); {kept}; {fix}, "
                f"then resume with: {self.resume_cmd}"
            ) from None


# ---------------------------------------------------------------------------------------------------------- setup


def resume_command(run_dir: Path) -> str:
    """The exact command that continues this run (its own resolved config.yaml always matches)."""
    return (
        f"tina train {shlex.quote(str(Path(run_dir) / 'config.yaml'))} --output-dir "
        f"{shlex.quote(str(run_dir))} --resume"
    )


def prepare_run_dir(run_dir: Path, cfg: Config, *, resume: bool) -> tuple[int, Path] | None:
    """Create RUN/, check a resume is possible, write config.yaml.  Returns the checkpoint to resume from, if any.

    Without ``resume`` an existing run is never overwritten.  With it, the config must match the run's own
    config.yaml except for :data:`RESUMABLE_CHANGES`; the newest intact checkpoint is chosen (damaged ones are moved
    aside with a warning); with none, the run starts fresh.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(run_dir)
    if not resume and (list_checkpoints(run_dir) or (run_dir / "metrics.jsonl").exists()):
        raise TinaError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output-dir")
    if resume and (run_dir / "config.yaml").exists():
        changed = config_changes(cfgmod.load_config(run_dir / "config.yaml"), cfg)
        blocking = [k for k in changed if not k.startswith(RESUMABLE_CHANGES)]
        if blocking:
            raise TinaError(
                f"--resume with a different config than {run_dir}/config.yaml (changed: "
                f"{', '.join(blocking)}); resume with the run's own config.yaml"
            )
        if changed:
            say(f"resuming with changed {', '.join(changed)} (these do not alter the training trajectory)")
    point = latest_valid_checkpoint(run_dir, warn=say) if resume else None
    if resume:
        say(
            f"resuming {run_dir} from {point[1].name}"
            if point
            else f"no complete checkpoint in {run_dir}; starting fresh"
        )
    atomic_write_text(run_dir / "config.yaml", cfgmod.to_yaml(cfg))
    return point


def config_changes(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ (``rewards`` compared as a whole)."""
    a, b = cfgmod.to_dict(old), cfgmod.to_dict(new)
    out = []
    for section in b:
        if section == "rewards" or not isinstance(b[section], dict):
            if a.get(section) != b[section]:
                out.append(section)
            continue
        out += [f"{section}.{k}" for k in b[section] if a.get(section, {}).get(k) != b[section][k]]
    return out


def start_logs(run_dir: Path, history: list[dict], holdout: list[dict], start_step: int) -> None:
    """metrics.jsonl and probes.jsonl cut back to the resume point; holdout.jsonl written."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    probes = run_dir / "probes.jsonl"
    if probes.exists():
        kept = [p for p in read_jsonl(probes) if p.get("step", 0) <= start_step]
        atomic_write_text(probes, "".join(json.dumps(p) + "\n" for p in kept))
    if holdout:
        atomic_write_text(
            run_dir / "holdout.jsonl",
            "".join(json.dumps({k: r[k] for k in ("id", "problem", "answer")}) + "\n" for r in holdout),
        )


def progress_bar(start: int, total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)
