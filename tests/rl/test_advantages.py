"""Group-relative advantages, checked against values worked out by hand."""

import math

import pytest
import torch

from tina.rl.advantages import group_advantages


def test_two_groups_by_hand():
    # group 1: r = [1, 0, 0, 0]  mean 0.25, unbiased var = (0.5625 + 3*0.0625)/3 = 0.25, std 0.5
    #          A = (r - 0.25) / (0.5 + 1e-4) = [1.4997, -0.49990, -0.49990, -0.49990]
    # group 2: r = [2, 2, 2, 2]  std 0 -> A = 0 (no signal; counted in frac_zero_std)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv, stats = group_advantages(rewards, 4)
    expected = [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert stats.frac_zero_std == 0.5
    assert stats.n_ungradable == 0


def test_ungradable_rewards_are_left_out_of_the_group_statistics():
    # group: [1, nan, 0, 1] -> valid [1, 0, 1]: mean 2/3, var = (1/9 + 4/9 + 1/9)/2 = 1/3, std 0.57735
    rewards = torch.tensor([1.0, math.nan, 0.0, 1.0])
    adv, stats = group_advantages(rewards, 4)
    std = math.sqrt(1 / 3)
    assert adv.tolist() == pytest.approx(
        [(1 / 3) / (std + 1e-4), 0.0, (-2 / 3) / (std + 1e-4), (1 / 3) / (std + 1e-4)], abs=1e-6
    )
    assert stats.n_ungradable == 1


def test_dr_grpo_scaling_none_only_centres():
    adv, _ = group_advantages(torch.tensor([3.0, 1.0, 0.0, 0.0]), 2, scale="none")
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]


def test_batch_scaling_uses_one_std_for_all_groups():
    r = torch.tensor([1.0, 0.0, 3.0, 1.0])
    adv, _ = group_advantages(r, 2, scale="batch")
    batch_std = r.std().item()  # unbiased std of [1, 0, 3, 1] = 1.2583
    assert adv.tolist() == pytest.approx(
        [0.5 / (batch_std + 1e-4), -0.5 / (batch_std + 1e-4), 1.0 / (batch_std + 1e-4), -1.0 / (batch_std + 1e-4)],
        abs=1e-6,
    )


def test_rewards_must_split_into_groups():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), 2)
