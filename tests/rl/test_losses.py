"""Every objective on one toy batch, with the expected values worked out by hand in the comments.

The batch: 2 groups of G=2 completions (B=4 sequences), T=3 token slots, different lengths::

    seq  A (advantage)  length  mask      ratio r_t = exp(logp - old_logp)   (x = padding, ignored)
    0    +1             3       1 1 1     1.0   1.5   0.7
    1    -1             2       1 1 0     0.5   1.3   x
    2    +2             1       1 0 0     1.25  x     x
    3    -2             3       1 1 1     1.0   0.9   1.25

Off-policy ratios != 1 are what ``num_iterations > 1`` produces (stored old log-probs, policy moved since).
Clipped surrogate per token: pg_t = -min(r_t * A, clip(r_t, 1 - eps_low, 1 + eps_high) * A).

With eps_low = eps_high = 0.2 (clip range [0.8, 1.2])::

    seq 0, A=+1: r=1.0 -> -min(1.0, 1.0) = -1.0
                 r=1.5 -> -min(1.5, 1.2) = -1.2     clipped (A>0, r>1.2)
                 r=0.7 -> -min(0.7, 0.8) = -0.7     (not clipped: for A>0 the lower side never clips)
                 sum -2.9, mean -2.9/3 = -0.966667
    seq 1, A=-1: r=0.5 -> -min(-0.5, -0.8) = +0.8   clipped (A<0, r<0.8)
                 r=1.3 -> -min(-1.3, -1.2) = +1.3   (not clipped: for A<0 the upper side never clips)
                 sum 2.1, mean 1.05
    seq 2, A=+2: r=1.25 -> -min(2.5, 2.4) = -2.4    clipped
                 sum -2.4, mean -2.4
    seq 3, A=-2: r=1.0 -> +2.0;  r=0.9 -> -min(-1.8, -1.8) = +1.8;  r=1.25 -> -min(-2.5, -2.4) = +2.5
                 sum 6.3, mean 2.1

    token sum S = -2.9 + 2.1 - 2.4 + 6.3 = 3.1;  active tokens N = 3 + 2 + 1 + 3 = 9;  clipped tokens 3 of 9
"""

from __future__ import annotations

import math

import pytest
import torch

from tina.rl.losses import LOSSES, Norm, bnpo_loss, dapo_loss, dr_grpo_loss, grpo_loss, gspo_loss, local_norm

MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)  # [B, T]
ADV = torch.tensor([1.0, -1.0, 2.0, -2.0])  # [B]
RATIO = torch.tensor([[1.0, 1.5, 0.7], [0.5, 1.3, 2.0], [1.25, 3.0, 0.1], [1.0, 0.9, 1.25]])  # pads: 2.0, 3.0, 0.1
# Log-probs of the sampled tokens (any negative numbers); old_logp is chosen so that exp(logp - old) = RATIO.
LOGP = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -0.3, -0.7], [-1.5, -0.2, -0.9], [-0.4, -0.6, -0.8]])
OLD = LOGP - RATIO.log()
LN2 = math.log(2.0)
# Reference (base model) log-probs for the KL term: delta = ref - logp per token.
DELTA = torch.tensor([[LN2, 0.0, 0.0], [0.0, -LN2, 5.0], [LN2, 9.0, 9.0], [0.0, 0.0, 0.0]])  # pads: 5, 9, 9
REF = LOGP + DELTA
SYM = dict(eps_low=0.2, eps_high=0.2)


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_(True)


def run(fn, logp=LOGP, old=OLD, adv=ADV, mask=MASK, **kw):
    logp = leaf(logp)
    out = fn(logp, old, adv, mask, **kw)
    out.loss.backward()
    return out, logp.grad


# ------------------------------------------------------------------------------------------------------------ values
def test_grpo_is_mean_over_sequences_of_per_sequence_token_means():
    # (-0.966667 + 1.05 - 2.4 + 2.1) / 4 = -0.216667 / 4 = -0.0541667
    out, _ = run(grpo_loss, **SYM)
    assert out.loss.item() == pytest.approx(-0.0541667, abs=1e-6)
    assert out.metrics["clip_ratio"] == pytest.approx(3 / 9)
    # mean ratio over the 9 active tokens: (1 + 1.5 + 0.7 + 0.5 + 1.3 + 1.25 + 1 + 0.9 + 1.25) / 9 = 9.4 / 9
    assert out.metrics["ratio_mean"] == pytest.approx(9.4 / 9)
    assert "kl" not in out.metrics


