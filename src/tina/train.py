"""The LoRA-GRPO training loop, top to bottom, in the paper's order.

One optimizer step::

    prompts = run.prompts.draw(step)                                # sample prompts (this process's share)
    engine.load_adapter(run.publish(step))                          # hand the engine the current adapter
    rollout = engine.generate(prompts, G completions each)          # ONE engine call for the whole step
    check_served(rollout, ...)                                      # ... and it served that very adapter
    run.content.check(step, rollout)                                # ... its content too: a probe scored by both
    rewards = score(grade_batch(batch), reward_specs)               # pure reward functions, one grader
    adv     = group_advantages(rewards, G)                          # group-normalised, over the whole step
    loss    = LOSSES[objective](logp, old_logp, adv, mask, ...)     # per micro-batch; mask from generation lengths
    loss.backward(); clip; optimizer.step()                         # LoRA parameters only
    log(metrics.jsonl, ledger.json); maybe save checkpoint-<step>/

Nothing here is hidden in hooks or callbacks; each line calls a small function that is tested on its own.  The run's
lifecycle (run directory, resume, checkpoints, signals, aborts, logs) is in :mod:`tina.run`; the rollout engines
(``rollout.backend: hf | vllm``) and their agreement checks are in :mod:`tina.rollout`.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from tina import distributed
from tina.batch import MicroBatch, Scored, skipped_entropy
from tina.config import Config
from tina.errors import TinaError
from tina.ledger import Ledger
from tina.problems import Problem
from tina.rewards import RewardBatch, RewardSpec, grade_batch, score
from tina.rl.advantages import group_advantages
from tina.rl.logprobs import token_logprobs
from tina.rl.losses import LOSSES, Norm
from tina.rollout import Rollout, Sampling
from tina.rollout.agreement import check_served, logp_diff, rollout_correction
from tina.run import Run, TrainResult
from tina.settings import StepSettings


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    keep_model: bool = False,
    started_at: float | None = None,
) -> TrainResult:
    """Run LoRA-GRPO as the config says.

    Writes RUN/config.yaml, metrics.jsonl (every step), ledger.json (every step), probes.jsonl and checkpoint-<step>/
    (every ``train.save_steps``).  ``resume`` continues from the newest intact checkpoint, bit for bit.
    ``started_at`` (a ``time.perf_counter()`` value) is when the process began, so imports count as setup cost.
    The first SIGINT/SIGTERM finishes the current step, checkpoints and returns ``stopped_early``; a second aborts.
    """
    check_engine_available(cfg)  # vLLM missing / a model or LoRA rank it cannot serve: one line, before any loading
    run = Run.open(cfg, run_dir, resume=resume, progress=progress, started_at=started_at)
    engine = open_engine(cfg, run)  # hf | vllm, here or in worker processes; checked against the trainer (the canary)
    settings = StepSettings.of(run.cfg, run.model)  # resolved once for the run
    try:
        with run:
            for step in run.steps():
                step_start = time.perf_counter()
                if step % cfg.algorithm.num_iterations == 0 or not run.state.buffer:
                    # workers: generated ahead by an adapter at most rollout.max_staleness updates old
                    drawn, rollout, lag = run.ahead.take(step) if run.ahead else (*rollout_step(engine, run, step), {})
                    problems = [run.problems[i] for i, _ in drawn]
                    scored = score_rollout(rollout, problems, cfg, run.specs, run.ledger, run.dist)
                    scored.metrics.update(lag)
                    if cfg.algorithm.dynamic_sampling:  # DAPO: groups without signal out, refilled from new prompts
                        rollout, scored = refill(engine, run, step, rollout, problems, scored)
                    run.state.buffer = micro_batches(rollout, scored, cfg, run.model, run.ledger, settings)
                    run.state.rollout_metrics = scored.metrics  # beside the batch: reused steps log them again
                out = update(run.train_model, run.state.buffer, run.cfg, run.optimizer, run.ledger, run.dist, settings)
                run.end_step(step, out, run.state.rollout_metrics, step_start)
    finally:
        close_engine(engine)
    result = run.result(keep_model=keep_model)
    result.engine_info = engine.info() if hasattr(engine, "info") else {}
    run.dist.close()  # the last collective is behind every process
    return result


def rollout_step(engine, run: Run, step: int) -> tuple[list[tuple[int, int]], Rollout]:
    """The synchronous rollout of ``step``: draw its prompts, hand the engine the current adapter, generate, check."""
    drawn = run.prompts.draw(step)
    problems = [run.problems[i] for i, _ in drawn]
    # FSDP: full weights for the rollout (no per-token collectives); a sleeping vLLM engine wakes once
    with run.dist.gathered(run.model), engine.awake():
        engine.load_adapter(run.publish(step))  # the adapter after `step` updates: a fresh version
        rollout = generate(engine, problems, [k for _, k in drawn], run.cfg, run.ledger)
        check_served(rollout, run.handover.current, step)  # ... and it served that very adapter (its version)
        run.content.check(step, rollout)  # ... and its content: a fixed probe scored by both sides
    return drawn, rollout


# ------------------------------------------------------------------------------------------------------ the engine
def check_engine_available(cfg: Config) -> None:
    from tina.rollout.engines import check_backend, check_devices

    check_devices(cfg.rollout.devices)
    if cfg.rollout.servers:
        from tina.rollout.remote import check_servers

        check_servers(cfg.rollout.servers, model=cfg.model.name_or_path, lora_rank=cfg.lora.r)
    if cfg.rollout.backend != "hf" and not cfg.rollout.servers:  # remote servers: vLLM is theirs, not ours
        from tina.models import resolve_model_path

        check_backend(cfg.rollout.backend, lora_rank=cfg.lora.r, model_path=resolve_model_path(cfg.model.name_or_path))


def open_engine(cfg: Config, run: Run):
    """The rollout engine of ``rollout.backend`` with its adapter handover, checked against the trainer (the canary)."""
    from tina.rollout.engines import make_engine, start_up_check

    with run.ledger.phase("setup"):
        engine, handover = make_engine(cfg, run.model, run.tokenizer, run_dir=run.run_dir, rank=run.dist.rank)
    try:
        run.attach_engine(engine, handover)
        if cfg.rollout.devices or cfg.rollout.servers:
            from tina.ahead import RolloutsAhead

            check_worker_base(engine, run)
            run.ahead = RolloutsAhead(run, engine, sampling_of(cfg))
        if cfg.rollout.check_engine:
            with run.ledger.phase("setup"), run.dist.gathered(run.model):
                start_up_check(engine, run, handover)
    except BaseException:
        close_engine(engine)
        raise
    return engine


def check_worker_base(workers, run: Run) -> None:
    """Rollout workers must hold the trainer's base weights (a worker that loaded other weights stops the run)."""
    other = workers.base_digests() - {run.digest_before}
    if other:
        raise TinaError(
            f"a rollout worker loaded other base weights (sha256 {sorted(other)[0][:12]}) than the trainer "
            f"({run.digest_before[:12]}); both read {run.cfg.model.name_or_path}: is the model folder changing?"
        )


