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
    deterministic_kernels,
    make_optimizer,
    make_scheduler,
    render_probe,
    resolve_pass_tokens,
    seed_everything,
)
from tina.checkpoint import (
    list_checkpoints,
    load_adapter_weights,
    load_trainer_state,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tina.config import Config
from tina.console import progress_bar, say
from tina.errors import TinaError
from tina.files import append_jsonl, read_jsonl
from tina.ledger import Ledger, adopt_untracked_eval, read_eval_costs, read_ledger
from tina.models import base_weights_digest, count_parameters
from tina.problems import PromptSampler, StepPrompts, load_problems, render_prompts
from tina.records import postfix, step_record
from tina.rewards import RewardSpec
from tina.rollout import Sampling
from tina.rollout.content import ContentCheck
from tina.rundir import prepare_run_dir, resume_command, start_logs
from tina.signals import GracefulStop
from tina.trackers import Windowed, check_available

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
    rollout_metrics: dict = field(default_factory=dict)  # the buffer's rollout metrics, (sum, count) each


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
    rollout_metrics: dict


class Run:
    """One training run's lifecycle; see the module docstring."""

    def __init__(self, cfg: Config, run_dir: Path, *, progress: bool):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.engine = self.handover = None  # the rollout engine (attach_engine); the probe generates through it too
        self.ahead = None  # rollouts generated ahead by workers (tina.ahead.RolloutsAhead), when rollout.devices
        self.restored_ahead: list[dict] = []  # ... as a resumed checkpoint holds them
        self.content: ContentCheck | None = None  # the content probe of what the engine serves (attach_engine)

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
            deterministic_kernels(self.device)  # CPU: the same bits run after run
            self.cfg = cfg = resolve_pass_tokens(cfg, self.model, say_it=self.main and progress)
            self.base_dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
            self.trainable, self.total = count_parameters(self.model)
            self.problems = render_prompts(rows, self.tokenizer, cfg)
            self.specs = [RewardSpec(rw.name, rw.weight, dict(rw.params)) for rw in cfg.rewards]
            self.optimizer = make_optimizer(self.model, t)
            self.scheduler = make_scheduler(self.optimizer, t)
            self.sampler = PromptSampler(len(self.problems), t.seed)
            share = dist.share(self.per_micro)  # this process's prompts of each micro-batch
            self.prompts = StepPrompts(self.sampler, self.per_micro, t.gradient_accumulation_steps, share)
            self.content = ContentCheck(self.model, self.ledger, dist, tolerance=cfg.rollout.canary_tolerance)
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
        """The rollout engine and its handover; the content probe is on for engines with their own weights (a folder
        handover) when ``rollout.check_engine``: the ``hf`` engine *is* the trainer's model."""
        self.engine, self.handover = engine, handover
        self.content.engine = engine
        self.content.on = bool(self.cfg.rollout.check_engine and handover.folder is not None)

    def publish(self, version: int):
        """The adapter as it is now, published for the engine as ``version`` (the number of updates so far)."""
        state = self.dist.adapter_state(self.model) if self.handover.folder is not None else None  # FSDP: gathered
        return self.handover.publish(self.model, version, state=state)  # the handover owns the current version

    def steps(self):
        """Step indices from the resume point to the last step; ends early after a graceful stop."""
        for step in range(self.start_step, self.last):
            yield step
            if self.stopped_at is not None:
                return

    def end_step(self, step: int, out: dict, rollout_metrics: dict, step_start: float) -> None:
        """After the update of 0-based ``step``: schedule, metrics.jsonl, bad steps, checkpoint, ledger."""
        n, t, dist = step + 1, self.cfg.train, self.dist
        lr = self.optimizer.param_groups[0]["lr"]
        advance_schedule(self.scheduler)  # a skipped step still counts, so the schedule stays on the step clock
        out = {**out, **self.content.pop_metrics()}
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
            dict(s.rollout_metrics),
        )

    def write_checkpoint(self, snap: Snapshot) -> Path | None:
        """Probe completion, then checkpoint-<step>/ (adapter, trainer state, metrics and ledger copies), then prune.

        Called on every process (each contributes its RNG state); only the main process writes."""
        dist, cfg, model = self.dist, self.cfg, self.model
        rngs = dist.all_gather_object(snap.rng)
        ahead = dist.all_gather_object(self.ahead.state() if self.ahead is not None else [])
        # num_iterations > 1: each process trains on its own share of a reused rollout, so every process's is kept
        reuse = cfg.algorithm.num_iterations > 1
        reused = dist.all_gather_object(
            ([batch.state(mb) for mb in snap.buffer], snap.rollout_metrics) if reuse else None
        )
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
            "buffer_by_rank": [b for b, _ in reused] if reuse else [],  # the micro-batches, each process's
            "rollout_metrics_by_rank": [m for _, m in reused] if reuse else [],
            # rollouts generated ahead (rollout.max_staleness), each process's: the resumed run trains on these
            "ahead_by_rank": ahead,
            "content_probe": self.content.state(),  # the content check goes on after a resume as before
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
        self.content.load_state(ts.get("content_probe"))
        copy_path = ckpt / "metrics.jsonl"
        history = read_jsonl(copy_path if copy_path.is_file() else self.run_dir / "metrics.jsonl")
        history = [h for h in history if h.get("step", 0) <= ts["step"]]
        buffer, metrics = self._reused(ts)
        by_rank = ts.get("ahead_by_rank") or []
        self.restored_ahead = list(by_rank[dist.rank]) if dist.rank < len(by_rank) else []
        return RunState(history, buffer, int(ts.get("bad_in_row", 0)), metrics)

    def _reused(self, ts: dict) -> tuple[list, dict]:
        """This process's micro-batches and rollout metrics kept for the next update of the same rollout."""
        dist = self.dist
        if ts["step"] % self.cfg.algorithm.num_iterations == 0:  # the next step generates anew
            return [], {}
        if "buffer_by_rank" in ts:
            by_rank, metrics = ts["buffer_by_rank"], ts["rollout_metrics_by_rank"]
            if len(by_rank) != dist.world_size:
                raise TinaError(
                    f"checkpoint-{ts['step']} holds the reused rollouts of {len(by_rank)} process(es), between two "
                    f"updates of one rollout; resume it with --num-processes {len(by_rank)}"
                )
            return [batch.from_state(mb, self.device) for mb in by_rank[dist.rank]], metrics[dist.rank]
        saved = ts.get("buffer", [])  # written before every process's was kept: the main process's only
        writers = max(1, len(ts.get("rng_by_rank") or []))
        if saved and (writers > 1 or dist.world_size > 1):
            raise TinaError(
                f"checkpoint-{ts['step']} (an older tina's, {writers} process(es)) holds the main process's rollouts "
                "only, between two updates of one rollout; resume from the checkpoint before it"
                + ("" if writers > 1 else " or with one process")
            )
        metrics = saved[0].get("metrics", {}) if saved else {}  # then the metrics rode in the first micro-batch
        return [batch.from_state(mb, self.device) for mb in saved], metrics

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
