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
    raise TinaError(f"step {version + 1}: stale adapter in the {rollout.engine} engine: {problem}; the rollouts would "
                    "not come from the policy being trained, so the run stops here (the last checkpoint is intact)")


def rollout_correction(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, *, mode: str,
                       cap: float) -> tuple[torch.Tensor, torch.Tensor]:
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
    """Within the block the model's LoRA tensors hold ``state`` (PEFT state-dict keys; None: unchanged); restored
    bit for bit afterwards."""
    if state is None:
        yield
        return
    from peft import set_peft_model_state_dict

    from tina.rollout.adapters import adapter_state

    saved = adapter_state(model)
    set_peft_model_state_dict(model, state)
    try:
        yield
    finally:
        set_peft_model_state_dict(model, saved)


def random_adapter(model, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """Random LoRA tensors for the canary: A ~ N(0, 1/sqrt(in)), B ~ N(0, scale) (B is zero at init: the adapter
    would equal the base)."""
    from tina.rollout.adapters import adapter_state

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in adapter_state(model).items():
        if "lora_A" in name:
            out[name] = (torch.randn(t.shape, generator=g) / math.sqrt(t.shape[-1])).to(t.dtype)
        elif "lora_B" in name:
            out[name] = (torch.randn(t.shape, generator=g) * scale).to(t.dtype)
        else:
            out[name] = t.clone()
    return out


def canary(engine, model, handover, prompts: list[list[int]], *, tolerance: float, max_new_tokens: int = 16,
           temperature: float = 1.0, logprob_fn=None, scale: float = 0.05) -> dict:
    """Start-up check that ``engine`` serves exactly the adapter it is handed.

    For the base model and two random adapters A and B: the engine samples ``prompts`` (seeded) and the trainer
    scores the same tokens; the mean |difference| of the log-probs must be below ``tolerance``.  Then the engine's
    tokens under A scored by the trainer under B must differ by more than ``tolerance`` and by much more than the
    matching differences -- otherwise the check could not tell adapters apart, and says so.  The model's own adapter
    weights and every RNG are restored afterwards.  Returns the measured differences.
    """
    from tina.checkpoint import rng_state, set_rng_state

    saved = rng_state()
    # seeded sampling at the rollout temperature: both sides report log-probs of the same tempered distribution
    sampling = Sampling(n=1, max_new_tokens=max_new_tokens, temperature=temperature, seed=0)
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
        raise TinaError(f"engine check at start-up failed: the {engine.name} engine's log-probs differ from the "
                        f"trainer's by {results[which]:.3g} per token (mean) for {'the base model' if which == 'base' else 'a random adapter ' + which}, "
                        f"above rollout.canary_tolerance={tolerance:g}; the engine does not serve the model the "
                        "trainer trains (wrong weights, adapter not applied, or another tokenizer/template)")
    if results["A_vs_B"] <= max(tolerance, 5 * worst):
        raise TinaError(f"engine check at start-up failed: serving adapter A instead of B changes the log-probs by "
                        f"only {results['A_vs_B']:.3g} per token, not clearly more than the engine/trainer noise "
                        f"({worst:.3g}); the {engine.name} engine may be ignoring adapters")
    return results


def _mean_diff(rollout: Rollout, trainer_logp: torch.Tensor) -> float:
    mask = rollout.completion_mask
    total, _, count = logp_diff(trainer_logp, rollout.logprobs, mask)
    return total / max(count, 1)