def test_dr_grpo_divides_the_token_sum_by_sequences_times_max_length():
    # local norm: T = 3 slots -> S / (B * T) = 3.1 / (4 * 3) = 0.258333
    out, _ = run(dr_grpo_loss, **SYM)
    assert out.loss.item() == pytest.approx(3.1 / 12, abs=1e-6)
    # the loop passes max_len = rollout.max_new_tokens: 3.1 / (4 * 3584)
    out, _ = run(dr_grpo_loss, norm=Norm(n_seqs=4, n_tokens=9, max_len=3584), **SYM)
    assert out.loss.item() == pytest.approx(3.1 / (4 * 3584), rel=1e-5)


def test_dapo_is_a_token_mean_over_the_whole_step():
    # S / N = 3.1 / 9 = 0.344444
    out, _ = run(dapo_loss, **SYM)
    assert out.loss.item() == pytest.approx(3.1 / 9, abs=1e-6)


def test_dapo_clip_higher_changes_what_is_clipped():
    # eps_low 0.2, eps_high 0.28 -> clip range [0.8, 1.28]:
    #   seq 0 r=1.5 (A>0): -min(1.5, 1.28) = -1.28 (still clipped, at the higher bound)  -> seq 0 sum -2.98
    #   seq 2 r=1.25 (A>0): -min(2.5, 2.5) = -2.5 (NO LONGER clipped: 1.25 < 1.28)      -> seq 2 sum -2.5
    #   seq 1 r=1.3 (A<0): -min(-1.3, -1.28) = +1.3 (unchanged);  r=0.5 still clipped at 0.8 -> sum 2.1
    #   seq 3 unchanged: 6.3
    # S = -2.98 + 2.1 - 2.5 + 6.3 = 2.92 -> 2.92 / 9 = 0.324444; clipped tokens: seq 0 r=1.5 and seq 1 r=0.5 -> 2/9
    out, grad = run(dapo_loss, eps_low=0.2, eps_high=0.28)
    assert out.loss.item() == pytest.approx(2.92 / 9, abs=1e-6)
    assert out.metrics["clip_ratio"] == pytest.approx(2 / 9)
    # seq 2's token now carries a gradient: d/dlogp of -r*A/N = -1.25 * 2 / 9 = -0.277778 (it was 0 when clipped)
    assert grad[2, 0].item() == pytest.approx(-2.5 / 9, abs=1e-6)
    _, grad_sym = run(dapo_loss, **SYM)
    assert grad_sym[2, 0].item() == 0.0


def test_dapo_function_default_is_clip_higher_0_28():
    out, _ = run(dapo_loss)  # the function's own defaults: eps_low 0.2, eps_high 0.28
    assert out.loss.item() == pytest.approx(2.92 / 9, abs=1e-6)


def test_bnpo_averages_micro_batch_token_means():
    # one micro-batch: same as dapo, 3.1 / 9
    out, _ = run(bnpo_loss, **SYM)
    assert out.loss.item() == pytest.approx(3.1 / 9, abs=1e-6)
    # two micro-batches, n_micro = 2: seqs {0,1}: token sum -2.9 + 2.1 = -0.8 over 5 tokens -> -0.8 / 5 / 2 = -0.08
    #                                  seqs {2,3}: -2.4 + 6.3 = 3.9 over 4 tokens -> 3.9 / 4 / 2 = 0.4875
    # total 0.4075: NOT the whole-batch 0.344444, because the two halves hold different token counts.
    norm = Norm(n_seqs=4, n_tokens=9, n_micro=2, max_len=3)
    first = bnpo_loss(LOGP[:2], OLD[:2], ADV[:2], MASK[:2], norm=norm, **SYM).loss.item()
    second = bnpo_loss(LOGP[2:], OLD[2:], ADV[2:], MASK[2:], norm=norm, **SYM).loss.item()
    assert first == pytest.approx(-0.08, abs=1e-6)
    assert second == pytest.approx(0.4875, abs=1e-6)
    assert first + second == pytest.approx(0.4075, abs=1e-6)


