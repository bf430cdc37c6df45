"""Batch-invariant sampling: the token a row draws depends only on its own seed, never on its batch-mates.

``torch.multinomial`` draws from one global random stream, so a completion depends on which other prompts shared its
batch, on the batch size, and on the number of processes.  Here each row ``i`` has an integer seed and its token at
decode position ``t`` is

    argmax_v( logits[v] / T  (after top-k / top-p masking)  +  Gumbel(u[i, t, v]) )

where ``u`` is a counter-based uniform: a SplitMix64 hash of (row seed, t, v).  By the Gumbel-max trick this is an
exact sample from softmax(logits / T).  The result is the same on 1 or N processes, with any batch size, and after a
resume — the properties that distributed training equivalence and trustworthy evaluation need.
"""

from __future__ import annotations

import torch

_MASK_34 = (1 << 34) - 1
_MASK_37 = (1 << 37) - 1
_MASK_33 = (1 << 33) - 1
_MASK_53 = (1 << 53) - 1
_C1 = -4658895280553007687  # 0xbf58476d1ce4e5b9 as signed int64
_C2 = -7723592293110705685  # 0x94d049bb133111eb
_GOLDEN = -7046029254386353131  # 0x9e3779b97f4a7c15


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (wrapping arithmetic; logical shifts emulated with masks)."""
    x = x ^ ((x >> 30) & _MASK_34)
    x = x * _C1
    x = x ^ ((x >> 27) & _MASK_37)
    x = x * _C2
    return x ^ ((x >> 31) & _MASK_33)


def row_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed, e.g. row_seed(run_seed, step, prompt_index, sample_index)."""
    h = torch.tensor(0x1234567, dtype=torch.int64)
    for p in parts:
        h = mix64(h + _GOLDEN + torch.tensor(int(p) & ((1 << 63) - 1), dtype=torch.int64))
    return int(h) & ((1 << 63) - 1)


def uniforms(seeds: torch.Tensor, position: int, vocab: int) -> torch.Tensor:
    """[N] int64 seeds -> [N, V] uniforms in (0, 1), a pure function of (seed, position, vocab index)."""
    device = seeds.device
    base = mix64(seeds * _GOLDEN + position)  # [N]
    idx = torch.arange(vocab, device=device, dtype=torch.int64)  # [V]
    h = mix64(base[:, None] + idx[None, :] * _C2)  # [N, V]
    u = ((h >> 11) & _MASK_53).to(torch.float64) / float(1 << 53)
    return u.clamp(1e-12, 1 - 1e-12)


def mask_top_k_top_p(scores: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf.  scores: [N, V]."""
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # [N, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = sorted_scores.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass strictly before each token
        drop_sorted = before >= top_p  # keeps the smallest prefix whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


class GumbelSampler:
    """A transformers LogitsProcessor: use with ``do_sample=False`` so generate's argmax draws the sample."""

    def __init__(self, seeds: torch.Tensor, prompt_width: int, *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0):
        self.seeds = seeds  # [N] int64, one per row
        self.prompt_width = prompt_width
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        position = input_ids.shape[1] - self.prompt_width  # decode step, 0-based
        logits = mask_top_k_top_p(scores.float() / self.temperature, self.top_k, self.top_p)  # [N, V]
        u = uniforms(self.seeds.to(scores.device), position, scores.shape[-1])  # [N, V]
        gumbel = -torch.log(-torch.log(u))
        return (logits.double() + gumbel).float()
