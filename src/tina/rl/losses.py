"""Policy-gradient objectives, one small function each, picked by name from :data:`LOSSES`.

Every objective shares the clipped surrogate per token (PPO/GRPO)::

    ratio_t = exp(logp_t - old_logp_t)                       # == 1 on-policy (num_iterations == 1)
    pg_t    = -min(ratio_t * A, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A)
    kl_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1     # k3 estimator, only when beta > 0
    loss_t  = w_t * pg_t + beta * kl_t                       # w_t: rollout-correction weights (default 1)

and differs in how token losses are aggregated (and, for GSPO, in the ratio):

* ``grpo``    — mean over each sequence's tokens, then mean over sequences (DeepSeekMath GRPO).
* ``dr_grpo`` — sum over all tokens / (sequences * max_completion_length): a constant normaliser, no length bias.
* ``dapo``    — sum over all tokens / all active tokens of the optimizer step (token-level mean, global).
* ``bnpo``    — token-level mean within each micro-batch, averaged over micro-batches.
* ``gspo``    — one importance ratio per sequence, exp(mean_t(logp_t - old_logp_t)), clipped per sequence.

Gradient accumulation must equal one big batch, so each function takes a :class:`Norm` with the optimizer step's
totals; its result is *summed* over micro-batches by the caller.  Without a ``Norm`` the micro-batch is the whole step.
``weights`` (optional, [B, T], no gradient) multiply each token's *policy-gradient* term: the importance weights that
correct for an engine whose samples come from a slightly different distribution
(tina.rollout.agreement.rollout_correction).  The KL term is not weighted (as in TRL and verl): it is a penalty on the
trainer's own policy against the reference, evaluated on the sampled tokens, not an estimate of the engine's
objective.
Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask``, ``weights`` are [B, T]; ``adv`` is [B].

Each objective's clip range defaults to its paper's (:data:`DEFAULT_CLIP`); the recipe loader fills unset
``algorithm.epsilon`` / ``epsilon_high`` from it, so the trainer always passes both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Norm:
    """Totals over the whole optimizer step (all micro-batches, all processes)."""

    n_seqs: int  # sequences
    n_tokens: int  # active (masked-in) completion tokens
    n_micro: int = 1  # micro-batches
    max_len: int = 1  # max_new_tokens, for Dr.GRPO's constant normaliser
    micro_tokens: int | None = None  # bnpo: active tokens of the whole micro-batch when it is passed in pieces


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float]


def local_norm(mask: torch.Tensor) -> Norm:
    return Norm(n_seqs=mask.shape[0], n_tokens=int(mask.sum().item()), n_micro=1, max_len=mask.shape[1])


def _surrogate(logp, old_logp, adv, eps_low, eps_high):
    ratio = torch.exp(logp - old_logp)  # [B, T]
    a = adv[:, None]  # [B, 1]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a
    pg = -torch.min(unclipped, clipped)  # [B, T]
    was_clipped = ((ratio < 1 - eps_low) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0))
    return pg, ratio, was_clipped


def _kl(logp, ref_logp):
    delta = ref_logp - logp  # [B, T]
    return torch.exp(delta) - delta - 1


def _token_losses(logp, old_logp, adv, mask, ref_logp, beta, eps_low, eps_high, weights=None):
    pg, ratio, was_clipped = _surrogate(logp, old_logp, adv, eps_low, eps_high)
    per_token = pg if weights is None else pg * weights  # the importance weights correct the policy gradient only
    metrics = {}
    active = mask.sum().clamp(min=1)
    if beta > 0 and ref_logp is not None:
        kl = _kl(logp, ref_logp)
        per_token = per_token + beta * kl
        metrics["kl"] = float((kl.detach() * mask).sum() / active)
    metrics["clip_ratio"] = float((was_clipped.float() * mask).sum() / active)
    metrics["ratio_mean"] = float((ratio.detach() * mask).sum() / active)
    return per_token, metrics


def grpo_loss(
    logp, old_logp, adv, mask, *, ref_logp=None, beta=0.0, eps_low=0.2, eps_high=0.2, norm=None, weights=None
):
    """Per-sequence token mean, then mean over sequences.

    Worked example (on-policy, ratio 1, beta 0): two sequences with A = [1, -1], lengths [2, 1]::

        seq 1: tokens lose -1, -1 -> mean -1;  seq 2: token loses +1 -> mean +1;  loss = (-1 + 1) / 2 = 0
    """
    norm = norm or local_norm(mask)
    per_token, metrics = _token_losses(logp, old_logp, adv, mask, ref_logp, beta, eps_low, eps_high, weights)
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B]
    return LossOutput(per_seq.sum() / norm.n_seqs, metrics)


def dr_grpo_loss(
    logp, old_logp, adv, mask, *, ref_logp=None, beta=0.0, eps_low=0.2, eps_high=0.2, norm=None, weights=None
):
    """Sum of token losses / (sequences * max completion length) — Dr.GRPO's length-unbiased constant normaliser."""
    norm = norm or local_norm(mask)
    per_token, metrics = _token_losses(logp, old_logp, adv, mask, ref_logp, beta, eps_low, eps_high, weights)
    return LossOutput((per_token * mask).sum() / (norm.n_seqs * norm.max_len), metrics)