def test_gspo_uses_one_clipped_ratio_per_sequence():
    # s_i = exp(mean_t log r_t) = geometric mean of the active ratios:
    #   seq 0: (1.0 * 1.5 * 0.7)^(1/3) = 1.05^(1/3) = 1.016396;  A=+1, inside [0.8, 1.2] -> -1.016396
    #   seq 1: (0.5 * 1.3)^(1/2) = 0.65^(1/2) = 0.806226;       A=-1, inside            -> +0.806226
    #   seq 2: 1.25;                                             A=+2, clipped at 1.2    -> -2.4
    #   seq 3: (1.0 * 0.9 * 1.25)^(1/3) = 1.125^(1/3) = 1.040042; A=-2, inside          -> +2.080084
    #   loss = (-1.016396 + 0.806226 - 2.4 + 2.080084) / 4 = -0.530086 / 4 = -0.132522
    s = [1.05 ** (1 / 3), 0.65**0.5, 1.25, 1.125 ** (1 / 3)]
    assert [round(x, 6) for x in s] == [1.016396, 0.806226, 1.25, 1.040042]
    out, grad = run(gspo_loss, **SYM)
    assert out.loss.item() == pytest.approx((-s[0] + s[1] - 2.4 + 2 * s[3]) / 4, abs=1e-6)
    assert out.loss.item() == pytest.approx(-0.132522, abs=1e-6)
    assert out.metrics["clip_ratio"] == pytest.approx(1 / 4)  # sequences, not tokens
    # gradient of an unclipped sequence spreads evenly over its tokens: -A * s / (len * B)
    #   seq 3: -(-2) * 1.040042 / (3 * 4) = 0.173340 on each of its 3 tokens; seq 2 (clipped): 0
    assert grad[3].tolist() == pytest.approx([2 * s[3] / 12] * 3, abs=1e-6)
    assert grad[2].tolist() == [0.0, 0.0, 0.0]


def test_gspo_default_epsilons_are_the_papers_tiny_ones():
    # eps_low 3e-4, eps_high 4e-4 -> range [0.9997, 1.0004]:
    #   seq 0: s=1.016396, A>0 -> clipped to 1.0004      -> -1.0004
    #   seq 1: s=0.806226, A<0 -> clipped to 0.9997      -> +0.9997
    #   seq 2: s=1.25,     A>0 -> clipped to 1.0004 * 2  -> -2.0008
    #   seq 3: s=1.040042, A<0 -> -min(-2.080084, -2.0008) = +2.080084 (upper side never clips for A<0)
    #   loss = (-1.0004 + 0.9997 - 2.0008 + 2.080084) / 4 = 0.078584 / 4 = 0.019646
    out, _ = run(gspo_loss)
    assert out.loss.item() == pytest.approx(0.078584 / 4, abs=1e-6)
    assert out.metrics["clip_ratio"] == pytest.approx(3 / 4)


# ---------------------------------------------------------------------------------------------------------- KL term
def test_kl_is_the_k3_estimator_against_the_reference():
    # kl_t = exp(d) - d - 1 with d = ref - logp:  d = ln2 -> 2 - 0.693147 - 1 = 0.306853;  d = -ln2 -> 0.193147;  0 -> 0
    # active tokens: seq 0 [ln2, 0, 0], seq 1 [0, -ln2], seq 2 [ln2], seq 3 [0, 0, 0]  (pads 5, 9, 9 are ignored)
    # token sum = 0.306853 + 0.193147 + 0.306853 = 0.806853; mean over 9 tokens = 0.089650 (the logged metric)
    k_up, k_down = 2 - LN2 - 1, 0.5 + LN2 - 1
    assert (round(k_up, 6), round(k_down, 6)) == (0.306853, 0.193147)
    beta = 0.04
    out, _ = run(grpo_loss, ref_logp=REF, beta=beta, **SYM)
    assert out.metrics["kl"] == pytest.approx((2 * k_up + k_down) / 9, abs=1e-6)
    # grpo: per-sequence KL means: seq 0 0.306853/3, seq 1 0.193147/2, seq 2 0.306853, seq 3 0 -> mean over 4
    #   = (0.102284 + 0.096574 + 0.306853 + 0) / 4 = 0.126428; x beta 0.04 = 0.005057; total -0.0541667 + 0.005057
    kl_grpo = (k_up / 3 + k_down / 2 + k_up + 0) / 4
    assert out.loss.item() == pytest.approx(-0.2166667 / 4 + beta * kl_grpo, abs=1e-6)
    assert out.loss.item() == pytest.approx(-0.049110, abs=1e-6)
    # dapo: token mean: 3.1/9 + 0.04 * 0.806853/9 = 0.344444 + 0.003586 = 0.348030
    out, _ = run(dapo_loss, ref_logp=REF, beta=beta, **SYM)
    assert out.loss.item() == pytest.approx(0.348030, abs=1e-6)


def test_kl_needs_both_beta_and_a_reference():
    base, _ = run(grpo_loss, **SYM)
    no_beta, _ = run(grpo_loss, ref_logp=REF, beta=0.0, **SYM)
    no_ref, _ = run(grpo_loss, ref_logp=None, beta=0.04, **SYM)
    assert no_beta.loss.item() == base.loss.item() == no_ref.loss.item()


