"""Rollout corrections through the trainer's own ``micro_batches`` + ``update``: the gradient that reaches the LoRA
weights is compared with one computed by hand from the formula.

The batch: 2 prompts x G=2 completions of lengths [5, 3, 4, 2] on a tiny model with a random LoRA adapter, scored at
T = 0.7.  The engine's log-probs are the trainer's minus ``DELTA``, so the trainer/engine ratio of each token is
``exp(DELTA)`` -- chosen by hand (cap 2, i.e. ratios inside [0.5, 2] pass)::

    row  DELTA (valid tokens)            token ratios outside [0.5, 2]   sequence sum -> ratio
    0    0.0  0.3  2.0 -0.2  0.1         token 2 (e^2.0 = 7.39)          2.2  -> 9.03   outside
    1   -0.1 -1.5  0.2                   token 1 (e^-1.5 = 0.223)        -1.4 -> 0.247  outside
    2    0.1  0.1 -0.1  0.2              none                            0.3  -> 1.35   inside
    3    0.5 -0.3                        none                            0.2  -> 1.22   inside

On-policy (the engine's log-probs equal the trainer's) the policy ratio is 1, the correction changes nothing.  The
loss is GRPO's: per-sequence token mean, mean over the 4 sequences; on-policy its gradient is
``-sum_i sum_t w_it A_i / (len_i * 4) * d logp_it`` (the ratio's gradient at 1 is that of logp).
"""

from __future__ import annotations

import math

import pytest
import torch

from tina.batch import Scored
from tina.config import load_config
from tina.ledger import Ledger
from tina.models import attach_lora, load_model_and_tokenizer
from tina.rl.logprobs import token_logprobs
from tina.rl.masks import mask_from_lengths
from tina.rollout.base import Rollout
from tina.train import micro_batches, update

