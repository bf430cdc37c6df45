"""What one step hands the loss: the micro-batches of a rollout with their masks, advantages and stored log-probs
(:class:`MicroBatch`), and a graded rollout (:class:`Scored`).  Built by :func:`tina.train.micro_batches`; kept in a
checkpoint while ``algorithm.num_iterations > 1`` reuses them (:func:`state` / :func:`from_state`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
    engine_logp: torch.Tensor | None = None  # [N, T] the engine's log-probs of the sampled tokens
    # [N, T] from lengths: the attention mask (ones, then zeros).  None (a hand-built micro-batch): the loss mask's
    # extent -- every position up to a row's last loss token, holes filled
    completion_mask: torch.Tensor | None = None

    def __post_init__(self):
        if self.completion_mask is None:
            self.completion_mask = (self.loss_mask.flip(-1).cumsum(-1) > 0).flip(-1).to(self.loss_mask.dtype)

    def pieces(self, group: int, max_tokens: int | None) -> list[MicroBatch]:
        """The micro-batch in row pieces of whole prompt groups with at most ``max_tokens`` prompt + completion
        tokens each (at least one group), for the loss pass; the update is the same (a sum over tokens).

        How many rows a piece holds depends only on the micro-batch's shape, so every training process makes the same
        number of passes (FSDP gathers weights in each).  The groups go into pieces longest completion first, and each
        piece is cut to its own widths (its longest completion, its prompts' padding columns dropped): a piece of short
        completions computes no padding for a long one elsewhere in the micro-batch.
        """
        rows = self.loss_mask.shape[0]
        per_row = self.prompt_ids.shape[1] + self.completion_ids.shape[1]
        group = group if rows % group == 0 else 1
        step = rows if max_tokens is None else max(group, max_tokens // per_row // group * group)
        if step >= rows:
            return [self]
        lengths = self.completion_mask.sum(-1).long().view(-1, group).amax(-1)  # [groups] longest completion
        order = sorted(range(rows // group), key=lambda g: -int(lengths[g]))  # stable: ties keep their order
        ranked = torch.tensor([g * group + j for g in order for j in range(group)])
        return [self._rows(ranked[i : i + step]) for i in range(0, rows, step)]

    def signal_rows(self, group: int) -> torch.Tensor:
        """[N] bool: the rows of prompt groups that carry a gradient (a row with a non-zero advantage in the loss)."""
        rows = self.loss_mask.shape[0]
        group = group if rows % group == 0 else 1
        live = ((self.advantages != 0) & (self.loss_mask.sum(-1) > 0)).view(-1, group).any(-1)  # [groups]
        return live.repeat_interleave(group)

    def with_signal(self, group: int) -> MicroBatch | None:
        """The prompt groups that carry a gradient (:meth:`signal_rows`), cut to their widths; None when no group does.
        Without a KL term a completion whose advantage is 0 adds exactly 0 to the loss and to its gradient (its
        policy-gradient term is ``adv * ratio``), so the loss pass can leave it out."""
        keep = self.signal_rows(group)
        if bool(keep.all()):
            return self
        if not bool(keep.any()):
            return None
        return self._rows(keep.nonzero().squeeze(1).cpu())

    def _rows(self, index: torch.Tensor) -> MicroBatch:
        """These rows, cut to their own longest completion and without their prompts' all-padding columns."""
        completion_mask = self.completion_mask[index]
        width = max(1, int(completion_mask.sum(-1).max()))
        prompt_mask = self.prompt_mask[index]
        lead = int((prompt_mask.sum(0) == 0).long().cumprod(0).sum())  # all-padding columns on the left
        lead = min(lead, prompt_mask.shape[1] - 1)

        def cut(t, columns):
            return None if t is None else t[index.to(t.device)][:, columns]

        return MicroBatch(
            prompt_ids=cut(self.prompt_ids, slice(lead, None)),
            prompt_mask=cut(self.prompt_mask, slice(lead, None)),
            completion_ids=cut(self.completion_ids, slice(0, width)),
            loss_mask=cut(self.loss_mask, slice(0, width)),
            advantages=self.advantages[index.to(self.advantages.device)],
            old_logp=cut(self.old_logp, slice(0, width)),
            ref_logp=cut(self.ref_logp, slice(0, width)),
            engine_logp=cut(self.engine_logp, slice(0, width)),
            completion_mask=cut(self.completion_mask, slice(0, width)),
        )


@dataclass
class Scored:
    """A step's rollout after grading: rewards, advantages, which completions enter the loss, and its metrics
    ((sum, count) per rollout metric, pooled over processes by :func:`tina.records.step_record`)."""

    rewards: torch.Tensor  # [N] (nan: ungradable)
    advantages: torch.Tensor  # [N]
    keep: torch.Tensor  # [N] bool
    metrics: dict


def state(mb: MicroBatch) -> dict:
    """A micro-batch as a plain dict of CPU tensors (a checkpoint's ``buffer``; gathered from every process)."""
    values = {f.name: getattr(mb, f.name) for f in dataclasses.fields(mb)}
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in values.items()}


def from_state(saved: dict, device) -> MicroBatch:
    """The micro-batch :func:`state` saved, on ``device`` (keys it does not know are ignored)."""
    names = {f.name for f in dataclasses.fields(MicroBatch)}
    return MicroBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in saved.items() if k in names})


def skipped_entropy(live: list[tuple[MicroBatch, MicroBatch | None]], group: int) -> tuple[float, float]:
    """(-sum of log-probs, token count) of the rows the loss pass leaves out (:meth:`MicroBatch.with_signal`), from
    the engine's log-probs of the sampled distribution.

    The step's ``entropy`` is ``-mean(log pi(token))`` over its completion tokens: they were sampled from the policy
    (at the rollout temperature, which the log-probs use too), so E[-log pi(x)] is exactly the entropy -- an unbiased
    Monte-Carlo estimate that needs no [B, T, V] softmax.  The trainer's log-probs give it for the rows in the loss
    pass, these for the others, so it still covers every completion.

    >>> mb = MicroBatch(torch.zeros(2, 1), torch.ones(2, 1), torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2),
    ...                 None, None, engine_logp=torch.log(torch.tensor([[0.5, 0.25], [1.0, 0.5]])))
    >>> total, count = skipped_entropy([(mb, None)], group=2)
    >>> round(total / count, 4), count
    (0.6931, 4.0)
    """
    total, count = 0.0, 0.0
    for mb, kept in live:
        if kept is mb or mb.engine_logp is None:
            continue
        mask = mb.loss_mask * (~mb.signal_rows(group)).to(mb.loss_mask.dtype)[:, None]  # [N, T] the rows left out
        total, count = total - float((mb.engine_logp * mask).sum()), count + float(mask.sum())
    return total, count
