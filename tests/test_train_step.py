"""The step's pieces through the trainer's own functions: per-objective clip defaults reach update(); batch reward
scaling uses the whole step; one engine call per step; the ledger counts every process's tokens."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tina import cli
from tina.batch import MicroBatch
from tina.config import load_config
from tina.ledger import Ledger
from tina.rl.advantages import group_advantages
from tina.rl.losses import DEFAULT_CLIP
from tina.train import step_reward_std, update

BASE = {
    "model": {"name_or_path": "builtin:tiny-random", "dtype": "float32", "attn_implementation": "sdpa"},
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "rollout": {"num_generations": 2, "max_new_tokens": 8},
    "train": {
        "max_steps": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "device": "cpu",
        "probe_prompt": "",
        "max_grad_norm": 0.0,
    },
}


def cfg(**algorithm):
    return load_config({**BASE, "algorithm": algorithm})


@pytest.mark.parametrize("objective", ["grpo", "dr_grpo", "dapo", "bnpo", "gspo"])
def test_unset_clip_range_resolves_to_the_objectives_own(objective):
    a = cfg(objective=objective).algorithm
    assert (a.epsilon, a.epsilon_high) == DEFAULT_CLIP[objective]
    assert DEFAULT_CLIP["dapo"] == (0.2, 0.28) and DEFAULT_CLIP["gspo"] == (3e-4, 4e-4)
    set_ = cfg(objective=objective, epsilon=0.1, epsilon_high=0.3).algorithm
    assert (set_.epsilon, set_.epsilon_high) == (0.1, 0.3)  # what the recipe says wins


def test_tina_check_prints_the_resolved_clip(capsys):
    assert cli.main(["check", "demo", "--set", "algorithm.objective=dapo"]) == 0
    out = capsys.readouterr().out
    assert "epsilon: 0.2" in out and "epsilon_high: 0.28" in out


class _Policy(torch.nn.Module):
    """A stand-in for the model in update(): log-probs come from one parameter per token (no transformer needed)."""

    def __init__(self, logp):
        super().__init__()
        self.logits = torch.nn.Parameter(logp.clone())


def _clip_ratio_through_update(objective: str, ratio: float) -> float:
    """Run update() on one micro-batch whose live/old probability ratio is ``ratio`` for every token (A > 0)."""
    import tina.train as train_mod

    old = torch.log(torch.full((2, 3), 0.5))
    policy = _Policy(old + math.log(ratio))
    mask = torch.ones(2, 3)
    mb = MicroBatch(
        torch.zeros(2, 1, dtype=torch.long),
        torch.ones(2, 1, dtype=torch.long),
        torch.zeros(2, 3, dtype=torch.long),
        mask,
        torch.tensor([1.0, 1.0]),
        old,
        None,
    )
    real = train_mod.token_logprobs
    train_mod.token_logprobs = lambda model, *a, **k: model.logits  # the policy's log-probs, as if from a forward
    try:
        out = update(
            policy,
            [mb],
            cfg(objective=objective, num_iterations=2),
            torch.optim.SGD(policy.parameters(), lr=0.0),
            Ledger(),
        )
    finally:
        train_mod.token_logprobs = real
    return out["clip_ratio"]


def test_dapo_clips_higher_and_gspo_tightly_by_default_in_update():
    # ratio 1.25: above grpo's 1 + 0.2 (clipped), below dapo's 1 + 0.28 (not clipped)
    assert _clip_ratio_through_update("grpo", 1.25) == 1.0
    assert _clip_ratio_through_update("dapo", 1.25) == 0.0
    # ratio 1.001: inside every token-level range, outside gspo's sequence-level 1 + 4e-4
    assert _clip_ratio_through_update("grpo", 1.001) == 0.0
    assert _clip_ratio_through_update("gspo", 1.001) == 1.0


class _TwoProcesses:
    """A Dist whose sum adds the other process's values (what all_reduce would do)."""

    def __init__(self, other: list[float]):
        self.other = other

    def sum(self, values):
        return [a + b for a, b in zip(values, self.other, strict=True)]


def test_batch_reward_scaling_uses_the_whole_step_over_processes():
    mine = torch.tensor([1.0, 0.0, 1.0, 1.0])
    theirs = torch.tensor([0.0, 0.0, 5.0, 3.0])
    stats = [4.0, float(theirs.sum()), float((theirs**2).sum())]
    std = step_reward_std(mine, _TwoProcesses(stats))
    assert std == pytest.approx(float(torch.cat([mine, theirs]).std()))  # unbiased std of all 8 rewards
    adv, _ = group_advantages(mine, 2, scale="batch", batch_std=std)
    local, _ = group_advantages(mine, 2, scale="batch")  # the old behaviour: this micro-batch's std only
    assert not torch.allclose(adv, local)
    assert adv[2].item() == pytest.approx(0.0) and adv[0].item() == pytest.approx(0.5 / (std + 1e-4))


