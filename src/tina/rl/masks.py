"""Completion lengths and loss masks, built from where generation stopped — never from pad ids.

When the pad and end-of-sequence tokens share an id (common: ``pad_token = eos_token``), a mask built from
``ids != pad_id`` also drops the EOS token, so the model is never trained to stop.  Here the length of a completion is
the position of its first EOS *plus one* (the EOS is part of the completion), or the full width if it never stopped.
"""

from __future__ import annotations

import torch


def completion_lengths(completion_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (lengths [B], truncated [B] bool) for generated ids [B, T].

    >>> ids = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8]])   # eos = pad = 2
    >>> completion_lengths(ids, [2])
    (tensor([2, 4]), tensor([False,  True]))
    """
    batch, width = completion_ids.shape  # [B, T]
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= completion_ids == eos
    has_eos = is_eos.any(dim=1)  # [B]
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full((batch,), width))  # [B]
    lengths = torch.where(has_eos, first_eos + 1, torch.full((batch,), width))
    return lengths, ~has_eos


def mask_from_lengths(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B] lengths -> [B, T] float mask with ones on the first ``length`` positions.

    >>> mask_from_lengths(torch.tensor([2, 0, 3]), 3)
    tensor([[1., 1., 0.],
            [0., 0., 0.],
            [1., 1., 1.]])
    """
    positions = torch.arange(width, device=lengths.device)  # [T]
    return (positions[None, :] < lengths[:, None]).float()  # [B, T]