def close_engine(engine) -> None:
    """Stop an engine's processes (rollout workers); engines in this process have nothing to close."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()


# ------------------------------------------------------------------------------------------------------ one step
def generate(engine, problems: list[Problem], keys: list[int], cfg: Config, ledger: Ledger) -> Rollout:
    """G completions for every prompt of the step, in ONE engine call.

    ``keys`` name each prompt's random stream (its position in the run's global prompt order), so the completions do
    not depend on batch composition, on micro-batching or on how many processes share the step."""
    with ledger.phase("generation"):
        return engine.generate([p.prompt_ids for p in problems], sampling_of(cfg), keys=keys)


def sampling_of(cfg: Config) -> Sampling:
    """What a training rollout samples: exactly the recipe's settings, keyed by ``train.seed``."""
    r = cfg.rollout
    return Sampling(
        n=r.num_generations,
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        seed=cfg.train.seed,
    )


def score_rollout(
    rollout: Rollout,
    problems: list[Problem],
    cfg: Config,
    specs: list[RewardSpec],
    ledger: Ledger,
    dist: distributed.Dist | None = None,
) -> Scored:
    """Grade every completion once, score the rewards, and compute advantages over the whole step."""
    dist = dist or distributed.Dist()
    r, a = cfg.rollout, cfg.algorithm
    g = r.num_generations
    with ledger.phase("reward"):
        batch = RewardBatch(
            completions=rollout.texts,
            answers=[p.answer for p in problems for _ in range(g)],
            prompts=[p.prompt for p in problems for _ in range(g)],
            completion_lengths=rollout.lengths.tolist(),
            group_size=g,
            truncated=rollout.truncated.tolist(),
            max_new_tokens=r.max_new_tokens,
        )
        batch = grade_batch(batch, timeout=cfg.train.grader_timeout)
        totals, components = score(batch, specs)
    rewards = torch.tensor([math.nan if t is None else float(t) for t in totals])  # [N]
    adv, stats = step_advantages(rewards, cfg, dist)
    valid = ~torch.isnan(rewards)  # [N]
    keep = valid & ~rollout.truncated if a.mask_truncated_completions else valid
    verdicts = batch.verdicts or []
    groups, n = len(problems), len(totals)
    metrics = {  # (sum, count): averaged over every process of the step by tina.records.step_record
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
    return Scored(rewards, adv, keep, metrics)


def signal_groups(rewards: torch.Tensor, group: int) -> list[int]:
    """Indices of the groups whose gradable rewards are not all equal (the others give every completion advantage 0).

    >>> signal_groups(torch.tensor([1.0, 0.0, 1.0, 1.0, float("nan"), 0.5]), 2)
    [0]
    """
    out = []
    for g, r in enumerate(rewards.view(-1, group)):
        valid = r[~torch.isnan(r)]
        if valid.numel() >= 2 and bool(valid.max() > valid.min()):
            out.append(g)
    return out


def refill(engine, run: Run, step: int, rollout: Rollout, problems: list[Problem], scored: Scored):
    """DAPO's dynamic sampling: keep the groups with a learning signal; while any process has fewer than the step's
    groups, draw a fresh step's worth of prompts, generate (one engine call per round) and keep their groups with a
    signal; at most ``algorithm.dynamic_sampling_rounds`` rounds (then groups without signal fill the rest: they get
    advantage 0).  Advantages are recomputed over the kept groups; the step's metrics stay those of its own prompts."""
    cfg, dist = run.cfg, run.dist
    g, target = cfg.rollout.num_generations, len(problems)
    pool = [(rollout, scored)]
    kept = [(0, i) for i in signal_groups(scored.rewards, g)]
    rounds = 0
    while dist.broadcast_flag(len(kept) < target) and rounds < cfg.algorithm.dynamic_sampling_rounds:
        rounds += 1
        drawn = run.prompts.draw_more(step, rounds)
        more = [run.problems[i] for i, _ in drawn]
        with dist.gathered(run.model), engine.awake():
            extra = generate(engine, more, [k for _, k in drawn], cfg, run.ledger)
        check_served(extra, run.handover.current, step)
        extra_scored = score_rollout(extra, more, cfg, run.specs, run.ledger, dist)
        pool.append((extra, extra_scored))
        kept += [(len(pool) - 1, i) for i in signal_groups(extra_scored.rewards, g)]
    chosen = kept[:target]
    filler = [(0, i) for i in range(target) if (0, i) not in chosen]
    chosen += filler[: target - len(chosen)]
    rows = {p: [] for p in range(len(pool))}
    for p, i in chosen:
        rows[p] += list(range(i * g, (i + 1) * g))
    parts = [(pool[p][0].select(r), pool[p][1], r) for p, r in rows.items() if r]
    new = Rollout.concat([r for r, _, _ in parts])
    rewards = torch.cat([s.rewards[r] for _, s, r in parts])
    keep = torch.cat([s.keep[r] for _, s, r in parts])
    adv, _ = step_advantages(rewards, cfg, dist)
    metrics = dict(scored.metrics)
    metrics["tokens"] = (sum(r.n_tokens for r, _ in pool), 0)  # every round's generation is booked
    metrics["dynamic/rounds"] = (rounds, 1)
    metrics["dynamic/groups_with_signal"] = (min(len(kept), target), target)  # share of the step's groups
    return new, Scored(rewards, adv, keep, metrics)


def step_advantages(rewards: torch.Tensor, cfg: Config, dist: distributed.Dist):
    """Group-normalised advantages of the step's rewards (``scale_rewards: batch``: by the std over every process)."""
    scale = cfg.algorithm.scale_rewards
    batch_std = step_reward_std(rewards, dist) if scale == "batch" else None
    return group_advantages(rewards, cfg.rollout.num_generations, scale=scale, batch_std=batch_std)


def step_reward_std(rewards: torch.Tensor, dist: distributed.Dist) -> float:
    """Unbiased standard deviation of the step's gradable rewards over every process (``scale_rewards: batch``)."""
    valid = rewards[~torch.isnan(rewards)].double()
    n, s, ss = dist.sum([float(valid.numel()), float(valid.sum()), float((valid**2).sum())])
    if n < 2:
        return 0.0
    return math.sqrt(max(0.0, (ss - s * s / n) / (n - 1)))


def micro_batches(
    rollout: Rollout, scored: Scored, cfg: Config, model, ledger: Ledger, settings: StepSettings | None = None
) -> list[MicroBatch]:
    """Split the step into ``train.gradient_accumulation_steps`` micro-batches (whole prompt groups, in order), trim
    each to its own widths, and store the log-probs the loss needs besides the live ones: the trainer's at rollout
    time (``num_iterations > 1``, or a masking rollout correction) and the reference's (``beta > 0``)."""
    a = cfg.algorithm
    device = next(model.parameters()).device
    completion_mask = rollout.completion_mask  # [N, T] from lengths: the attention mask
    loss_mask = completion_mask * scored.keep[:, None].float()  # [N, T]
    rows = rollout.completion_ids.shape[0]
    per = rows // cfg.train.gradient_accumulation_steps
    settings = settings or StepSettings.of(cfg, model)
    correction, g = settings.correction, settings.group
    need_old = a.num_iterations > 1 or correction.endswith("mask")
    out = []
    for start in range(0, rows, per):
        sl = slice(start, start + per)
        width = max(1, int(rollout.lengths[sl].max()))  # this micro-batch's longest completion
        pmask = rollout.prompt_mask[sl]
        lead = int((pmask.sum(0) == 0).long().cumprod(0).sum())  # all-padding columns on the left
        mb = MicroBatch(
            prompt_ids=rollout.prompt_ids[sl, lead:].to(device),
            prompt_mask=pmask[:, lead:].to(device),
            completion_ids=rollout.completion_ids[sl, :width].to(device),
            loss_mask=loss_mask[sl, :width].to(device),
            advantages=scored.advantages[sl].to(device),
            old_logp=None,
            ref_logp=None,
            engine_logp=None if rollout.logprobs is None else rollout.logprobs[sl, :width].to(device),
            completion_mask=completion_mask[sl, :width].to(device),
        )
        args = (mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask)
        kwargs = dict(loss_mask=mb.loss_mask, max_chunk_bytes=settings.chunk_bytes, group_size=g)
        with ledger.phase("logprob"), torch.no_grad():
            if need_old:
                mb.old_logp = token_logprobs(model, *args, **kwargs, **settings.distribution)
            if a.beta > 0:
                with model.disable_adapter():  # the reference is the base model: no second copy in memory
                    mb.ref_logp = token_logprobs(model, *args, **kwargs, **settings.distribution)
        if correction.endswith("mask") and mb.engine_logp is not None:  # masked tokens leave the loss and its norm,
            # not the attention: the remaining tokens keep the log-probs they have here (mb.completion_mask)
            _, keep = rollout_correction(
                mb.old_logp, mb.engine_logp, mb.loss_mask, mode=correction, cap=a.rollout_correction_cap
            )
            mb.loss_mask = keep
        out.append(mb)
    return out


def _sum_count(values) -> tuple[float, int]:
    kept = [float(v) for v in values if v is not None]
    return sum(kept), len(kept)


def update(
    model,
    micro_batches: list[MicroBatch],
    cfg: Config,
    optimizer,
    ledger: Ledger,
    dist: distributed.Dist | None = None,
    settings: StepSettings | None = None,
) -> dict:
    """One optimizer step over the micro-batches: loss (chosen objective), backward, clip, step.

    ``model`` is the module the gradients flow through (DDP-wrapped when several processes train).  The loss
    normalisers are totals over the whole step on every process, and DDP averages gradients over processes, so each
    process scales its loss by the world size: the update equals that of one process holding the whole batch.
    The engine's log-probs of the sampled tokens are compared with the trainer's (``rollout/logp_diff_*``) and, when a
    rollout correction is on, importance weights correct the loss for their mismatch.
    """
    dist = dist or distributed.Dist()
    a, r, t = cfg.algorithm, cfg.rollout, cfg.train
    loss_fn = LOSSES[a.objective]
    eps_low, eps_high = a.epsilon, a.epsilon_high
    n_seqs, n_tokens = dist.sum(
        [sum(mb.loss_mask.shape[0] for mb in micro_batches), sum(mb.loss_mask.sum().item() for mb in micro_batches)]
    )
    norm = Norm(
        n_seqs=int(n_seqs),
        n_tokens=int(n_tokens),
        n_micro=len(micro_batches) * dist.world_size,
        max_len=r.max_new_tokens,
    )
    settings = settings or StepSettings.of(cfg, model)
    correction, comparable, g = settings.correction, settings.comparable, settings.group
    total_loss, extra, trained = 0.0, {}, 0
    diff_sum, diff_max, diff_count = 0.0, 0.0, 0
    # without a KL term a completion whose advantage is 0 has no gradient: one process leaves its group out of the
    # loss pass (several must make the same collective calls)
    skip = t.skip_zero_advantage and a.beta == 0 and dist.world_size == 1 and not dist.is_deepspeed
    live = [(mb, mb.with_signal(g) if skip else mb) for mb in micro_batches]
    passes = [(mb, piece) for mb, kept in live if kept is not None for piece in kept.pieces(g, settings.pass_tokens)]
    passed_rows = sum(piece.loss_mask.shape[0] for _, piece in passes)
    ent_sum, ent_count = skipped_entropy(live, g) if comparable else (0.0, 0.0)
    for i, (mb, piece) in enumerate(passes):
        with ledger.phase("backward"):
            dist.sync_gradients(model, i == len(passes) - 1)  # DDP / FSDP: communicate once, at the last pass
            logp = token_logprobs(
                model,
                piece.prompt_ids,
                piece.prompt_mask,
                piece.completion_ids,
                piece.completion_mask,
                loss_mask=piece.loss_mask,
                **settings.distribution,
                max_chunk_bytes=settings.chunk_bytes,
                group_size=g,
            )  # [N, T]
            old = piece.old_logp if piece.old_logp is not None else logp.detach()
            weights, mb_diff, m = None, 0.0, 0.0
            if piece.engine_logp is not None and comparable:
                s, m, c = logp_diff(old, piece.engine_logp, piece.loss_mask)
                diff_sum, diff_max, diff_count = diff_sum + s, max(diff_max, m), diff_count + c
                mb_diff = s / max(c, 1)
                if correction.endswith("truncate"):
                    weights, _ = rollout_correction(
                        old, piece.engine_logp, piece.loss_mask, mode=correction, cap=a.rollout_correction_cap
                    )
            piece_norm = replace(norm, micro_tokens=int(mb.loss_mask.sum().item())) if piece is not mb else norm
            out = loss_fn(
                logp,
                old,
                piece.advantages,
                piece.loss_mask,
                ref_logp=piece.ref_logp,
                beta=a.beta,
                eps_low=eps_low,
                eps_high=eps_high,
                norm=piece_norm,
                weights=weights,
            )
            # with rollouts generated ahead the difference also holds the policy's own movement since their version:
            # there the content probe, scored under the generating version, checks what the engine serves
            disagree = r.max_logp_diff is not None and not r.max_staleness and mb_diff > r.max_logp_diff
            if dist.broadcast_flag(disagree):  # checked before any update: the engine must sample this policy
                dist.discard_gradients(optimizer, out.loss)
                raise TinaError(
                    f"the {r.backend} engine and the trainer disagree: the sampled tokens' log-probs "
                    f"differ by more than rollout.max_logp_diff={r.max_logp_diff:g} per token on average "
                    f"(here {mb_diff:.3g}, max {m:.3g}); the engine is not sampling from the policy being "
                    "trained (stale or wrong adapter, other weights or dtype); the last checkpoint is intact"
                )
            if dist.broadcast_flag(not torch.isfinite(out.loss)):  # skip the whole step, on every process
                dist.discard_gradients(optimizer, out.loss)
                return {"loss": float(out.loss.detach()), "skipped": True}
            dist.backward(out.loss * dist.world_size, last=i == len(passes) - 1)
        trained += int(piece.loss_mask.sum().item())
        total_loss += float(out.loss.detach())
        share = piece.loss_mask.shape[0] / passed_rows  # metrics: mean over the rows in the loss pass
        ent_sum -= float((logp.detach() * piece.loss_mask).sum())
        ent_count += float(piece.loss_mask.sum())
        if weights is not None:
            out.metrics["rollout/is_weight_mean"] = float(
                (weights * piece.loss_mask).sum() / piece.loss_mask.sum().clamp(min=1)
            )
        for k, v in out.metrics.items():
            extra[k] = extra.get(k, 0.0) + v * share
    if not passes:  # no row carried a gradient: the optimizer still steps, on zero gradients, as after a pass
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    rows = sum(mb.loss_mask.shape[0] for mb in micro_batches)
    summed = dist.sum([total_loss, trained, diff_sum, diff_count, ent_sum, float(ent_count), *extra.values()])
    total_loss, trained, diff_sum, diff_count, ent_sum, ent_count = summed[:6]
    extra = {k: v / dist.world_size for k, v in zip(extra, summed[6:], strict=True)}
    if ent_count:
        extra["entropy"] = ent_sum / ent_count
    extra["loss/rows_left_out"] = (rows - passed_rows) / max(rows, 1)
    if diff_count:
        extra["rollout/logp_diff_mean"] = diff_sum / diff_count
        extra["rollout/logp_diff_max"] = max(dist.gather([diff_max]))
    with ledger.phase("backward"):
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = dist.clip_grad_norm(params, t.max_grad_norm or float("inf"))
        finite = bool(torch.isfinite(grad_norm))  # gradients are all-reduced, so every process agrees
        if finite:
            dist.step(optimizer)
        else:
            dist.discard_gradients(optimizer)
    out = {"loss": total_loss, "grad_norm": float(grad_norm), "skipped": not finite}
    return {**out, **extra, "tokens_trained": int(trained)}