T = 0.7
LENGTHS = torch.tensor([5, 3, 4, 2])
ADV = torch.tensor([1.0, -1.0, 0.5, -1.5])
DELTA = torch.tensor(
    [[0.0, 0.3, 2.0, -0.2, 0.1], [-0.1, -1.5, 0.2, 0.0, 0.0], [0.1, 0.1, -0.1, 0.2, 0.0], [0.5, -0.3, 0.0, 0.0, 0.0]]
)
MASK = mask_from_lengths(LENGTHS, 5)  # [4, 5]
# worked out by hand in the module docstring
TOKEN_MASKED = [(0, 2), (1, 1)]
SEQUENCE_DROPPED = [0, 1]
MODES = ["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m, _ = load_model_and_tokenizer("builtin:tiny-random", dtype="float32", attn_implementation="eager", device="cpu")
    m = attach_lora(m, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m


def _batch():
    g = torch.Generator().manual_seed(3)
    prompts = torch.randint(3, 300, (2, 6), generator=g)
    pmask = torch.ones(2, 6, dtype=torch.long)
    pmask[1, :2] = 0  # a left-padded prompt
    completions = torch.randint(3, 300, (4, 5), generator=g) * MASK.long()  # pad id 0 past the end
    return prompts.repeat_interleave(2, 0), pmask.repeat_interleave(2, 0), completions


def _trainer_logp(model):
    p, pm, c = _batch()
    with torch.no_grad():
        return token_logprobs(model, p, pm, c, MASK, temperature=T)  # [4, 5]


def _cfg(mode, **algorithm):
    return load_config(
        {
            "model": {"name_or_path": "builtin:tiny-random", "dtype": "float32"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "rollout": {"num_generations": 2, "max_new_tokens": 5, "temperature": T, "max_logp_diff": None},
            "algorithm": {"rollout_correction": mode, "rollout_correction_cap": 2.0, **algorithm},
            "train": {"batch_size": 2, "device": "cpu", "probe_prompt": "", "max_grad_norm": 0.0, "max_steps": 1},
        }
    )


class _Recorder(torch.optim.SGD):
    """lr 0: records the step's gradients and changes nothing."""

    def __init__(self, params):
        self.params = list(params)
        super().__init__(self.params, lr=0.0)

    def step(self, closure=None):
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]


def _through_update(model, mode, engine_logp, *, max_tokens_per_pass=None, **algorithm):
    """(update's metrics, gradient list, micro-batches) of one step with the engine's log-probs ``engine_logp``."""
    p, pm, c = _batch()
    rollout = Rollout(p, pm, c, LENGTHS, torch.zeros(4, dtype=torch.bool), [""] * 4, engine_logp, None, "vllm")
    scored = Scored(torch.zeros(4), ADV, torch.ones(4, dtype=torch.bool), {})
    cfg = _cfg(mode, **algorithm)
    if max_tokens_per_pass is not None:
        cfg.train.max_tokens_per_pass = max_tokens_per_pass
    params = [q for q in model.parameters() if q.requires_grad]
    model.zero_grad(set_to_none=True)
    mbs = micro_batches(rollout, scored, cfg, model, Ledger())
    opt = _Recorder(params)
    out = update(model, mbs, cfg, opt, Ledger())
    assert not out["skipped"]
    return out, opt.grads, mbs


def _as_full_batch(seen):
    """The loss passes' (log-probs, loss masks) put back in the batch's rows and columns: a pass holds whole groups,
    longest first, cut to its own widths (MicroBatch.pieces); rows are told apart by their completion tokens."""
    _, _, full_ids = _batch()
    logp, loss_mask = torch.zeros(full_ids.shape), torch.zeros(full_ids.shape)
    for values, mask, ids in seen:
        for row in range(ids.shape[0]):
            width = ids.shape[1]
            (match,) = [i for i in range(full_ids.shape[0]) if torch.equal(full_ids[i, :width], ids[row])]
            logp[match, :width], loss_mask[match, :width] = values[row], mask[row]
    return logp, loss_mask


def _by_hand(model, weights, mask, *, beta=0.0, weight_kl=False):
    """The formula's gradient: logp from an untouched forward (attention over every sampled token), at ratio 1."""
    p, pm, c = _batch()
    params = [q for q in model.parameters() if q.requires_grad]
    model.zero_grad(set_to_none=True)
    logp = token_logprobs(model, p, pm, c, MASK, temperature=T)  # [4, 5]
    per_token = -weights * ADV[:, None] * torch.exp(logp - logp.detach())  # pg at ratio 1
    if beta:
        with torch.no_grad(), model.disable_adapter():
            ref = token_logprobs(model, p, pm, c, MASK, temperature=T)
        d = ref - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * (kl * weights if weight_kl else kl)
    loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / 4
    loss.backward()
    grads = [q.grad.detach().clone() for q in params]
    model.zero_grad(set_to_none=True)
    return grads


def _close(a, b, tol=1e-5):
    return all(
        torch.allclose(x, y, rtol=1e-4, atol=tol * float(y.abs().max().clamp(min=1e-3)))
        for x, y in zip(a, b, strict=True)
    )


def _gap(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------------------ on-policy
@pytest.mark.parametrize("mode", MODES)
def test_on_policy_every_correction_has_ratio_one_and_the_plain_gradient(model, mode):
    engine = _trainer_logp(model)  # the engine sampled exactly the trainer's policy
    out, grads, _ = _through_update(model, mode, engine)
    assert out["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert out["rollout/logp_diff_max"] < 1e-6  # engine log-probs == the trainer's, token by token
    if mode.endswith("truncate"):
        assert out["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-6)
    plain = _by_hand(model, torch.ones(4, 5), MASK)
    assert _close(grads, plain)
    _, none_grads, _ = _through_update(model, "none", engine)
    assert _close(grads, none_grads, tol=1e-6)


# ------------------------------------------------------------------------------------------ off-policy, by formula
def test_token_truncate_weighs_each_tokens_gradient_by_its_capped_ratio(model):
    engine = _trainer_logp(model) - DELTA
    out, grads, _ = _through_update(model, "token_truncate", engine)
    weights = torch.exp(DELTA).clamp(max=2.0)  # e^2 = 7.39 -> 2 at (0, 2); e^-1.5 = 0.223 at (1, 1)
    assert float(weights[0, 2]) == 2.0 and float(weights[1, 1]) == pytest.approx(math.exp(-1.5))
    expected = _by_hand(model, weights, MASK)
    assert _close(grads, expected)
    unweighted = _by_hand(model, torch.ones(4, 5), MASK)
    assert _gap(expected, unweighted) > 100 * _gap(grads, expected)  # the weights really change the gradient
    assert out["rollout/is_weight_mean"] == pytest.approx(float((weights * MASK).sum() / MASK.sum()), abs=1e-5)
    assert out["ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # the policy ratio stays on-policy


def test_sequence_truncate_weighs_each_sequence_by_its_capped_ratio(model):
    engine = _trainer_logp(model) - DELTA
    _, grads, _ = _through_update(model, "sequence_truncate", engine)
    seq = torch.exp((DELTA * MASK).sum(-1)).clamp(max=2.0)  # [e^2.2 -> 2, e^-1.4, e^0.3, e^0.2]
    assert seq.tolist() == pytest.approx([2.0, math.exp(-1.4), math.exp(0.3), math.exp(0.2)], rel=1e-6)
    expected = _by_hand(model, seq[:, None].expand(4, 5), MASK)
    assert _close(grads, expected)
    assert _gap(expected, _by_hand(model, torch.ones(4, 5), MASK)) > 100 * _gap(grads, expected)


@pytest.mark.parametrize("max_tokens_per_pass", [None, 22])  # 22: the loss pass in two pieces of one group each
def test_token_mask_drops_tokens_and_keeps_the_others_log_probs(model, max_tokens_per_pass, monkeypatch):
    """Masked tokens contribute nothing; the remaining tokens are scored with the masked ones still in their context
    (attention from lengths), so their log-probs equal those of the unmasked run and the policy ratio is exactly 1."""
    import tina.train as train_mod

    seen = []
    real = train_mod.token_logprobs

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        if torch.is_grad_enabled():  # update()'s pass (micro_batches scores under no_grad)
            seen.append((out.detach(), kwargs["loss_mask"], args[3]))
        return out

    monkeypatch.setattr(train_mod, "token_logprobs", spy)
    full = _trainer_logp(model)
    out, grads, mbs = _through_update(model, "token_mask", full - DELTA, max_tokens_per_pass=max_tokens_per_pass)
    kept = MASK.clone()
    for i, t in TOKEN_MASKED:
        kept[i, t] = 0
    assert torch.equal(mbs[0].loss_mask, kept) and torch.equal(mbs[0].completion_mask, MASK)
    assert len(seen) == (1 if max_tokens_per_pass is None else 2)
    logp, loss_mask = _as_full_batch(seen)
    assert torch.equal(loss_mask, kept)
    assert ((logp - full).abs() * kept).max() < 1e-6  # the unmasked run's values: attention intact
    assert out["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    expected = _by_hand(model, torch.ones(4, 5), kept)  # masked tokens leave the loss and its per-sequence mean
    assert _close(grads, expected)
    assert _gap(expected, _by_hand(model, torch.ones(4, 5), MASK)) > 100 * _gap(grads, expected)


def test_sequence_mask_drops_whole_sequences(model):
    engine = _trainer_logp(model) - DELTA
    out, grads, mbs = _through_update(model, "sequence_mask", engine)
    kept = MASK.clone()
    kept[SEQUENCE_DROPPED] = 0
    assert torch.equal(mbs[0].loss_mask, kept) and torch.equal(mbs[0].completion_mask, MASK)
    assert out["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    expected = _by_hand(model, torch.ones(4, 5), kept)  # the dropped rows still count in the 1/4 (as in TRL)
    assert _close(grads, expected)
    assert _gap(expected, _by_hand(model, torch.ones(4, 5), MASK)) > 100 * _gap(grads, expected)


def test_the_kl_term_is_not_weighted(model):
    """beta > 0 with token_truncate: the weights multiply the policy-gradient term, never the KL to the reference."""
    engine = _trainer_logp(model) - DELTA
    _, grads, mbs = _through_update(model, "token_truncate", engine, beta=0.5)
    assert mbs[0].ref_logp is not None
    weights = torch.exp(DELTA).clamp(max=2.0)
    expected = _by_hand(model, weights, MASK, beta=0.5)
    assert _close(grads, expected)
    weighted_kl = _by_hand(model, weights, MASK, beta=0.5, weight_kl=True)
    assert _gap(expected, weighted_kl) > 100 * _gap(grads, expected)
