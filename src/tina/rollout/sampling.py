"""Batch-invariant sampling: the token a row draws depends only on its own seed, never on its batch-mates.

``torch.multinomial`` draws from one global random stream, so a completion depends on which other prompts shared its
batch, on the batch size, and on the number of processes.  Here each row ``i`` has an integer seed and its token at
decode position ``t`` is drawn by *inverse-CDF sampling* with one uniform per row and position::

    p   = softmax(logits / T)  (after top-k / top-p masking, renormalised)
    u   = uniform(seed_i, t)                       # a SplitMix64 hash of (row seed, t): counter-based, no state
    tok = the first v with  p[0] + ... + p[v] > u

This is an exact sample from ``p`` (the CDF is cut at a uniform point).  The result is the same on 1 or N processes,
with any batch size, and after a resume — the properties that distributed training equivalence and trustworthy
evaluation need.  Only one uniform per row is hashed per token and the CDF is one float32 cumsum over the vocabulary,
so a decode step costs a few vector passes over ``[rows, V]`` (an earlier Gumbel-max version hashed one float64
uniform per vocabulary entry: ~0.27 s per token at V = 49k, more than the model's own forward on a CPU).

**The sampled distribution** -- one definition shared by this sampler, vLLM (``logprobs_mode="processed_logprobs"``)
and the trainer (:func:`tina.rl.logprobs.token_logprobs`): the logits divided by the temperature, the tokens outside
the top-k and then outside the nucleus (top-p) set to ``-inf`` by :func:`mask_top_k_top_p`, renormalised by a softmax.
The log-prob reported for a drawn token is its log-probability under that distribution, so engine and trainer
log-probs, and the importance ratios between them, compare like with like.  With ``top_k = 0`` and ``top_p = 1`` it is
``log_softmax(logits / T)``.
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


def uniforms(seeds: torch.Tensor, position: int) -> torch.Tensor:
    """[N] int64 seeds -> [N] float64 uniforms in (0, 1), a pure function of (seed, decode position).

    >>> u = uniforms(torch.tensor([1, 2, 3]), 5)
    >>> bool(torch.equal(u[[2, 0]], uniforms(torch.tensor([3, 1]), 5))), bool(((u > 0) & (u < 1)).all())
    (True, True)
    """
    h = mix64(mix64(seeds * _GOLDEN + position) + _C2)  # [N]
    u = ((h >> 11) & _MASK_53).to(torch.float64) / float(1 << 53)
    return u.clamp(1e-12, 1 - 1e-12)


def mask_top_k_top_p(scores: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set the scores outside the top-k, then outside the nucleus (top-p), to -inf.  scores: [N, V] (tempered logits).

    vLLM's rule (``apply_top_k_top_p``): top-k keeps every score >= the k-th largest (ties with it stay); top-p sorts
    the survivors in ascending order and drops each token whose cumulative probability, counted from the smallest up
    to and including itself, is <= 1 - top_p -- the largest token always stays.  Ties at the nucleus edge are broken
    by vocabulary index (a stable sort; vLLM's sort may break them otherwise).

    >>> s = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    >>> torch.isinf(mask_top_k_top_p(s, top_p=0.75)).tolist(), torch.isinf(mask_top_k_top_p(s, top_k=1)).tolist()
    ([[False, False, True, True]], [[False, True, True, True]])
    """
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # [N, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = torch.sort(scores, dim=-1, stable=True)  # [N, V]
        cumulative = ascending.softmax(-1).cumsum(-1)  # [N, V]: mass of the token and of every smaller one
        drop_sorted = cumulative <= 1 - top_p
        drop_sorted[:, -1] = False  # at least one token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def sample_tokens(
    logits: torch.Tensor,
    seeds: torch.Tensor | None,
    position: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row and return ``(tokens [N], logprobs [N])``.

    ``logprobs`` are the drawn tokens' log-probabilities under the distribution they were drawn from: ``logits / T``,
    truncated to the top-k / nucleus and renormalised (module docstring) -- what vLLM's processed log-probs and the
    trainer's :func:`~tina.rl.logprobs.token_logprobs` report for them, so engine and trainer compare directly.
    Greedy decoding (``greedy=True``) takes the argmax and reports ``log_softmax(logits / T)`` of it (untruncated).
    ``seeds`` (int64 [N]) select each row's stream; without seeds (and not greedy) the global torch RNG draws the
    uniforms (not batch-invariant).

    >>> logits = torch.tensor([[0.0, 10.0, 0.0]])
    >>> sample_tokens(logits, torch.tensor([7]), 0)[0].tolist(), sample_tokens(logits, None, 0, greedy=True)[0].tolist()
    ([1], [1])

    Top-k 2 of probabilities [0.5, 0.3, 0.2]: a drawn token 1 has log-probability log(0.3 / 0.8), not log(0.3):

    >>> tok, lp = sample_tokens(torch.log(torch.tensor([[0.5, 0.3, 0.2]])), torch.tensor([0]), 0, top_k=2)
    >>> round(float(lp[0]), 4) == round(float(torch.log(torch.tensor(0.5 if tok[0] == 0 else 0.3) / 0.8)), 4)
    True
    """
    scaled = logits.float() / temperature  # [N, V]
    if greedy:
        tokens = scaled.argmax(dim=-1)
        support = scaled
    else:
        support = mask_top_k_top_p(scaled, top_k, top_p) if (top_k or top_p < 1.0) else scaled  # [N, V]
        probs = torch.softmax(support, dim=-1)  # [N, V]
        cdf = probs.cumsum(dim=-1)  # [N, V]
        if seeds is not None:
            u = uniforms(seeds.to(logits.device), position).to(torch.float32)
        else:
            u = torch.rand(logits.shape[0], device=logits.device)
        u = u.clamp(max=1 - 2**-24)  # float32 rounding must not reach 1
        target = (u * cdf[:, -1]).unsqueeze(-1)  # [N, 1]: scaled by the CDF's own total (float32 rounding)
        tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
        # rounding can land on a zero-probability token past the end of the live mass: take the last live one before
        dead = probs.gather(-1, tokens[:, None]).squeeze(-1) == 0
        if bool(dead.any()):
            index = torch.arange(probs.shape[-1], device=probs.device)[None, :]
            before = (probs[dead] > 0) & (index <= tokens[dead][:, None])
            tokens[dead] = torch.where(before, index, -1).max(-1).values
    logz = torch.logsumexp(support, dim=-1)  # [N]: over the kept tokens only (renormalised)
    picked = support.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, picked - logz