@pytest.mark.slow
def test_batch_scaling_does_not_depend_on_gradient_accumulation(tmp_path):
    """scale_rewards: batch divides by the std of the whole step: 1 micro-batch of 8 == 2 micro-batches of 4."""
    from tina.train import train

    results = []
    for batch, ga in ((8, 1), (4, 2)):
        c = load_config(
            {
                **BASE,
                "algorithm": {"scale_rewards": "batch"},
                "rollout": {"num_generations": 4, "max_new_tokens": 8},
                "rewards": {"accuracy": {"weight": 1.0}, "format": {"weight": 1.0}},
                "train": {
                    **BASE["train"],
                    "batch_size": batch,
                    "gradient_accumulation_steps": ga,
                    "max_steps": 2,
                    "save_steps": 2,
                },
            }
        )
        results.append(train(c, tmp_path / f"ga{ga}", progress=False, keep_model=True))
    a, b = (dict(r.model.named_parameters()) for r in results)
    for name, p in a.items():
        if p.requires_grad:
            assert torch.allclose(p, b[name], atol=1e-6), name


def test_one_engine_call_per_step(tmp_path, monkeypatch):
    """Every prompt of the step (all micro-batches) goes to the engine in ONE call; only the loss is micro-batched.
    The step's settings (rollout correction, scored distribution, chunk and pass sizes) are resolved once per run."""
    import tina.settings
    from tina.rollout.hf import HFEngine
    from tina.train import train

    calls, resolved = [], []
    real = HFEngine.generate
    real_mode = tina.settings.rollout_correction_mode

    def counting(self, prompts, sampling, keys=None):
        calls.append(len(prompts))
        return real(self, prompts, sampling, keys)

    def counting_mode(cfg):
        resolved.append(cfg.algorithm.rollout_correction)
        return real_mode(cfg)

    monkeypatch.setattr(HFEngine, "generate", counting)
    monkeypatch.setattr(tina.settings, "rollout_correction_mode", counting_mode)
    c = load_config(
        {
            **BASE,
            "train": {
                **BASE["train"],
                "batch_size": 4,
                "gradient_accumulation_steps": 3,
                "max_steps": 2,
                "save_steps": 2,
            },
            "rollout": {"check_engine": False, "num_generations": 2, "max_new_tokens": 8},
        }
    )
    train(c, tmp_path / "run", progress=False)
    assert calls == [2 * 3, 2 * 3]  # 2 prompts per micro-batch x 3 micro-batches, once per step
    assert resolved == ["auto"]  # once for the run, not once per step or per micro-batch


def test_dynamic_sampling_keeps_only_groups_with_signal(tmp_path):
    """DAPO's dynamic sampling: zero-variance groups are replaced by groups of fresh prompts (extra engine calls)."""
    from tina.train import train

    c = load_config(
        "demo",
        [
            "train.max_steps=3",
            "train.save_steps=3",
            "train.batch_size=32",
            "algorithm.dynamic_sampling=true",
            "algorithm.objective=dapo",
            "train.probe_prompt=''",
        ],
    )
    plain = load_config(
        "demo",
        [
            "train.max_steps=3",
            "train.save_steps=3",
            "train.batch_size=32",
            "algorithm.objective=dapo",
            "train.probe_prompt=''",
        ],
    )
    dyn = train(c, tmp_path / "dyn", progress=False).metrics
    ref = train(plain, tmp_path / "plain", progress=False).metrics
    # the first step's own prompts and samples are the same (later steps train on other groups: other policies) ...
    assert dyn[0]["reward"] == ref[0]["reward"] and dyn[0]["frac_reward_zero_std"] == ref[0]["frac_reward_zero_std"]
    for d in dyn:  # ... and every step is refilled where its own groups lacked signal
        assert d["dynamic/groups_with_signal"] >= 1 - d["frac_reward_zero_std"]
    assert any(d["dynamic/rounds"] > 0 for d in dyn) and all(
        d["tokens"] >= r["tokens"] for d, r in zip(dyn, ref, strict=True)
    )


@pytest.mark.parametrize("at_temperature", [True, False])
def test_update_scores_the_sampled_distribution_with_top_k_and_top_p(monkeypatch, at_temperature):
    """The loss pass scores tokens under the distribution they were sampled from (T, top-k, top-p); with
    logprobs_at_temperature: false (Tina's trainer) under the raw logits -- then the engine's log-probs (of the
    truncated distribution) are not comparable, and no correction or check uses them, even at T = 1."""
    import tina.train as train_mod
    from tina.settings import comparable_with_engine, rollout_correction_mode

    seen = []

    class Seen(Exception):
        pass

    def spy(*args, temperature, top_k, top_p, **kwargs):
        seen.append((temperature, top_k, top_p))
        raise Seen

    monkeypatch.setattr(train_mod, "token_logprobs", spy)
    c = load_config(
        {
            **BASE,
            "algorithm": {"logprobs_at_temperature": at_temperature, "rollout_correction": "auto"},
            "rollout": {"num_generations": 2, "max_new_tokens": 8, "temperature": 0.7, "top_k": 5, "top_p": 0.9},
        }
    )
    ones = torch.ones(2, 3, dtype=torch.long)
    mb = MicroBatch(ones, ones, ones, ones.float(), torch.tensor([1.0, -1.0]), None, None)
    layer = torch.nn.Linear(1, 1)
    with pytest.raises(Seen):
        update(layer, [mb], c, torch.optim.SGD(layer.parameters(), lr=0.1), Ledger())
    assert seen == [(0.7, 5, 0.9) if at_temperature else (1.0, 0, 1.0)]
    on_vllm = replace(c, rollout=replace(c.rollout, backend="vllm"))
    assert rollout_correction_mode(on_vllm) == ("token_truncate" if at_temperature else "none")
    at_one = load_config(
        {
            **BASE,
            "algorithm": {"logprobs_at_temperature": False},
            "rollout": {"num_generations": 2, "max_new_tokens": 8, "top_p": 0.9},
        }
    )
    at_one = replace(at_one, rollout=replace(at_one.rollout, backend="vllm"))
    assert not comparable_with_engine(at_one) and rollout_correction_mode(at_one) == "none"


