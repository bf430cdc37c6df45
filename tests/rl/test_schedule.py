"""Learning-rate schedules, with the multipliers worked out by hand (step is the 0-based optimizer step)."""

from __future__ import annotations

import math

import pytest
import torch

from tina.rl.schedule import lr_multiplier, warmup_steps_for


def lr(step, **kw):
    return lr_multiplier(step, **kw)


def test_constant_is_one_after_warmup():
    assert [lr(s, total_steps=10, kind="constant") for s in (0, 5, 9, 10)] == [1.0] * 4
    # warmup 4: (step + 1) / 4 -> 0.25, 0.5, 0.75, 1.0, then 1
    assert [lr(s, total_steps=10, kind="constant", warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]


def test_linear_goes_straight_to_zero():
    # no warmup, total 10: 1 - step/10
    assert [lr(s, total_steps=10, kind="linear") for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    # warmup 2: step 2 starts the decay at 1, step 6 is halfway ((6-2)/(10-2) = 0.5)
    assert lr(6, total_steps=10, kind="linear", warmup_steps=2) == 0.5


def test_cosine_half_way_is_one_half_and_ends_at_zero():
    # 0.5 * (1 + cos(pi * step / 10)): step 0 -> 1; 5 -> 0.5; 10 -> 0; 2.5/10 -> 0.5*(1 + cos(pi/4)) = 0.853553
    assert lr(0, total_steps=10, kind="cosine") == 1.0
    assert lr(5, total_steps=10, kind="cosine") == pytest.approx(0.5)
    assert lr(10, total_steps=10, kind="cosine") == pytest.approx(0.0)
    assert lr(5, total_steps=20, kind="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr(50, total_steps=10, kind="cosine") == pytest.approx(0.0)  # progress is clamped, no swing back up


def test_cosine_with_min_lr_and_warmup_ratio():
    # total 100, warmup_ratio 0.1 -> ceil(10.0) = 10 warmup steps: multipliers 0.1, 0.2, ..., 1.0 on steps 0..9
    warm = warmup_steps_for(100, 0.1)
    assert warm == 10
    kw = dict(total_steps=100, kind="cosine_with_min_lr", warmup_steps=warm, min_ratio=0.1)
    assert [round(lr(s, **kw), 6) for s in range(10)] == [round(0.1 * (s + 1), 6) for s in range(10)]
    assert lr(10, **kw) == pytest.approx(1.0)  # decay starts at the peak
    # step 55: progress (55 - 10) / (100 - 10) = 0.5 -> cosine 0.5 -> 0.1 + 0.9 * 0.5 = 0.55
    assert lr(55, **kw) == pytest.approx(0.55)
    # the floor: 0.1 at the end (and after it)
    assert lr(100, **kw) == pytest.approx(0.1)
    assert lr(120, **kw) == pytest.approx(0.1)


def test_warmup_steps_round_up_like_transformers():
    # transformers: math.ceil(num_training_steps * warmup_ratio)
    assert warmup_steps_for(1500, 0.1) == 150
    assert warmup_steps_for(360, 0.1) == 36
    assert warmup_steps_for(8263, 0.1) == 827  # 826.3 -> 827
    assert warmup_steps_for(10, 0.0) == 0


def test_tinas_stretched_schedule_stops_with_the_learning_rate_still_high():
    # Tina-Open-RS2: schedule over max_steps 1500, stop at 850, warmup ceil(150.0) = 150, min_lr_rate 0.1.
    # Last step run is 849 (0-based): progress (849 - 150) / (1500 - 150) = 699 / 1350 = 0.517778
    #   cosine = 0.5 * (1 + cos(pi * 0.517778)) = 0.5 * (1 - 0.055822) = 0.472089
    #   multiplier = 0.1 + 0.9 * 0.472089 = 0.524880  -> still about half the peak, far above the 0.1 floor.
    kw = dict(total_steps=1500, kind="cosine_with_min_lr", warmup_steps=warmup_steps_for(1500, 0.1), min_ratio=0.1)
    at_stop = lr(849, **kw)
    assert at_stop == pytest.approx(0.524880, abs=1e-6)
    assert at_stop > 0.5 > 0.1
    # Had the schedule been laid over the 850 steps actually run, the last step would sit at the floor:
    # warmup 85; progress (849 - 85) / (850 - 85) = 764 / 765 -> 0.1 + 0.9 * 0.5 * (1 + cos(pi * 0.998693)) = 0.100004
    unstretched = lr(
        849, total_steps=850, kind="cosine_with_min_lr", warmup_steps=warmup_steps_for(850, 0.1), min_ratio=0.1
    )
    assert unstretched == pytest.approx(0.100004, abs=1e-6)


def test_the_trainers_lambda_scheduler_follows_the_multiplier():
    """make_scheduler wires lr_multiplier into torch's LambdaLR: lr before optimizer step k is peak * m(k)."""
    from tina.build import make_scheduler
    from tina.config import load_config

    cfg = load_config("tina-limr")  # 1e-6 peak, schedule over 360 steps, warmup 36, floor 0.1, stop at 180
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=cfg.train.learning_rate)
    sched = make_scheduler(opt, cfg.train)
    seen = []
    for _ in range(cfg.last_step):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(1e-6 / 36)  # (0 + 1) / 36 of the peak on the first step
    assert seen[35] == pytest.approx(1e-6)  # warmup done
    # last step run, 179: progress (179 - 36) / 324 = 0.441358 -> 0.1 + 0.9 * 0.5 * (1 + cos(pi * 0.441358))
    expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 143 / 324))
    assert seen[179] == pytest.approx(1e-6 * expected)
    assert seen[179] > 0.5e-6
