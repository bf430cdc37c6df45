"""Seeded sampling is exact (Gumbel-max) and batch-invariant: a row's completion depends only on its own seed."""

from __future__ import annotations

import math

import pytest
import torch

from tina.models import load_model_and_tokenizer
from tina.rollout import HFBackend, Sampling
from tina.rollout.sampling import GumbelSampler, mask_top_k_top_p, row_seed, uniforms


def test_uniforms_are_a_pure_function_of_seed_position_and_token():
    seeds = torch.tensor([1, 2, 3])
    a = uniforms(seeds, 5, 7)
    b = uniforms(seeds[[2, 0]], 5, 7)  # another batch composition
    assert torch.equal(a[[2, 0]], b)
    assert not torch.equal(uniforms(seeds, 6, 7), a)
    assert float(a.min()) > 0 and float(a.max()) < 1


def test_uniforms_look_uniform():
    u = uniforms(torch.arange(2000), 0, 50).flatten()  # 100k values
    assert abs(float(u.mean()) - 0.5) < 0.005
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert torch.all((hist - 0.1).abs() < 0.005)


def test_gumbel_max_samples_follow_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    probs = torch.softmax(logits / 0.7, -1)
    n = 20000
    sampler = GumbelSampler(torch.arange(n), prompt_width=0, temperature=0.7)
    picks = sampler(torch.zeros(n, 0, dtype=torch.long), logits.expand(n, 4)).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / n
    # 4 standard errors of a binomial proportion at n = 20000 is at most 0.0142
    assert torch.allclose(freq, probs, atol=0.015), (freq, probs)


def test_top_k_and_top_p_masks():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(mask_top_k_top_p(scores, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus 0.75: 0.5 + 0.3 reaches it, so the last two tokens go
    assert torch.isinf(mask_top_k_top_p(scores, top_p=0.75)).tolist() == [[False, False, True, True]]
    assert torch.isinf(mask_top_k_top_p(scores, top_p=0.5)).tolist() == [[False, True, True, True]]


def test_row_seed_differs_per_part():
    assert len({row_seed(0, s, p, j) for s in range(3) for p in range(3) for j in range(3)}) == 27
    assert row_seed(1, 2) == row_seed(1, 2)


def test_seeded_generation_does_not_depend_on_batch_mates():
    model, tok = load_model_and_tokenizer("builtin:tiny-random", dtype="float32", attn_implementation="eager",
                                          device="cpu")
    backend = HFBackend(model, tok)
    sampling = Sampling(n=3, max_new_tokens=12, temperature=1.0, seed=7)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
               for p in ["1+2-3", "4+4-0", "9+9-9 and a longer prompt"]]
    together = backend.generate(prompts, sampling, keys=[10, 11, 12])
    torch.manual_seed(123)  # the global RNG must not matter
    alone = backend.generate(prompts[1:2], sampling, keys=[11])
    assert together.texts[3:6] == alone.texts
    assert torch.equal(together.lengths[3:6], alone.lengths)
    other_seed = backend.generate(prompts[1:2], Sampling(n=3, max_new_tokens=12, temperature=1.0, seed=8), keys=[11])
    assert other_seed.texts != alone.texts
