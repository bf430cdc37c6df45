"""Group-relative advantages (GRPO) and their variants.

Rewards arrive flat, ``G`` completions per prompt with each group contiguous.  A ``nan`` reward marks an ungradable
completion (e.g. the gold answer could not be parsed): it is left out of its group's statistics and gets advantage 0,
and the caller also masks it out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AdvantageStats:
    frac_zero_std: float  # share of groups whose valid rewards are all equal (no learning signal)
    n_ungradable: int
    reward_std: float  # mean within-group std


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: str = "group", eps: float = 1e-4, batch_std: float | None = None
) -> tuple[torch.Tensor, AdvantageStats]:
    """A_i = (r_i - mean_group) / (std + eps), with ``scale`` choosing the std: per group, whole batch, or none.

    ``scale="batch"`` divides by the standard deviation of the optimizer step's rewards: pass ``batch_std`` computed
    over the whole step (every micro-batch and process, tina.train.step_reward_std); without it, that of ``rewards``.

    std is the unbiased (n-1) standard deviation, as in TRL/open-r1.  Worked example, one group of 4::

        r = [1, 0, 0, 1] -> mean 0.5, std 0.5774 -> A = [0.866, -0.866, -0.866, 0.866]

    >>> adv, _ = group_advantages(torch.tensor([1., 0., 0., 1.]), 4)
    >>> [round(a, 3) for a in adv.tolist()]
    [0.866, -0.866, -0.866, 0.866]
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    valid = ~torch.isnan(rewards)  # [N]
    r = torch.where(valid, rewards, torch.zeros_like(rewards)).view(-1, group_size)  # [B, G]
    v = valid.view(-1, group_size).float()  # [B, G]
    count = v.sum(dim=1, keepdim=True)  # [B, 1]
    mean = (r * v).sum(dim=1, keepdim=True) / count.clamp(min=1)  # [B, 1]
    var = (((r - mean) ** 2) * v).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    std = var.sqrt()  # [B, 1]
    centred = (r - mean) * v  # [B, G]
    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        if batch_std is None:
            flat = rewards[valid]
            batch_std = float(flat.std()) if flat.numel() > 1 else 0.0
        adv = centred / (batch_std + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"unknown reward scaling {scale!r}")
    has_signal = (count.squeeze(1) >= 2) & (std.squeeze(1) > 0)
    stats = AdvantageStats(
        frac_zero_std=float((~has_signal).float().mean()),
        n_ungradable=int((~valid).sum()),
        reward_std=float(std.mean()),
    )
    return adv.reshape(-1), stats
