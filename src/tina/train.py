"""The LoRA-GRPO training loop, top to bottom, in the paper's order.

One optimizer step::

    prompts   = sampler.take(prompts_per_step)                       # sample prompts
    rollout   = backend.generate(prompts, n=G)                       # G completions each, current adapter
    rewards   = score(grade_batch(batch), reward_specs)              # pure reward functions, one grader
    adv       = group_advantages(rewards, G)                         # group-normalised (or not)
    loss      = LOSSES[objective](logp, old_logp, adv, mask, ...)    # mask from generation lengths
    loss.backward(); clip; optimizer.step()                          # LoRA parameters only
    log(metrics.jsonl, ledger.json); maybe save checkpoint-<step>/

Nothing here is hidden in hooks or callbacks; each line calls a small function that is tested on its own.

Run lifecycle (below the step functions): checkpoints are atomic and hold everything a bit-exact resume needs
(adapter, optimizer, scheduler, every RNG, sampler position, metrics and ledger copies); ``--resume`` falls back past a
damaged checkpoint; SIGINT/SIGTERM stop gracefully after the current step; non-finite steps are skipped and, after
``train.max_bad_steps`` in a row, the run stops with the last good state checkpointed; write errors (a full disk) are
one-line errors that leave earlier checkpoints intact.  Determinism: everything random is drawn from the global torch,
python and numpy RNGs, which are checkpointed; the probe completion restores them; wall-time values (``seconds``,
``usd``, ...) are only logged, never fed back into training.  Bit-exact resume needs the same hardware, library
versions and thread count as the original run.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tina import config as cfgmod
from tina import distributed
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
from tina.errors import ConfigError, TinaError
from tina.ledger import Ledger, adopt_untracked_eval, atomic_write_text, read_eval_costs, read_ledger
from tina.models import attach_lora, base_weights_digest, count_parameters, load_model_and_tokenizer
from tina.rewards import RewardBatch, RewardSpec, grade_batch, score
from tina.rl.advantages import group_advantages
from tina.rl.logprobs import token_logprobs
from tina.rl.losses import LOSSES, Norm
from tina.rl.schedule import lr_multiplier, warmup_steps_for
from tina.rollout import HFBackend, Sampling


# ------------------------------------------------------------------------------------------------------------- data
@dataclass
class Problem:
    id: str
    problem: str
    answer: str
    prompt: str  # rendered prompt text


def load_problems(cfg: Config) -> tuple[list[dict], list[dict]]:
    """(train rows, holdout rows) as dicts with id/problem/answer/meta; builtin:arith never yields its eval split."""
    d = cfg.data
    if d.source == "builtin:arith":
        from tina.tasks import arith

        rows, _heldout = arith.split(n_eval=cfg.eval.num_problems, seed=0)
        rows = [dict(r, meta={}) for r in rows]
    else:
        from tina.data import load_examples, with_l1_targets

        examples = load_examples(
            d.source,
            adapter=d.adapter,
            split=d.split,
            subset=d.subset,
            problem_field=d.problem_field,
            answer_field=d.answer_field,
        )
        if d.l1_mode and d.l1_target_range:  # rows without their own target get one drawn from the range (seeded)
            low, high = d.l1_target_range
            examples = with_l1_targets(examples, mode=d.l1_mode, low=low, high=high, seed=cfg.train.seed)
        rows = [{"id": e.id, "problem": e.problem, "answer": e.answer, "meta": dict(e.meta)} for e in examples]
    if d.shuffle:
        random.Random(cfg.train.seed).shuffle(rows)
    holdout, rows = rows[: d.holdout], rows[d.holdout :]
    if d.limit is not None:
        rows = rows[: d.limit]
    if not rows:
        raise TinaError(f"data.source '{d.source}' has no training problems left (holdout={d.holdout}, limit={d.limit})")
    return rows, holdout


def render_prompts(rows: list[dict], tokenizer, cfg: Config) -> list[Problem]:
    from tina.prompts import render_prompt

    d = cfg.data
    out = []
    for row in rows:
        meta = row.get("meta", {})
        mode = meta.get("l1_mode", d.l1_mode)  # L1 data carries its own mode and target per row
        target = meta.get("l1_target", d.l1_target) if mode else None
        if mode and target is None:
            raise ConfigError(f"data.l1_mode is '{mode}' but row {row['id']} has no target length; set "
                              "data.l1_target or data.l1_target_range")
        text = render_prompt(tokenizer, row["problem"], system_prompt=d.system_prompt, template=d.template,
                             l1_mode=mode, l1_target=target)
        out.append(Problem(row["id"], row["problem"], row["answer"], text))
    return out


class PromptSampler:
    """Epochs of seeded permutations; its position is part of the checkpoint, so a resumed run sees the same prompts."""

    def __init__(self, n: int, seed: int, epoch: int = 0, index: int = 0):
        self.n, self.seed, self.epoch, self.index = n, seed, epoch, index
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self._order[self.index])
            self.index += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)


# --------------------------------------------------------------------------------------------------------- one step
@dataclass
class MicroBatch:
    """One micro-batch of rollouts with everything the loss needs (stored for num_iterations > 1)."""

    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T]
    loss_mask: torch.Tensor  # [N, T]  from lengths; zero rows for ungradable / masked-truncated completions
    advantages: torch.Tensor  # [N]
    old_logp: torch.Tensor | None  # [N, T]
    ref_logp: torch.Tensor | None  # [N, T]
    metrics: dict = field(default_factory=dict)


def collect(problems: list[Problem], keys: list[int], backend, model, cfg: Config, specs: list[RewardSpec],
            ledger: Ledger, device: torch.device) -> MicroBatch:
    """Generate G completions per prompt, score them, and compute advantages (and stored log-probs if needed).

    ``keys`` name each prompt's random stream (step and position in the global batch), so the completions do not
    depend on batch composition or on how many processes share the step.
    """
    r, a = cfg.rollout, cfg.algorithm
    sampling = Sampling(n=r.num_generations, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                        top_p=r.top_p, top_k=r.top_k, seed=cfg.train.seed)
    with ledger.phase("generation"):
        rollout = backend.generate([p.prompt for p in problems], sampling, keys=keys)
    ledger.tokens_generated += rollout.n_tokens
    with ledger.phase("reward"):
        batch = RewardBatch(
            completions=rollout.texts,
            answers=[p.answer for p in problems for _ in range(r.num_generations)],
            prompts=[p.prompt for p in problems for _ in range(r.num_generations)],
            completion_lengths=rollout.lengths.tolist(),
            group_size=r.num_generations,
        )
        batch = grade_batch(batch, timeout=cfg.train.grader_timeout)
        totals, components = score(batch, specs)
    rewards = torch.tensor([math.nan if t is None else float(t) for t in totals])  # [N]
    adv, stats = group_advantages(rewards, r.num_generations, scale=a.scale_rewards)
    valid = ~torch.isnan(rewards)  # [N]
    keep = valid & ~rollout.truncated if a.mask_truncated_completions else valid
    loss_mask = rollout.completion_mask * keep[:, None].float()  # [N, T]
    prompt_ids, prompt_mask = rollout.prompt_ids.to(device), rollout.prompt_mask.to(device)
    completion_ids, loss_mask_d = rollout.completion_ids.to(device), loss_mask.to(device)
    old_logp = ref_logp = None
    with ledger.phase("logprob"), torch.no_grad():
        if a.num_iterations > 1:
            old_logp = token_logprobs(model, prompt_ids, prompt_mask, completion_ids, loss_mask_d,
                                      temperature=r.temperature)
        if a.beta > 0:
            with model.disable_adapter():  # the reference is the base model: no second copy in memory
                ref_logp = token_logprobs(model, prompt_ids, prompt_mask, completion_ids, loss_mask_d,
                                          temperature=r.temperature)
    verdicts = batch.verdicts or []
    groups, n = len(problems), len(totals)
    metrics = {  # (sum, count): averaged over every process and micro-batch of the step by _step_record
        "reward": _sum_count(totals),
        "reward_std": (stats.reward_std * groups, groups),
        **{f"reward/{name}": _sum_count(vals) for name, vals in components.items()},
        "frac_reward_zero_std": (stats.frac_zero_std * groups, groups),
        "ungradable": (stats.n_ungradable, 0),
        "grader_timeouts": (sum(1 for v in verdicts if v.reason == "timeout"), 0),
        "completion_length": (float(rollout.lengths.sum()), n),
        "truncated_ratio": (float(rollout.truncated.sum()), n),
        "tokens": (rollout.n_tokens, 0),
    }
    return MicroBatch(prompt_ids, prompt_mask, completion_ids, loss_mask_d, adv.to(device), old_logp, ref_logp, metrics)


def _sum_count(values) -> tuple[float, int]:
    kept = [float(v) for v in values if v is not None]
    return sum(kept), len(kept)


SUMMED_METRICS = ("ungradable", "grader_timeouts", "tokens")  # totals over the step; the others are means


def update(model, micro_batches: list[MicroBatch], cfg: Config, optimizer, ledger: Ledger,
           dist: distributed.Dist | None = None) -> dict:
    """One optimizer step over the micro-batches: loss (chosen objective), backward, clip, step.

    ``model`` is the module the gradients flow through (DDP-wrapped when several processes train).  The loss
    normalisers are totals over the whole step on every process, and DDP averages gradients over processes, so each
    process scales its loss by the world size: the update equals that of one process holding the whole batch.
    """
    dist = dist or distributed.Dist()
    a, r = cfg.algorithm, cfg.rollout
    loss_fn = LOSSES[a.objective]
    eps_high = a.epsilon_high if a.epsilon_high is not None else a.epsilon
    n_seqs, n_tokens = dist.sum([sum(mb.loss_mask.shape[0] for mb in micro_batches),
                                 sum(mb.loss_mask.sum().item() for mb in micro_batches)])
    norm = Norm(n_seqs=int(n_seqs), n_tokens=int(n_tokens), n_micro=len(micro_batches) * dist.world_size,
                max_len=r.max_new_tokens)
    total_loss, extra = 0.0, {}
    for i, mb in enumerate(micro_batches):
        with ledger.phase("backward"):
            logp = token_logprobs(model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.loss_mask,
                                  temperature=r.temperature)  # [N, T]
            old = mb.old_logp if mb.old_logp is not None else logp.detach()
            out = loss_fn(logp, old, mb.advantages, mb.loss_mask, ref_logp=mb.ref_logp, beta=a.beta,
                          eps_low=a.epsilon, eps_high=eps_high, norm=norm)
            if dist.broadcast_flag(not torch.isfinite(out.loss)):  # skip the whole step, on every process
                optimizer.zero_grad(set_to_none=True)
                return {"loss": float(out.loss.detach()), "skipped": True}
            dist.backward(out.loss * dist.world_size, last=i == len(micro_batches) - 1)
        ledger.tokens_trained += int(mb.loss_mask.sum().item())
        total_loss += float(out.loss.detach())
        out.metrics["entropy"] = sampled_token_entropy(logp.detach(), mb.loss_mask)
        for k, v in out.metrics.items():
            extra[k] = extra.get(k, 0.0) + v / len(micro_batches)
    summed = dist.sum([total_loss, *extra.values()])  # loss: the global objective; the rest: mean over processes
    total_loss, extra = summed[0], {k: v / dist.world_size for k, v in zip(extra, summed[1:])}
    with ledger.phase("backward"):
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = dist.clip_grad_norm(params, cfg.train.max_grad_norm or float("inf"))
        if not torch.isfinite(grad_norm):  # gradients are all-reduced, so every process agrees
            optimizer.zero_grad(set_to_none=True)
            return {"loss": total_loss, "grad_norm": float(grad_norm), "skipped": True, **extra}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"loss": total_loss, "grad_norm": float(grad_norm), "skipped": False, **extra}


def sampled_token_entropy(logp: torch.Tensor, mask: torch.Tensor) -> float:
    """Policy entropy per token, estimated from the sampled tokens: ``-mean(log pi(token))`` over completion tokens.

    The completions were sampled from the policy (at the rollout temperature, which ``logp`` also uses), so
    E[-log pi(x)] is exactly the entropy: this is an unbiased Monte-Carlo estimate that needs no [B, T, V] softmax.
    With ``num_iterations > 1`` the tokens come from the slightly older policy, a small bias.

    >>> round(sampled_token_entropy(torch.log(torch.tensor([[0.5, 0.25, 1.0]])), torch.tensor([[1.0, 1.0, 0.0]])), 4)
    1.0397
    """
    return float(-(logp * mask).sum() / mask.sum().clamp(min=1))  # logp, mask: [N, T]


# ------------------------------------------------------------------------------------------------------------- run
WALL_TIME_FIELDS = ("seconds", "step_seconds", "device_hours", "usd")  # the rest of a record is reproducible
# Keys that may differ when a run is resumed: none of them changes which prompts, samples or updates a step sees.
RESUMABLE_CHANGES = ("train.stop_step", "train.save_steps", "train.save_total_limit", "train.logging_steps",
                     "train.report_to", "train.max_bad_steps", "train.probe_prompt", "train.probe_max_new_tokens",
                     "cost.", "eval.")


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


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          keep_model: bool = False, started_at: float | None = None) -> TrainResult:
    """Run LoRA-GRPO as the config says.

    Writes RUN/config.yaml, metrics.jsonl (every step), ledger.json (every step), probes.jsonl and checkpoint-<step>/
    (every ``train.save_steps``).  ``resume`` continues from the newest intact checkpoint, bit for bit.
    ``started_at`` (a ``time.perf_counter()`` value) is when the process began, so imports count as setup cost.
    The first SIGINT/SIGTERM finishes the current step, checkpoints and returns ``stopped_early``; a second aborts.
    """
    run_dir = Path(run_dir)
    t = cfg.train
    dist = distributed.init(cpu=t.device == "cpu" or not torch.cuda.is_available(), timeout_s=t.collective_timeout)
    main = dist.is_main  # only the main process writes files
    per_micro = t.batch_size // cfg.rollout.num_generations  # prompts per micro-batch, over all processes
    if per_micro % dist.world_size:
        raise ConfigError(f"train.batch_size: {per_micro} prompts per micro-batch do not split over "
                          f"{dist.world_size} processes; use a multiple of "
                          f"{dist.world_size * cfg.rollout.num_generations} completions")
    resume_cmd = resume_command(run_dir)
    point = None
    if main:
        check_trackers(t.report_to)  # a missing tracker package fails before anything is loaded
        with _writing(run_dir, "config.yaml", resume_cmd):
            point = prepare_run_dir(run_dir, cfg, resume=resume)
    start_step = int(dist.sum([point[0] if point else 0])[0])  # every process resumes from main's choice
    point = (start_step, run_dir / f"checkpoint-{start_step}") if start_step else None
    prior = (read_ledger(run_dir) or (read_ledger(point[1]) if point else None)) if resume else None
    if main:
        with _writing(run_dir, "eval_costs.jsonl", resume_cmd):
            adopt_untracked_eval(run_dir, prior)
    ledger = Ledger(num_devices=max(cfg.cost.num_devices, dist.world_size),
                    usd_per_device_hour=cfg.cost.usd_per_device_hour, device_name=cfg.cost.device_name,
                    prior=prior, started_at=started_at)
    seed_everything(t.seed + dist.rank)  # sampling is keyed (see collect); these only seed e.g. LoRA dropout

    with ledger.phase("setup"):
        rows, holdout = load_problems(cfg)  # an unreadable dataset fails before the model is loaded
        model, tokenizer, digest_before = build_model(cfg, device=str(dist.device) if dist.enabled else None)
        device = next(model.parameters()).device
        trainable, total = count_parameters(model)
        problems = render_prompts(rows, tokenizer, cfg)
        specs = [RewardSpec(rw.name, rw.weight, dict(rw.params)) for rw in cfg.rewards]
        optimizer = make_optimizer(model, t)
        scheduler = make_scheduler(optimizer, t)
        sampler = PromptSampler(len(problems), t.seed)
        backend = HFBackend(model, tokenizer)  # generates with the live (unwrapped) PEFT model: never stale
        saved = load_trainer_state(point[1]) if point else None
        state = (restore(point[1], saved, run_dir, model, optimizer, scheduler, sampler, device, dist=dist)
                 if point else RunState())
        train_model, optimizer = dist.prepare(model, optimizer, max_grad_norm=t.max_grad_norm)  # DDP/DeepSpeed/FSDP
        if point and dist.optimizer_format != "torch":  # sharded/partitioned state: loaded into the wrapped optimizer
            dist.load_optimizer_state(model, optimizer, saved["optimizer"])
        probe = render_probe(cfg, tokenizer)
        trackers = Trackers(t.report_to if main else [], run_dir, cfgmod.to_dict(cfg), start_step=start_step)
        if main:
            with _writing(run_dir, "metrics.jsonl", resume_cmd):
                start_logs(run_dir, state.history, holdout, start_step)
        dist.barrier()

    last = cfg.last_step
    if start_step >= last and main:
        _say(f"{run_dir} is already complete ({start_step} of {last} steps); nothing to train")
    share = dist.share(per_micro)
    bar = _progress_bar(start_step, last, enabled=progress and main)
    good = snapshot(start_step, state, sampler, scheduler)  # the last state reached by a finite update
    stop, stopped_at = GracefulStop(), None
    try:
        with stop:
            for step in range(start_step, last):
                n = step + 1
                step_start = time.perf_counter()
                if step % cfg.algorithm.num_iterations == 0 or not state.buffer:
                    state.buffer = []
                    for micro in range(t.gradient_accumulation_steps):
                        # every process draws the same global prompts and keeps its share; keys = global positions
                        chosen = sampler.take(per_micro)[share]
                        keys = [(step * t.gradient_accumulation_steps + micro) * per_micro + share.start + j
                                for j in range(len(chosen))]
                        with dist.gathered(model):  # FSDP: full weights for the rollout, no per-token collectives
                            state.buffer.append(collect([problems[i] for i in chosen], keys, backend, model, cfg,
                                                        specs, ledger, device))
                out = update(train_model, state.buffer, cfg, optimizer, ledger, dist)
                lr = optimizer.param_groups[0]["lr"]
                advance_schedule(scheduler)  # a skipped step still counts, so the schedule stays on the step clock
                record = _step_record(n, state.buffer, out, lr, time.perf_counter() - step_start, ledger, dist)
                state.history.append(record)
                if main:
                    with _writing(run_dir, "metrics.jsonl", resume_cmd):
                        _append_jsonl(run_dir / "metrics.jsonl", record)
                trackers.log(record)
                state.bad_in_row = state.bad_in_row + 1 if out["skipped"] else 0
                snap = snapshot(n, state, sampler, scheduler)
                if out["skipped"] and main:
                    _say(f"warning: step {n}: non-finite loss or gradient; update skipped "
                         f"({state.bad_in_row}/{t.max_bad_steps} in a row)")
                if state.bad_in_row >= t.max_bad_steps:
                    abort_bad_steps(run_dir, good, model, optimizer, state, ledger, backend, probe, cfg, n,
                                    resume_cmd, dist)
                if not out["skipped"]:
                    good = snap
                stopping = dist.broadcast_flag(stop.requested) and n < last  # all processes stop at the same step
                if n % t.save_steps == 0 or n == last or stopping:
                    with ledger.phase("checkpoint"), _writing(run_dir, f"checkpoint-{n}", resume_cmd):
                        write_checkpoint(run_dir, snap, model, optimizer, state, ledger, backend, probe, cfg, dist)
                if main:
                    with _writing(run_dir, "ledger.json", resume_cmd):
                        ledger.write(run_dir)
                bar.update(1)
                bar.set_postfix_str(_postfix(record))
                if stopping:
                    stopped_at = n
                    break
    except KeyboardInterrupt:
        done = list_checkpoints(run_dir)
        where = f"the last checkpoint is {done[-1][1].name}" if done else "no checkpoint was written"
        _say(f"aborted; {where}; resume with: {resume_cmd}")
        raise
    finally:
        bar.close()
        trackers.close()
        try:
            if main:
                ledger.write(run_dir)
        except OSError:
            pass  # the error that got us here (a full disk) has already been reported
    if stopped_at is not None and main:
        _say(f"stopped by {stop.reason} after step {stopped_at}; saved checkpoint-{stopped_at}. "
             f"Resume with:\n  {resume_cmd}")
    digest_after = base_weights_digest(model)
    return TrainResult(run_dir, len(state.history), state.history, trainable, total, digest_before, digest_after,
                       model if keep_model else None, tokenizer if keep_model else None, stopped_at is not None,
                       stop.reason if stopped_at is not None else None, resume_cmd)


# ------------------------------------------------------------------------------------------------------- setup
def seed_everything(seed: int) -> None:
    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def build_model(cfg: Config, device: str | None = None):
    """(PEFT model with a fresh or initial LoRA adapter, tokenizer, digest of the base weights)."""
    m, lc, t = cfg.model, cfg.lora, cfg.train
    model, tokenizer = load_model_and_tokenizer(m.name_or_path, revision=m.revision, dtype=m.dtype,
                                                attn_implementation=m.attn_implementation,
                                                trust_remote_code=m.trust_remote_code, device=device or t.device)
    digest = base_weights_digest(model)
    model = attach_lora(model, r=lc.r, alpha=lc.alpha, dropout=lc.dropout, target_modules=lc.target_modules,
                        bias=lc.bias, init_adapter=lc.init_adapter)
    if t.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    return model, tokenizer, digest


def make_optimizer(model, t: cfgmod.TrainConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                             weight_decay=t.weight_decay)


def make_scheduler(optimizer, t: cfgmod.TrainConfig):
    warmup = warmup_steps_for(t.max_steps, t.warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, total_steps=t.max_steps, kind=t.lr_scheduler, warmup_steps=warmup,
                                   min_ratio=t.min_lr_ratio),
    )


def advance_schedule(scheduler) -> None:
    """scheduler.step(), without torch's warning when the first step was skipped (no optimizer.step() yet)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        scheduler.step()