def test_kl_gradient_pulls_towards_the_reference():
    # On-policy (ratio 1) grpo with beta: d/dlogp [beta * (exp(d) - d - 1)] = beta * (1 - exp(d)), d = ref - logp,
    # divided by len * B.  seq 0 token 0 (d = ln2): 0.04 * (1 - 2) / (3 * 4) = -0.003333, plus the policy-gradient
    # part -A / (len * B) = -1/12 -> -0.086667.  A negative gradient on the loss raises logp, towards the reference.
    _, grad = run(grpo_loss, old=LOGP, ref_logp=REF, beta=0.04, **SYM)
    assert grad[0, 0].item() == pytest.approx(-1 / 12 + 0.04 * (1 - 2) / 12, abs=1e-7)
    assert grad[0, 1].item() == pytest.approx(-1 / 12, abs=1e-7)  # d = 0: no KL gradient


# -------------------------------------------------------------------------------------------------------- gradients
def test_on_policy_grpo_gradient_is_minus_advantage_over_length_over_batch():
    # ratio 1 everywhere (num_iterations = 1): d loss / d logp_it = -A_i / len_i / B on active tokens, 0 on padding:
    #   seq 0: -1/(3*4) = -0.083333;  seq 1: +1/(2*4) = 0.125;  seq 2: -2/(1*4) = -0.5;  seq 3: +2/(3*4) = 0.166667
    out, grad = run(grpo_loss, old=LOGP, **SYM)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-7)  # -(1 - 1 + 2 - 2) / 4
    expected = torch.tensor([[-1 / 12] * 3, [1 / 8, 1 / 8, 0.0], [-0.5, 0.0, 0.0], [1 / 6] * 3])
    assert torch.allclose(grad, expected, atol=1e-7)


def test_on_policy_gradients_of_the_token_level_objectives():
    # dr_grpo: -A_i / (B * T) = -A_i / 12;  dapo: -A_i / N = -A_i / 9 -- no 1/len_i: long answers are not down-weighted
    _, g_dr = run(dr_grpo_loss, old=LOGP, **SYM)
    _, g_dapo = run(dapo_loss, old=LOGP, **SYM)
    per_seq = (-ADV)[:, None] * MASK
    assert torch.allclose(g_dr, per_seq / 12, atol=1e-7)
    assert torch.allclose(g_dapo, per_seq / 9, atol=1e-7)


def test_off_policy_gradient_is_zero_where_clipped_and_ratio_weighted_elsewhere():
    # grpo, eps 0.2: token gradient = -r_t * A_i / (len_i * B) unless clipped (then 0):
    #   seq 0: r=1.0 -> -1/12;  r=1.5 clipped -> 0;  r=0.7 -> -0.7/12 = -0.058333
    #   seq 1: r=0.5 clipped -> 0;  r=1.3 -> 1.3/8 = 0.1625
    #   seq 2: r=1.25 clipped -> 0
    #   seq 3: r=1.0 -> 2/12;  r=0.9 -> 1.8/12 = 0.15;  r=1.25 (A<0, not clipped) -> 2.5/12 = 0.208333
    _, grad = run(grpo_loss, **SYM)
    expected = torch.tensor([[-1 / 12, 0.0, -0.7 / 12], [0.0, 0.1625, 0.0], [0.0, 0.0, 0.0], [2 / 12, 0.15, 2.5 / 12]])
    assert torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_padding_never_matters(name):
    # Change every padded slot of logp, old_logp, ref_logp: same loss, zero gradient there.
    pad = MASK == 0
    noisy = LOGP.masked_fill(pad, -7.0)
    out_a, grad_a = run(LOSSES[name], ref_logp=REF, beta=0.04, **SYM)
    out_b, grad_b = run(
        LOSSES[name], logp=noisy, old=OLD.masked_fill(pad, -6.5), ref_logp=REF.masked_fill(pad, 0.3), beta=0.04, **SYM
    )
    assert out_a.loss.item() == pytest.approx(out_b.loss.item(), abs=1e-7)
    assert torch.all(grad_b[pad] == 0)
    assert torch.allclose(grad_a[~pad], grad_b[~pad], atol=1e-7)


