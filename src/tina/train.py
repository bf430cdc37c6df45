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
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tina import config as cfgmod
from tina.checkpoint import (
    list_checkpoints,
    load_trainer_state,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tina.config import Config
from tina.errors import ConfigError, TinaError
from tina.ledger import Ledger, atomic_write_text
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
        from tina.data import load_examples

        examples = load_examples(
            d.source,
            adapter=d.adapter,
            split=d.split,
            subset=d.subset,
            problem_field=d.problem_field,
            answer_field=d.answer_field,
        )
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
            raise ConfigError(f"data.l1_mode is '{mode}' but row {row['id']} has no target length; set data.l1_target")
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


def collect(problems: list[Problem], backend, tokenizer, model, cfg: Config, specs: list[RewardSpec], ledger: Ledger,
            device: torch.device) -> MicroBatch:
    """Generate G completions per prompt, score them, and compute advantages (and stored log-probs if needed)."""
    r, a = cfg.rollout, cfg.algorithm
    sampling = Sampling(n=r.num_generations, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                        top_p=r.top_p, top_k=r.top_k)
    with ledger.phase("generation"):
        rollout = backend.generate([p.prompt for p in problems], sampling)
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
    metrics = {
        "reward": _mean([t for t in totals if t is not None]),
        "reward_std": stats.reward_std,
        **{f"reward/{name}": _mean([v for v in vals if v is not None]) for name, vals in components.items()},
        "frac_reward_zero_std": stats.frac_zero_std,
        "ungradable": stats.n_ungradable,
        "grader_timeouts": sum(1 for v in verdicts if v.reason == "timeout"),
        "completion_length": float(rollout.lengths.float().mean()),
        "truncated_ratio": float(rollout.truncated.float().mean()),
        "tokens": rollout.n_tokens,
    }
    return MicroBatch(prompt_ids, prompt_mask, completion_ids, loss_mask_d, adv.to(device), old_logp, ref_logp, metrics)


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def update(model, micro_batches: list[MicroBatch], cfg: Config, optimizer, ledger: Ledger) -> dict:
    """One optimizer step over the micro-batches: loss (chosen objective), backward, clip, step."""
    a, r = cfg.algorithm, cfg.rollout
    loss_fn = LOSSES[a.objective]
    eps_high = a.epsilon_high if a.epsilon_high is not None else a.epsilon
    norm = Norm(
        n_seqs=sum(mb.loss_mask.shape[0] for mb in micro_batches),
        n_tokens=int(sum(mb.loss_mask.sum().item() for mb in micro_batches)),
        n_micro=len(micro_batches),
        max_len=r.max_new_tokens,
    )
    total_loss, extra = 0.0, {}
    for mb in micro_batches:
        with ledger.phase("backward"):
            logp = token_logprobs(model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.loss_mask,
                                  temperature=r.temperature)  # [N, T]
            old = mb.old_logp if mb.old_logp is not None else logp.detach()
            out = loss_fn(logp, old, mb.advantages, mb.loss_mask, ref_logp=mb.ref_logp, beta=a.beta,
                          eps_low=a.epsilon, eps_high=eps_high, norm=norm)
            if not torch.isfinite(out.loss):
                optimizer.zero_grad(set_to_none=True)
                return {"loss": float("nan"), "skipped": True}
            out.loss.backward()
        ledger.tokens_trained += int(mb.loss_mask.sum().item())
        total_loss += float(out.loss.detach())
        for k, v in out.metrics.items():
            extra[k] = extra.get(k, 0.0) + v / len(micro_batches)
    with ledger.phase("backward"):
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm or float("inf"))
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            return {"loss": total_loss, "grad_norm": float("nan"), "skipped": True}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"loss": total_loss, "grad_norm": float(grad_norm), **extra}


# ------------------------------------------------------------------------------------------------------------- run
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