def resume_command(run_dir: Path) -> str:
    """The exact command that continues this run (its own resolved config.yaml always matches)."""
    return (f"tina train {shlex.quote(str(Path(run_dir) / 'config.yaml'))} --output-dir "
            f"{shlex.quote(str(run_dir))} --resume")


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
            raise TinaError(f"--resume with a different config than {run_dir}/config.yaml (changed: "
                            f"{', '.join(blocking)}); resume with the run's own config.yaml")
        if changed:
            _say(f"resuming with changed {', '.join(changed)} (these do not alter the training trajectory)")
    point = latest_valid_checkpoint(run_dir, warn=_say) if resume else None
    if resume:
        _say(f"resuming {run_dir} from {point[1].name}" if point else
             f"no complete checkpoint in {run_dir}; starting fresh")
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
        kept = [p for p in _read_jsonl(probes) if p.get("step", 0) <= start_step]
        atomic_write_text(probes, "".join(json.dumps(p) + "\n" for p in kept))
    if holdout:
        atomic_write_text(run_dir / "holdout.jsonl", "".join(
            json.dumps({k: r[k] for k in ("id", "problem", "answer")}) + "\n" for r in holdout))


# ------------------------------------------------------------------------------------------------- checkpoints
@dataclass
class RunState:
    """What the loop carries from step to step besides the model, optimizer, scheduler and sampler."""

    history: list[dict] = field(default_factory=list)
    buffer: list[MicroBatch] = field(default_factory=list)  # rollouts reused while num_iterations > 1
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