# ---------------------------------------------------------------------------------------- gradient accumulation
@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_micro_batches_with_the_steps_norm_sum_to_the_whole_batch(name):
    """Accumulating over micro-batches (the caller sums their losses) equals one big batch, value and gradient."""
    fn = LOSSES[name]
    whole, g_whole = run(fn, ref_logp=REF, beta=0.04, norm=local_norm(MASK), **SYM)
    norm = Norm(n_seqs=4, n_tokens=int(MASK.sum()), n_micro=2, max_len=MASK.shape[1])
    logp = leaf(LOGP)
    total = 0.0
    for rows in (slice(0, 2), slice(2, 4)):  # uneven token counts: 5 and 4
        out = fn(logp[rows], OLD[rows], ADV[rows], MASK[rows], ref_logp=REF[rows], beta=0.04, norm=norm, **SYM)
        out.loss.backward()
        total += out.loss.item()
    assert total == pytest.approx(whole.loss.item(), abs=1e-6)
    assert torch.allclose(logp.grad, g_whole, atol=1e-7)


def test_bnpo_matches_the_whole_batch_only_when_micro_batches_hold_equal_token_counts():
    # No split of this batch into halves has equal token counts, so duplicate it (18 tokens) and use the two copies
    # as micro-batches (9 tokens each): bnpo = 2 * (3.1 / 9 / 2) = 3.1 / 9 = dapo over all 18 tokens (6.2 / 18).
    logp, old = torch.cat([LOGP, LOGP]), torch.cat([OLD, OLD])
    adv, mask = torch.cat([ADV, ADV]), torch.cat([MASK, MASK])
    norm = Norm(n_seqs=8, n_tokens=18, n_micro=2, max_len=3)
    bnpo = sum(
        bnpo_loss(logp[r], old[r], adv[r], mask[r], norm=norm, **SYM).loss.item() for r in (slice(0, 4), slice(4, 8))
    )
    dapo = dapo_loss(logp, old, adv, mask, **SYM).loss.item()
    assert bnpo == pytest.approx(dapo, abs=1e-6) == pytest.approx(3.1 / 9, abs=1e-6)


def test_every_objective_is_registered_with_the_shared_signature():
    assert sorted(LOSSES) == ["bnpo", "dapo", "dr_grpo", "grpo", "gspo"]
    for fn in LOSSES.values():
        out = fn(LOGP, OLD, ADV, MASK, ref_logp=REF, beta=0.04, eps_low=0.2, eps_high=0.2, norm=local_norm(MASK))
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        assert {"clip_ratio", "ratio_mean", "kl"} <= set(out.metrics)


def test_a_fully_masked_sequence_adds_nothing_but_still_counts_as_a_sequence():
    # An ungradable completion gets an all-zero mask row: it adds 0 but B stays 4 (as in TRL).  On-policy, the
    # per-sequence terms are -A_i: (-1 + 1 + [seq 2 masked: 0] + 2) / 4 = 0.5 (grpo and gspo alike).
    mask = MASK.clone()
    mask[2] = 0
    out, grad = run(grpo_loss, old=LOGP, mask=mask, **SYM)
    assert out.loss.item() == pytest.approx(0.5, abs=1e-7)
    assert torch.all(grad[2] == 0)
    out, _ = run(gspo_loss, old=LOGP, mask=mask, **SYM)
    assert out.loss.item() == pytest.approx(0.5, abs=1e-7)


@pytest.mark.parametrize("name", ["grpo", "gspo"])
def test_importance_weights_multiply_the_policy_gradient_not_the_kl(name):
    # On-policy, weights 2 on every token, beta 0.04.  grpo, seq 0 token 0 (d = ln2, A = +1, len 3, B 4):
    #   pg part -w * A / (len * B) = -2/12;  KL part beta * (1 - e^d) / (len * B) = 0.04 * (1 - 2) / 12, NOT x 2.
    # gspo on-policy: the same per-token gradient (sequence ratio 1, its gradient spread as 1/len over the tokens).
    weights = torch.full_like(MASK, 2.0)
    _, grad = run(LOSSES[name], old=LOGP, ref_logp=REF, beta=0.04, weights=weights, **SYM)
    assert grad[0, 0].item() == pytest.approx(-2 / 12 + 0.04 * (1 - 2) / 12, abs=1e-7)
    assert grad[0, 1].item() == pytest.approx(-2 / 12, abs=1e-7)  # d = 0: no KL gradient
    # loss value: the pg terms doubled, the KL term as without weights
    plain, _ = run(LOSSES[name], old=LOGP, ref_logp=REF, beta=0.04, **SYM)
    no_kl, _ = run(LOSSES[name], old=LOGP, **SYM)
    weighted_no_kl, _ = run(LOSSES[name], old=LOGP, weights=weights, **SYM)
    out, _ = run(LOSSES[name], old=LOGP, ref_logp=REF, beta=0.04, weights=weights, **SYM)
    kl_part = plain.loss.item() - no_kl.loss.item()
    assert kl_part > 1e-3
    assert out.loss.item() == pytest.approx(weighted_no_kl.loss.item() + kl_part, abs=1e-7)
