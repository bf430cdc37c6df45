"""What one step hands the loss: the micro-batches of a rollout with their masks, advantages and stored log-probs
(:class:`MicroBatch`), and a graded rollout (:class:`Scored`).  Built by :func:`tina.train.micro_batches`; kept in a
checkpoint while ``algorithm.num_iterations > 1`` reuses them (:func:`state` / :func:`from_state`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class MicroBatch:
    """One micro-batch of rollouts with everything the loss needs (stored for num_iterations > 1).

    Two masks: ``completion_mask`` comes from the completions' lengths and is what the model attends to;
    ``loss_mask`` is which tokens enter the loss (zero rows, holes) and never reaches the attention.
    """

    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T]
    # [N, T] the completion mask, with zero rows for ungradable / masked-truncated completions and holes where a
    # masking rollout correction drops tokens
    loss_mask: torch.Tensor
    advantages: torch.Tensor  # [N]
    old_logp: torch.Tensor | None  # [N, T]  the trainer's log-probs at rollout time (when stored)
    ref_logp: torch.Tensor | None  # [N, T]
    metrics: dict = field(default_factory=dict)  # (sum, count) per rollout metric; the step's first micro-batch
    engine_logp: torch.Tensor | None = None  # [N, T] the engine's log-probs of the sampled tokens
    # [N, T] from lengths: the attention mask (ones, then zeros).  None (a hand-built micro-batch): the loss mask's
    # extent -- every position up to a row's last loss token, holes filled
    completion_mask: torch.Tensor | None = None

    def __post_init__(self):
        if self.completion_mask is None:
            self.completion_mask = (self.loss_mask.flip(-1).cumsum(-1) > 0).flip(-1).to(self.loss_mask.dtype)

    def pieces(self, group: int, max_tokens: int | None) -> list[MicroBatch]:
        """The micro-batch in row pieces of whole prompt groups with at most ``max_tokens`` prompt + completion
        tokens each (at least one group), for the loss pass; the update is the same."""
        rows = self.loss_mask.shape[0]
        per_row = self.prompt_ids.shape[1] + self.completion_ids.shape[1]
        step = rows if max_tokens is None else max(group, max_tokens // per_row // group * group)
        if step >= rows:
            return [self]
        rowwise = (
            "prompt_ids",
            "prompt_mask",
            "completion_ids",
            "loss_mask",
            "advantages",
            "old_logp",
            "ref_logp",
            "engine_logp",
            "completion_mask",
        )

        def cut(t, sl):
            return None if t is None else t[sl]

        return [
            MicroBatch(**{f: cut(getattr(self, f), slice(i, i + step)) for f in rowwise}, metrics={})
            for i in range(0, rows, step)
        ]


@dataclass
class Scored:
    """A step's rollout after grading: rewards, advantages, which completions enter the loss, and metrics."""

    rewards: torch.Tensor  # [N] (nan: ungradable)
    advantages: torch.Tensor  # [N]
    keep: torch.Tensor  # [N] bool
    metrics: dict


def state(mb: MicroBatch) -> dict:
    """A micro-batch as a plain dict of tensors (a checkpoint's ``buffer``)."""
    return {f.name: getattr(mb, f.name) for f in dataclasses.fields(mb)}


def from_state(saved: dict, device) -> MicroBatch:
    """The micro-batch :func:`state` saved, on ``device`` (keys it does not know are ignored)."""
    names = {f.name for f in dataclasses.fields(MicroBatch)}
    return MicroBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in saved.items() if k in names})
