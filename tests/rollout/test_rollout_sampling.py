"""Seeded sampling is exact (inverse CDF) and batch-invariant: a row's completion depends only on its own seed."""

from __future__ import annotations

import torch

from tina.rollout.sampling import mask_top_k_top_p, row_seed, sample_tokens, uniforms


def test_uniforms_are_a_pure_function_of_seed_and_position():
    seeds = torch.tensor([1, 2, 3])
    a = uniforms(seeds, 5)
    assert torch.equal(a[[2, 0]], uniforms(seeds[[2, 0]], 5))  # another batch composition
    assert not torch.equal(uniforms(seeds, 6), a)
    assert float(a.min()) > 0 and float(a.max()) < 1


def test_uniforms_look_uniform_and_independent_across_positions():
    u = torch.stack([uniforms(torch.arange(20000), t) for t in range(5)])  # [5, 20000]
    assert abs(float(u.mean()) - 0.5) < 0.005
    hist = torch.histc(u.flatten().float(), bins=10, min=0, max=1) / u.numel()
    assert torch.all((hist - 0.1).abs() < 0.005)
    corr = torch.corrcoef(u)  # consecutive positions of one stream are uncorrelated
    assert (corr - torch.eye(5, dtype=corr.dtype)).abs().max() < 0.03


def test_samples_follow_the_softmax_at_the_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    probs = torch.softmax(logits / 0.7, -1)
    n = 20000
    tokens, logps = sample_tokens(logits.expand(n, 4), torch.arange(n), 0, temperature=0.7)
    freq = torch.bincount(tokens, minlength=4).float() / n
    # 4 standard errors of a binomial proportion at n = 20000 is at most 0.0142
    assert torch.allclose(freq, probs, atol=0.015), (freq, probs)
    assert torch.allclose(logps, torch.log(probs)[tokens], atol=1e-6)  # the log-prob the trainer will compute


def test_top_k_and_top_p_are_respected_and_log_probs_are_those_of_the_truncated_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    n = 5000
    tokens, logps = sample_tokens(logits.expand(n, 4), torch.arange(n), 2, top_p=0.75)
    assert set(tokens.tolist()) == {0, 1}
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert abs(float(freq[0]) - 0.5 / 0.8) < 0.03  # renormalised over the nucleus
    # the reported log-prob is that of the distribution sampled: nucleus {0, 1} of mass 0.8 -> 0.5/0.8, 0.3/0.8
    assert torch.allclose(logps, torch.log(torch.tensor([0.625, 0.375]))[tokens], atol=1e-6)
    tokens, logps = sample_tokens(logits.expand(n, 4), torch.arange(n), 2, top_k=1)
    assert set(tokens.tolist()) == {0} and torch.all(logps == 0)  # a one-token support: probability 1
    # top-k 3 (mass 0.95), then top-p 0.8 over the renormalised [0.526, 0.316, 0.158]: 0.526 + 0.316 reaches 0.8
    tokens, logps = sample_tokens(logits.expand(n, 4), torch.arange(n), 2, top_k=3, top_p=0.8)
    assert set(tokens.tolist()) == {0, 1}
    assert torch.allclose(logps, torch.log(torch.tensor([0.625, 0.375]))[tokens], atol=1e-6)


def test_top_p_one_and_top_k_zero_report_the_tempered_softmax_bit_for_bit():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(1))
    tokens, logps = sample_tokens(logits, torch.arange(64), 0, temperature=0.7)
    scaled = logits / 0.7
    assert torch.equal(logps, scaled.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(scaled, -1))


def test_greedy_takes_the_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    tokens, logps = sample_tokens(logits, None, 0, greedy=True)
    assert tokens.tolist() == [1, 0]
    assert torch.allclose(logps, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_a_row_draws_the_same_token_whatever_its_batch_mates():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    seeds = torch.tensor([row_seed(7, k) for k in range(6)])
    together, _ = sample_tokens(logits, seeds, 3)
    alone, _ = sample_tokens(logits[2:3], seeds[2:3], 3)
    assert together[2] == alone[0]


def test_top_k_and_top_p_masks():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(mask_top_k_top_p(scores, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus 0.75: 0.5 + 0.3 reaches it, so the last two tokens go
    assert torch.isinf(mask_top_k_top_p(scores, top_p=0.75)).tolist() == [[False, False, True, True]]
    assert torch.isinf(mask_top_k_top_p(scores, top_p=0.5)).tolist() == [[False, True, True, True]]


def test_row_seed_differs_per_part():
    assert len({row_seed(0, s, p, j) for s in range(3) for p in range(3) for j in range(3)}) == 27
    assert row_seed(1, 2) == row_seed(1, 2)