def test_micro_batch_pieces_carry_both_masks():
    """The attention mask (from lengths) and the loss mask (with holes) are cut together; a hand-built micro-batch
    without a completion mask attends to its loss mask's extent (holes filled)."""
    ids = torch.arange(4 * 3).view(4, 3)
    loss = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    full = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    mb = MicroBatch(
        ids, torch.ones(4, 1, dtype=torch.long), ids, loss, torch.zeros(4), None, None, completion_mask=full
    )
    pieces = mb.pieces(group=2, max_tokens=8)  # 4 tokens per row: two rows per piece
    assert len(pieces) == 2
    assert torch.equal(torch.cat([p.completion_mask for p in pieces]), full)
    assert torch.equal(torch.cat([p.loss_mask for p in pieces]), loss)
    bare = MicroBatch(ids, torch.ones(4, 1, dtype=torch.long), ids, loss, torch.zeros(4), None, None)
    assert bare.completion_mask.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]]


def test_micro_batch_pieces_are_cut_to_their_own_widths_longest_groups_first():
    """Pieces hold whole groups, longest completion first, each cut to its own longest completion and without its
    prompts' all-padding columns: every row appears once, unchanged up to its length, within the token budget."""
    lengths = torch.tensor([1, 2, 5, 3, 2, 2, 4, 1])  # groups of 2: longest 2, 5, 2, 4
    prompt_lengths = torch.tensor([2, 2, 3, 3, 1, 1, 2, 2])
    prompt_mask = (torch.arange(3)[None, :] >= 3 - prompt_lengths[:, None]).long()  # left-padded to 3
    prompt_ids = torch.arange(8 * 3).view(8, 3) * prompt_mask
    completion_ids = torch.arange(100, 100 + 8 * 5).view(8, 5)
    completion_mask = (torch.arange(5)[None, :] < lengths[:, None]).float()
    engine = torch.rand(8, 5)
    mb = MicroBatch(
        prompt_ids, prompt_mask, completion_ids, completion_mask, torch.arange(8.0), None, None,
        engine_logp=engine, completion_mask=completion_mask,
    )  # fmt: skip
    pieces = mb.pieces(group=2, max_tokens=2 * 8)  # 16 tokens: 2 rows of 3 + 5 (the shape decides, not lengths)
    firsts = [int(p.advantages[0]) for p in pieces]
    assert firsts == [2, 6, 0, 4]  # groups by their longest completion: 5, 4, 2, 2 (ties in batch order)
    assert [tuple(p.completion_ids.shape) for p in pieces] == [(2, 5), (2, 4), (2, 2), (2, 2)]
    assert [p.prompt_ids.shape[1] for p in pieces] == [3, 2, 2, 1]  # all-padding columns dropped
    for p in pieces:
        assert p.completion_ids.numel() + p.prompt_ids.numel() <= 16
        for r, row in enumerate(p.advantages.long().tolist()):
            width = p.completion_ids.shape[1]
            assert torch.equal(p.completion_ids[r], completion_ids[row, :width])
            assert torch.equal(p.engine_logp[r], engine[row, :width])
            assert torch.equal(p.completion_mask[r], completion_mask[row, :width])
            assert torch.equal(p.prompt_ids[r], prompt_ids[row, 3 - p.prompt_ids.shape[1] :])
            assert int(p.completion_mask[r].sum()) == int(lengths[row])  # nothing of the row was cut
    assert sorted(int(a) for p in pieces for a in p.advantages) == list(range(8))
    wide = mb.pieces(group=2, max_tokens=4 * 8)  # 4 rows a pass: the two long groups, then the two short ones
    assert [p.advantages.long().tolist() for p in wide] == [[2, 3, 6, 7], [0, 1, 4, 5]]
    assert [tuple(p.completion_ids.shape) for p in wide] == [(4, 5), (4, 2)]
    assert mb.pieces(group=2, max_tokens=None) == [mb] and mb.pieces(group=2, max_tokens=64) == [mb]
