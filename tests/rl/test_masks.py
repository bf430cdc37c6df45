"""Masks come from generation lengths, never from pad ids (pad == eos would drop the EOS from the loss)."""

import torch

from tina.rl.masks import completion_lengths, mask_from_lengths


def test_pad_equal_to_eos_keeps_the_eos_token_in_the_mask():
    eos = pad = 2
    ids = torch.tensor([[7, 8, eos, pad, pad], [7, eos, pad, pad, pad], [7, 8, 9, 10, 11]])  # [B, T]
    lengths, truncated = completion_lengths(ids, [eos])
    assert lengths.tolist() == [3, 2, 5]  # the EOS at index 2 (row 0) and 1 (row 1) is counted
    assert truncated.tolist() == [False, False, True]
    mask = mask_from_lengths(lengths, ids.shape[1])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    # the pad-based mask this replaces would have dropped the EOS tokens:
    assert (ids != pad).float().sum().item() == 2 + 1 + 5 < mask.sum().item()


def test_any_of_several_eos_ids_stops_and_an_immediate_eos_has_length_one():
    ids = torch.tensor([[3, 4, 5], [9, 3, 3], [4, 4, 4]])
    lengths, truncated = completion_lengths(ids, [5, 9])
    assert lengths.tolist() == [3, 1, 3]
    assert truncated.tolist() == [False, False, True]


def test_mask_from_zero_length():
    assert mask_from_lengths(torch.tensor([0]), 3).tolist() == [[0, 0, 0]]