def snapshot(step: int, state: RunState, sampler: PromptSampler, scheduler) -> Snapshot:
    return Snapshot(step, len(state.history), rng_state(), sampler.state(), copy.deepcopy(scheduler.state_dict()),
                    list(state.buffer), state.bad_in_row)


def write_checkpoint(run_dir: Path, snap: Snapshot, model, optimizer, state: RunState, ledger: Ledger, backend,
                     probe: str | None, cfg: Config, dist: distributed.Dist | None = None) -> Path | None:
    """Probe completion, then checkpoint-<step>/ (adapter, trainer state, metrics and ledger copies), then prune.

    Called on every process (each contributes its RNG state); only the main process writes.
    """
    dist = dist or distributed.Dist()
    rngs = dist.all_gather_object(snap.rng)
    adapter = dist.adapter_state(model)  # FSDP: the full LoRA tensors (every process takes part); else None
    optimizer_state = dist.optimizer_state(model, optimizer)
    completion = None
    if probe is not None:
        with dist.gathered(model):  # FSDP: the main process alone generates the probe from full weights
            if dist.is_main:
                completion = run_probe(backend, probe, cfg.train.probe_max_new_tokens)
    if not dist.is_main:
        dist.barrier()
        return None
    if completion is not None:
        _append_jsonl(run_dir / "probes.jsonl", {"step": snap.step, "prompt": cfg.train.probe_prompt, **completion})
    trainer_state = {
        "step": snap.step,
        "optimizer": optimizer_state,
        "optimizer_format": dist.optimizer_format,
        "scheduler": snap.scheduler,
        "rng": snap.rng,
        "rng_by_rank": rngs if dist.enabled else [],
        "sampler": snap.sampler,
        "bad_in_row": snap.bad_in_row,
        "buffer": [_micro_batch_state(mb) for mb in snap.buffer] if cfg.algorithm.num_iterations > 1 else [],
    }
    extra = {
        "metrics.jsonl": "".join(json.dumps(h) + "\n" for h in state.history[: snap.n_history]),
        "ledger.json": json.dumps(ledger.to_dict(read_eval_costs(run_dir)), indent=2),
    }
    try:
        path = save_checkpoint(run_dir, snap.step, model, trainer_state, extra, state_dict=adapter)
        prune_checkpoints(run_dir, cfg.train.save_total_limit)
    finally:
        dist.barrier()  # the others wait until the checkpoint is complete
    return path