def prepare_run_dir(run_dir: Path, cfg: Config, *, resume: bool) -> int:
    """Create RUN/, write config.yaml; refuse to overwrite a run unless resuming.  Returns the step to start at."""
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = list_checkpoints(run_dir)
    if not resume and (existing or (run_dir / "metrics.jsonl").exists()):
        raise TinaError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output-dir")
    if resume and (run_dir / "config.yaml").exists():
        saved = cfgmod.load_config(run_dir / "config.yaml")
        if cfgmod.to_dict(saved) != cfgmod.to_dict(cfg):
            changed = [f"{s}.{k}" for s, sec in cfgmod.to_dict(cfg).items() if isinstance(sec, dict)
                       for k in sec if cfgmod.to_dict(saved).get(s, {}).get(k) != sec[k]]
            raise TinaError(f"--resume with a different config than {run_dir}/config.yaml (changed: "
                            f"{', '.join(changed) or 'rewards'}); resume with the run's own config.yaml")
    atomic_write_text(run_dir / "config.yaml", cfgmod.to_yaml(cfg))
    return existing[-1][0] if (resume and existing) else 0


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          keep_model: bool = False) -> TrainResult:
    """Run LoRA-GRPO as the config says; write config.yaml, metrics.jsonl, ledger.json, checkpoint-<step>/."""
    run_dir = Path(run_dir)
    t = cfg.train
    start_step = prepare_run_dir(run_dir, cfg, resume=resume)
    prior_ledger = json.loads((run_dir / "ledger.json").read_text()) if resume and (run_dir / "ledger.json").exists() else None
    ledger = Ledger(num_devices=cfg.cost.num_devices, usd_per_device_hour=cfg.cost.usd_per_device_hour,
                    device_name=cfg.cost.device_name, prior=prior_ledger)
    torch.manual_seed(t.seed)
    random.seed(t.seed)

    with ledger.phase("setup"):
        m = cfg.model
        model, tokenizer = load_model_and_tokenizer(m.name_or_path, revision=m.revision, dtype=m.dtype,
                                                    attn_implementation=m.attn_implementation,
                                                    trust_remote_code=m.trust_remote_code, device=t.device)
        digest_before = base_weights_digest(model)
        lc = cfg.lora
        model = attach_lora(model, r=lc.r, alpha=lc.alpha, dropout=lc.dropout, target_modules=lc.target_modules,
                            bias=lc.bias, init_adapter=lc.init_adapter)
        if t.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        device = next(model.parameters()).device
        trainable, total = count_parameters(model)
        rows, holdout = load_problems(cfg)
        problems = render_prompts(rows, tokenizer, cfg)
        if holdout:
            atomic_write_text(run_dir / "holdout.jsonl", "".join(json.dumps({k: r[k] for k in ("id", "problem", "answer")}) + "\n" for r in holdout))
        specs = [RewardSpec(rw.name, rw.weight, dict(rw.params)) for rw in cfg.rewards]
        optimizer = make_optimizer(model, t)
        scheduler = make_scheduler(optimizer, t)
        sampler = PromptSampler(len(problems), t.seed)
        backend = HFBackend(model, tokenizer)
        metrics_path = run_dir / "metrics.jsonl"
        history: list[dict] = []
        if start_step:
            _restore(run_dir / f"checkpoint-{start_step}", model, optimizer, scheduler, sampler)
            history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            history = [h for h in history if h["step"] <= start_step]
            atomic_write_text(metrics_path, "".join(json.dumps(h) + "\n" for h in history))

    last = cfg.last_step
    per_micro = t.batch_size // cfg.rollout.num_generations
    buffer: list[MicroBatch] = []
    run_start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    bar = _progress_bar(start_step, last, enabled=progress)
    stopped_early = False
    try:
        for step in range(start_step, last):
            step_start = time.perf_counter()
            if step % cfg.algorithm.num_iterations == 0 or not buffer:
                buffer = []
                for _ in range(t.gradient_accumulation_steps):
                    chosen = [problems[i] for i in sampler.take(per_micro)]
                    buffer.append(collect(chosen, backend, tokenizer, model, cfg, specs, ledger, device))
            out = update(model, buffer, cfg, optimizer, ledger)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            record = _step_record(step + 1, buffer, out, lr, time.perf_counter() - run_start,
                                  time.perf_counter() - step_start, ledger)
            history.append(record)
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if (step + 1) % t.save_steps == 0 or step + 1 == last:
                with ledger.phase("checkpoint"):
                    _save(run_dir, step + 1, model, optimizer, scheduler, sampler)
                    prune_checkpoints(run_dir, t.save_total_limit)
            ledger.write(run_dir / "ledger.json")
            bar.update(1)
            bar.set_postfix_str(_postfix(record))
    except KeyboardInterrupt:
        stopped_early = True
        print(f"\ninterrupted; resume with: tina train {run_dir / 'config.yaml'} --output-dir {run_dir} --resume",
              file=sys.stderr)
    finally:
        bar.close()
        ledger.write(run_dir / "ledger.json")
    digest_after = base_weights_digest(model)
    return TrainResult(run_dir, len(history), history, trainable, total, digest_before, digest_after,
                       model if keep_model else None, tokenizer if keep_model else None, stopped_early)


def _step_record(step, buffer, out, lr, seconds, step_seconds, ledger) -> dict:
    rec: dict = {"step": step}
    keys = buffer[0].metrics.keys()
    for k in keys:
        vals = [mb.metrics[k] for mb in buffer if mb.metrics.get(k) is not None]
        if k in ("ungradable", "grader_timeouts", "tokens"):
            rec[k] = sum(vals)
        else:
            rec[k] = sum(vals) / len(vals) if vals else None
    rec.update(out)
    rec["learning_rate"] = lr
    rec["seconds"] = round(seconds, 3)
    rec["step_seconds"] = round(step_seconds, 3)
    rec["usd"] = round(ledger.usd, 6)
    return rec


def _save(run_dir, step, model, optimizer, scheduler, sampler):
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "sampler": sampler.state(),
    }
    save_checkpoint(run_dir, step, model, state)


def _restore(ckpt: Path, model, optimizer, scheduler, sampler):
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    state = load_trainer_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.epoch, sampler.index = state["sampler"]["epoch"], state["sampler"]["index"]
    sampler._order = sampler._permutation(sampler.epoch)
    set_rng_state(state["rng"])


def _progress_bar(start: int, total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)


def _postfix(rec: dict) -> str:
    parts = [f"reward={rec['reward']:.3f}" if rec.get("reward") is not None else "reward=n/a"]
    if rec.get("reward/accuracy") is not None:
        parts.append(f"acc={rec['reward/accuracy']:.2f}")
    parts.append(f"len={rec['completion_length']:.0f}")
    if rec.get("usd"):
        parts.append(f"${rec['usd']:.4f}")
    return " ".join(parts)