def dapo_loss(
    logp, old_logp, adv, mask, *, ref_logp=None, beta=0.0, eps_low=0.2, eps_high=0.28, norm=None, weights=None
):
    """Token-level mean over every active token of the optimizer step; clip-higher via ``eps_high``."""
    norm = norm or local_norm(mask)
    per_token, metrics = _token_losses(logp, old_logp, adv, mask, ref_logp, beta, eps_low, eps_high, weights)
    return LossOutput((per_token * mask).sum() / max(1, norm.n_tokens), metrics)


def bnpo_loss(
    logp, old_logp, adv, mask, *, ref_logp=None, beta=0.0, eps_low=0.2, eps_high=0.2, norm=None, weights=None
):
    """Token-level mean within this micro-batch, averaged over the step's micro-batches."""
    norm = norm or local_norm(mask)
    per_token, metrics = _token_losses(logp, old_logp, adv, mask, ref_logp, beta, eps_low, eps_high, weights)
    tokens = norm.micro_tokens if norm.micro_tokens is not None else mask.sum().clamp(min=1)
    return LossOutput((per_token * mask).sum() / max(tokens, 1) / norm.n_micro, metrics)


def gspo_loss(
    logp, old_logp, adv, mask, *, ref_logp=None, beta=0.0, eps_low=3e-4, eps_high=4e-4, norm=None, weights=None
):
    """GSPO: sequence-level ratio s_i = exp(mean_t(logp - old_logp)), clipped per sequence, mean over sequences.

    Worked example: one sequence, A = 1, token log-ratios [0.2, 0.0] -> s = exp(0.1) = 1.105 > 1 + eps_high, so the
    clipped term (1 + eps_high) * A wins the min and the gradient is zero (the sequence counts as clipped).
    """
    norm = norm or local_norm(mask)
    lengths = mask.sum(-1).clamp(min=1)  # [B]
    seq_log_ratio = ((logp - old_logp) * mask).sum(-1) / lengths  # [B]
    ratio = torch.exp(seq_log_ratio)  # [B]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_seq = -torch.min(unclipped, clipped)  # [B]
    was_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    has_tokens = (mask.sum(-1) > 0).float()
    per_seq = per_seq * has_tokens
    if weights is not None:  # one weight per sequence: the mean of its tokens' (equal for sequence-level corrections)
        per_seq = per_seq * (weights * mask).sum(-1) / lengths
    metrics = {
        "clip_ratio": float((was_clipped.float() * has_tokens).sum() / has_tokens.sum().clamp(min=1)),
        "ratio_mean": float((ratio.detach() * has_tokens).sum() / has_tokens.sum().clamp(min=1)),
    }
    if beta > 0 and ref_logp is not None:
        kl = _kl(logp, ref_logp)
        per_seq = per_seq + beta * (kl * mask).sum(-1) / lengths
        metrics["kl"] = float((kl.detach() * mask).sum() / mask.sum().clamp(min=1))
    return LossOutput(per_seq.sum() / norm.n_seqs, metrics)


LossFn = Callable[..., LossOutput]

# (eps_low, eps_high) of each objective when the recipe leaves them unset: PPO/GRPO's symmetric 0.2; DAPO's
# "clip-higher" 0.28; GSPO's sequence-level ratio is a per-token geometric mean, hence its tiny range (3e-4, 4e-4).
DEFAULT_CLIP: dict[str, tuple[float, float]] = {
    "grpo": (0.2, 0.2),
    "dr_grpo": (0.2, 0.2),
    "dapo": (0.2, 0.28),
    "bnpo": (0.2, 0.2),
    "gspo": (3e-4, 4e-4),
}

LOSSES: dict[str, LossFn] = {
    "grpo": grpo_loss,
    "dr_grpo": dr_grpo_loss,
    "dapo": dapo_loss,
    "bnpo": bnpo_loss,
    "gspo": gspo_loss,
}