def restore(ckpt: Path, ts: dict, run_dir: Path, model, optimizer, scheduler, sampler: PromptSampler, device,
            dist: distributed.Dist | None = None) -> RunState:
    """Load a checkpoint (``ts``: its trainer state) into the freshly built objects; return the run's history up to it.

    Under FSDP and DeepSpeed the optimizer state is loaded after wrapping (see ``train``), not here."""
    dist = dist or distributed.Dist()
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, load_adapter_weights(ckpt))
    if getattr(result, "unexpected_keys", None):
        raise TinaError(f"{ckpt.name}: the adapter does not fit this model/LoRA config (unexpected "
                        f"{', '.join(result.unexpected_keys[:3])})")
    written = ts.get("optimizer_format", "torch")
    if written != dist.optimizer_format:
        engines = {"torch": "a single-process or DDP", "by-name": "an FSDP", "deepspeed-by-rank": "a DeepSpeed"}
        raise TinaError(f"{ckpt.name} was written by {engines.get(written, written)} run and cannot be resumed by "
                        f"{engines[dist.optimizer_format]} run; resume with the run's own --accelerate-config")
    if written == "torch":
        optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    sampler.load_state(ts["sampler"])
    by_rank = ts.get("rng_by_rank") or []
    set_rng_state(by_rank[dist.rank] if dist.rank < len(by_rank) else ts["rng"])
    copy_path = ckpt / "metrics.jsonl"
    history = _read_jsonl(copy_path if copy_path.is_file() else run_dir / "metrics.jsonl")
    history = [h for h in history if h.get("step", 0) <= ts["step"]]
    buffer = [MicroBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in mb.items()})
              for mb in ts.get("buffer", [])]
    return RunState(history, buffer, int(ts.get("bad_in_row", 0)))


def _micro_batch_state(mb: MicroBatch) -> dict:
    return {f.name: getattr(mb, f.name) for f in dataclasses.fields(MicroBatch)}


def abort_bad_steps(run_dir, good: Snapshot, model, optimizer, state, ledger, backend, probe, cfg, step, resume_cmd,
                    dist: distributed.Dist | None = None):
    """Too many non-finite steps in a row: checkpoint the last good state (skipped steps changed neither the adapter
    nor the optimizer) and stop with a clear message."""
    message = (f"stopped: {cfg.train.max_bad_steps} steps in a row (up to step {step}) had a non-finite loss or "
               "gradient; ")
    if good.step == 0:
        raise TinaError(message + "no step had a finite loss, so there is nothing to checkpoint. Lower "
                                  "train.learning_rate or check the rewards and the model")
    if good.step not in {s for s, _ in list_checkpoints(run_dir)}:
        with ledger.phase("checkpoint"), _writing(run_dir, f"checkpoint-{good.step}", resume_cmd):
            write_checkpoint(run_dir, good, model, optimizer, state, ledger, backend, probe, cfg, dist)
    raise TinaError(message + f"the last good state is checkpoint-{good.step}. Lower train.learning_rate or check the "
                    "rewards; to go on from the good state, start a new run with "
                    f"lora.init_adapter={run_dir / f'checkpoint-{good.step}'}")


# ------------------------------------------------------------------------------------------------------- probes
def render_probe(cfg: Config, tokenizer) -> str | None:
    """The probe prompt rendered like a training prompt, or None when ``train.probe_prompt`` is empty."""
    from tina.prompts import render_prompt

    text = cfg.train.probe_prompt.strip()
    if not text:
        return None
    d = cfg.data
    return render_prompt(tokenizer, text, system_prompt=d.system_prompt, template=d.template,
                         l1_mode=d.l1_mode if d.l1_target else None, l1_target=d.l1_target)


def run_probe(backend, prompt: str, max_new_tokens: int) -> dict:
    """Greedy completion of the probe prompt; every RNG is restored, so the training stream is undisturbed."""
    saved = rng_state()
    try:
        rollout = backend.generate([prompt], Sampling(n=1, max_new_tokens=max_new_tokens, greedy=True))
    finally:
        set_rng_state(saved)
    return {"completion": rollout.texts[0], "tokens": int(rollout.lengths[0]), "truncated": bool(rollout.truncated[0])}


# --------------------------------------------------------------------------------------------------- stop, errors
class GracefulStop:
    """SIGINT/SIGTERM during the loop: the first asks it to stop after the current step (it checkpoints and returns);
    a second one aborts at once with KeyboardInterrupt.  Installed only in the main thread; restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.reason: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        os.write(2, f"\n{self.reason}: finishing this step and saving a checkpoint "
                    "(Ctrl-C again aborts at once)\n".encode())


@contextmanager
def _writing(run_dir: Path, what: str, resume_cmd: str):
    """Turn an OSError while writing run files (full disk, read-only, permissions) into a one-line TinaError."""
    try:
        yield
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = "the disk is full" if full else (exc.strerror or str(exc))
        done = list_checkpoints(run_dir) if Path(run_dir).is_dir() else []
        kept = f"{done[-1][1].name} is intact" if done else "no checkpoint had been written yet"
        fix = "free some space" if full else "fix the problem"
        raise TinaError(f"cannot write {what} in {run_dir}: {reason} ({exc.strerror or exc}); {kept}; {fix}, then "
                        f"resume with: {resume_cmd}") from None


def check_trackers(names: list[str]) -> None:
    if names:
        from tina.trackers import check_available

        check_available(names)


class Trackers:
    """Optional trackers (train.report_to), imported only when asked for; a no-op otherwise."""

    def __init__(self, names: list[str], run_dir: Path, config: dict, *, start_step: int = 0):
        self._impl = None
        if names:
            from tina.trackers import Trackers as Impl

            self._impl = Impl(names, run_dir, config, start_step=start_step)

    def log(self, record: dict) -> None:
        if self._impl is not None:
            self._impl.log(record)

    def close(self) -> None:
        if self._impl is not None:
            self._impl.close()


# ------------------------------------------------------------------------------------------------------- records
def _step_record(step: int, buffer: list[MicroBatch], out: dict, lr: float, step_seconds: float,
                 ledger: Ledger, dist: distributed.Dist | None = None) -> dict:
    """One metrics.jsonl line: each rollout metric's (sum, count) pooled over micro-batches and processes."""
    dist = dist or distributed.Dist()
    rec: dict = {"step": step}
    keys = list(buffer[0].metrics)
    flat = []
    for k in keys:
        flat += [sum(mb.metrics[k][0] for mb in buffer), sum(mb.metrics[k][1] for mb in buffer)]
    flat = dist.sum(flat)
    for i, k in enumerate(keys):
        total, count = flat[2 * i], flat[2 * i + 1]
        if k in SUMMED_METRICS:
            rec[k] = int(total)
        else:
            rec[k] = total / count if count else None
    rec.update(out)
    rec["learning_rate"] = lr
    rec["seconds"] = round(ledger.wall_seconds, 3)  # training wall time so far (all sessions), as in the ledger
    rec["step_seconds"] = round(step_seconds, 3)
    rec["device_hours"] = round(ledger.device_hours, 9)
    rec["usd"] = round(ledger.usd, 9)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}


def _append_jsonl(path: Path, obj: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(obj) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a half-written last line (a killed process) is dropped."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _progress_bar(start: int, total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)


def _postfix(rec: dict) -> str:
    parts = [f"reward={rec['reward']:.3f}" if rec.get("reward") is not None else "reward=n/a"]
    if rec.get("reward/accuracy") is not None:
        parts.append(f"acc={rec['reward/accuracy']:.2f}")
    if rec.get("completion_length") is not None:
        parts.append(f"len={rec['completion_length']:.0f}")
    parts.append(f"${rec['usd']:.4f}" if rec.get("usd") else f"{rec.get('device_hours', 0):.4f} dev-h")
    return " ".join(parts)
