"""Per-token log-probabilities of completions under the current policy, without full-vocabulary logits.

The log-prob of completion token t is ``log_softmax(mask(W h_t / T))[y_t]`` (``W``: the output head, ``h_t``: the final
hidden state, ``T``: the sampling temperature, ``mask``: top-k then top-p truncation, tokens outside set to -inf).  That
is the distribution the token was *sampled* from -- tempered, truncated to the top-k / nucleus and renormalised over
it, the same one the hf engine's sampler (:mod:`tina.rollout.sampling`) and vLLM's processed log-probs report -- so the
trainer/engine agreement checks and the importance ratios are exact.  The truncation is
:func:`tina.rollout.sampling.mask_top_k_top_p` itself; the sampled token is always kept in the support (it is in it
whenever trainer and engine agree; should float rounding put it just outside the trainer's nucleus, its log-prob stays
finite and the difference shows in ``rollout/logp_diff_*``).  With ``top_k = 0`` and ``top_p = 1`` (every tina-*
recipe) it is ``log_softmax(W h_t / T)[y_t]``, untouched.

Two masks, never mixed up: the *completion mask* comes from the completions' lengths and is the attention mask (a
completion token always sees every token sampled before it); the *loss mask* selects the positions whose log-probs
are needed and may have holes (tokens a rollout correction masks out) or zero rows (completions left out of the loss).
A token's log-prob therefore never depends on which other tokens the loss uses.

Computing it the obvious way materialises ``[B, T, V]`` logits, a float32 copy, a scaled copy and a full log-softmax:
at Tina's scale (12 sequences x 3,585 positions x 151,936 tokens) that is tens of GB per pass.  Here the model's
output head is replaced, for the duration of one forward, by :class:`_SelectedLogprobHead`, which

* keeps only the completion positions that count (the loss mask), flattened -- padding costs nothing;
* walks them in chunks whose float32 logits fit ``max_chunk_bytes`` (a memory budget, default 256 MiB), keeping only
  each row's selected log-prob;
* when gradients are needed, computes the gradient with respect to the hidden state in the same pass (it is known in
  closed form: ``d logp / d h = (W[y] - softmax @ W) / T``, the softmax over the truncated support) and keeps that
  ``[M, H]`` tensor instead of the logits, so the backward pass neither stores nor recomputes any ``[., V]`` tensor.

The values equal the plain computation (``lean=False``) to float rounding, and so do the gradients (tests/rl).
The head swap happens inside the model's own forward, so DDP, DeepSpeed and FSDP hooks run as usual.  The plain path is
used where the shortcut would be wrong: an output head that is trained (a LoRA target or ``modules_to_save``), a model
that post-processes its logits (Gemma-style soft-capping), or a head sharded on its own by FSDP.

**Shared prompts** (``group_size=G``): the G completions of a prompt share it, so its forward pass is run once and its
key/value cache (with gradients) is repeated G times for the completions' forward -- (G-1)/G of the prompt tokens are
not recomputed.  This takes two forward calls per backward, which DDP / DeepSpeed / FSDP wrappers do not allow, and a
KV cache, which gradient checkpointing turns off: the shared path is used for an unwrapped model without gradient
checkpointing, the plain one otherwise (same values and gradients).  When the completions' lengths differ enough
(:func:`length_buckets`), they run in two completion passes, each cut to its own longest completion and attending to
a row-selected copy of the prompts' cache, so the padding of the short ones is not computed.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

DEFAULT_CHUNK_BYTES = 256 * 2**20


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` uses them: [[0,0,1,2]] for mask [[0,1,1,1]]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,  # [B, P] left-padded
    prompt_mask: torch.Tensor,  # [B, P]
    completion_ids: torch.Tensor,  # [B, T]
    completion_mask: torch.Tensor,  # [B, T] from lengths: the attention mask
    *,
    loss_mask: torch.Tensor | None = None,  # [B, T] the positions needed (holes allowed); default completion_mask
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    lean: bool = True,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    group_size: int = 1,
) -> torch.Tensor:
    """log pi(completion_t | prefix) of every completion token under the sampled distribution (logits / T, truncated to
    the top-k / nucleus, renormalised): [B, T] float32, 0 where ``loss_mask`` is 0 (lean path) -- those positions are
    never used.

    ``completion_mask`` must come from the completions' lengths (ones, then zeros: it is the attention mask); the mask
    of the tokens that enter the loss, with any holes, goes in ``loss_mask``.  A completion mask with holes is refused:
    the tokens after a hole would be scored without the masked token in their context.
    ``group_size``: rows come in contiguous groups of this many completions of the same prompt (shared prompt pass).
    """
    if completion_mask.shape[1] > 1 and bool((completion_mask[:, 1:] > completion_mask[:, :-1]).any()):
        raise ValueError(
            "token_logprobs: completion_mask has holes; it is the attention mask and must come from the "
            "completions' lengths -- pass the mask with holes as loss_mask"
        )
    select = completion_mask if loss_mask is None else loss_mask  # [B, T]
    sampled = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    if lean and group_size > 1 and can_share_prompts(model, prompt_ids, group_size):
        return _shared_prompt_logprobs(
            model,
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            select,
            max_chunk_bytes,
            group_size,
            **sampled,
        )
    width = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)  # [B, P+T]
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=width + 1,
        use_cache=False,
    )
    with selected_logprob_head(
        model, completion_ids, select, temperature, max_chunk_bytes, enabled=lean, top_k=top_k, top_p=top_p
    ) as swapped:
        out = model(**kwargs).logits
    if swapped:
        return out  # [B, T]
    logits = out[:, :-1, :].float() / temperature  # [B, T, V]: position t predicts completion token t
    return selective_log_softmax(sampled_support(logits, completion_ids, top_k, top_p), completion_ids)


def sampled_support(logits: torch.Tensor, targets: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Tempered logits [..., V] -> the sampled distribution's logits: -inf outside the top-k / nucleus
    (:func:`tina.rollout.sampling.mask_top_k_top_p`, the sampler's own rule), the target token always kept.
    Unchanged (the same tensor) when ``top_k = 0`` and ``top_p = 1``.

    Probabilities [0.5, 0.3, 0.15, 0.05], top-p 0.75: the nucleus is {0, 1}, so token 1 has log(0.3 / 0.8):

    >>> logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    >>> lp = selective_log_softmax(sampled_support(logits, torch.tensor([1]), top_p=0.75), torch.tensor([1]))
    >>> round(float(lp[0]), 4), round(float(torch.log(torch.tensor(0.3 / 0.8))), 4)
    (-0.9808, -0.9808)
    """
    if not top_k and top_p >= 1.0:
        return logits
    from tina.rollout.sampling import mask_top_k_top_p  # here: tina.rollout imports this module

    flat, index = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1, 1)  # [N, V], [N, 1]
    masked = mask_top_k_top_p(flat, top_k, top_p).scatter(-1, index, flat.gather(-1, index))
    return masked.view(logits.shape)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., index] without keeping the full [B, T, V] log-softmax around for long.

    >>> selective_log_softmax(torch.zeros(1, 1, 4), torch.tensor([[2]]))
    tensor([[-1.3863]])
    """
    picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return picked - torch.logsumexp(logits, dim=-1)  # [B, T]


# ------------------------------------------------------------------------------------------------ shared prompts
def can_share_prompts(model, prompt_ids: torch.Tensor, group_size: int) -> bool:
    """An unwrapped model without gradient checkpointing, whose rows really come in groups of one prompt."""
    if hasattr(model, "module"):  # DDP / DeepSpeed engine: one forward per backward
        return False
    inner = _transformers_model(model)
    if getattr(inner, "is_gradient_checkpointing", False) or getattr(inner, "is_activation_checkpointing", False):
        return False
    try:
        from torch.distributed.fsdp import FSDPModule

        if any(isinstance(m, FSDPModule) for m in inner.modules()):
            return False
    except ImportError:  # pragma: no cover
        pass
    head = inner.get_output_embeddings()
    if head is None or not _lean_head_ok(inner, head) or prompt_ids.shape[0] % group_size:
        return False
    grouped = prompt_ids.view(-1, group_size, prompt_ids.shape[1])
    return bool((grouped == grouped[:, :1]).all())


def cache_argument(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    base = _transformers_model(model)
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class _HiddenOut(torch.nn.Module):
    """Stands in for the output head: the forward returns the final hidden states."""

    def forward(self, hidden):
        return hidden


def _shared_prompt_logprobs(
    model,
    prompt_ids,
    prompt_mask,
    completion_ids,
    completion_mask,
    select,
    max_chunk_bytes,
    group_size,
    *,
    temperature,
    top_k,
    top_p,
):
    inner = _transformers_model(model)
    head = inner.get_output_embeddings()
    prompts, pmask = prompt_ids[::group_size], prompt_mask[::group_size]  # [B, P]: one row per prompt
    inner.set_output_embeddings(_HiddenOut())
    try:
        out = model(
            input_ids=prompts,
            attention_mask=pmask,
            position_ids=position_ids_from_mask(pmask),
            use_cache=True,
            logits_to_keep=1,
        )
    finally:
        inner.set_output_embeddings(head)
    cache, last = returned_cache(out), out.logits  # last: [B, 1, H] hidden state that predicts completion token 0
    sampled = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    rows_of = dict(
        prompt_mask=prompt_mask, completion_ids=completion_ids, completion_mask=completion_mask, select=select
    )
    buckets = length_buckets(completion_mask.sum(-1).long())
    if len(buckets) == 1:  # every completion attends to its prompt's keys/values (differentiable)
        cache.batch_repeat_interleave(group_size)
        prefix, width = last.repeat_interleave(group_size, 0), completion_ids.shape[1]
        return _completion_pass(model, head, cache, prefix, None, width, rows_of, max_chunk_bytes, sampled)
    out = None
    for rows, width in buckets:  # completions of similar lengths, cut to their longest: padding is not computed
        rows = rows.to(completion_ids.device)
        prompt = rows // group_size
        part = _completion_pass(model, head, _cache_rows(cache, prompt), last[prompt], rows, width, rows_of,
                                max_chunk_bytes, sampled)  # fmt: skip
        part = torch.nn.functional.pad(part, (0, completion_ids.shape[1] - width))  # [n, T]
        out = (part.new_zeros(completion_ids.shape) if out is None else out).index_copy(0, rows, part)
    return out


def _completion_pass(model, head, cache, prefix, rows, width, rows_of, max_chunk_bytes, sampled):
    """Log-probs [n, width] of the completions ``rows`` (None: all) cut to ``width``, attending to ``cache`` (their
    prompts' keys and values, one row per completion); ``prefix``: the prompts' last hidden states [n, 1, H]."""
    inner = _transformers_model(model)
    take = {k: (v if rows is None else v[rows]) for k, v in rows_of.items()}
    completion_ids, completion_mask = take["completion_ids"][:, :width], take["completion_mask"][:, :width]
    attention_mask = torch.cat([take["prompt_mask"], completion_mask.to(take["prompt_mask"].dtype)], dim=1)
    positions = take["prompt_mask"].sum(-1, keepdim=True) + torch.arange(width, device=completion_ids.device)[None]
    lean = _SelectedLogprobHead(
        head, completion_ids, take["select"][:, :width], sampled["temperature"], max_chunk_bytes, prefix=prefix,
        top_k=sampled["top_k"], top_p=sampled["top_p"],
    )  # fmt: skip
    inner.set_output_embeddings(lean)
    try:
        return model(
            input_ids=completion_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=width,
            **{cache_argument(model): cache},
        ).logits  # [n, width]
    finally:
        inner.set_output_embeddings(head)


def length_buckets(lengths: torch.Tensor, *, min_saving: float = 0.15) -> list[tuple[torch.Tensor, int]]:
    """Rows (indices, longest length) to run as separate completion passes: one bucket, or the rows sorted by length
    and cut in two where that computes the fewest padded positions -- when it saves at least ``min_saving`` of them
    (a pass has a fixed cost too).  Lengths [2, 9, 3, 10]: 4 x 10 = 40 positions in one pass, 2 x 10 + 2 x 3 = 26
    in two.

    >>> [(rows.tolist(), width) for rows, width in length_buckets(torch.tensor([2, 9, 3, 10]))]
    [([3, 1], 10), ([2, 0], 3)]
    """
    n = lengths.shape[0]
    order = torch.argsort(lengths, descending=True, stable=True)
    ranked = [max(1, int(v)) for v in lengths[order]]
    whole = n * ranked[0]
    best, cut = whole, None
    for k in range(1, n):
        cost = k * ranked[0] + (n - k) * ranked[k]
        if cost < best:
            best, cut = cost, k
    if cut is None or best > (1 - min_saving) * whole:
        return [(torch.arange(n), ranked[0] if n else 1)]
    return [(order[:cut], ranked[0]), (order[cut:], ranked[cut])]


def _cache_rows(cache, rows: torch.Tensor):
    """A copy of a KV cache holding the batch rows ``rows`` (repeats allowed), differentiable; ``cache`` unchanged."""
    picked = copy.copy(cache)
    picked.layers = [copy.copy(layer) for layer in cache.layers]
    picked.batch_select_indices(rows)
    return picked


# --------------------------------------------------------------------------------------------- the lean output head
def _transformers_model(model):
    """The transformers model inside DDP / DeepSpeed / PEFT wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP, DeepSpeed engine
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _lean_head_ok(inner, head) -> bool:
    if not isinstance(head, torch.nn.Linear) or type(head) is not torch.nn.Linear:
        return False  # a LoRA-wrapped or otherwise custom head
    if any(p.requires_grad for p in head.parameters()):
        return False
    if getattr(inner.config, "final_logit_softcapping", None):
        return False
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - old torch
        return True
    return not isinstance(head, FSDPModule)


@contextmanager
def selected_logprob_head(
    model, targets, mask, temperature, max_chunk_bytes, *, enabled: bool = True, top_k: int = 0, top_p: float = 1.0
):
    """Within the block, ``model(...).logits`` is the [B, T] selected log-probs; yields whether the swap happened."""
    inner = _transformers_model(model)
    head = inner.get_output_embeddings() if enabled else None
    if head is None or not _lean_head_ok(inner, head):
        yield False
        return
    inner.set_output_embeddings(
        _SelectedLogprobHead(head, targets, mask, temperature, max_chunk_bytes, top_k=top_k, top_p=top_p)
    )
    try:
        yield True
    finally:
        inner.set_output_embeddings(head)


class _SelectedLogprobHead(torch.nn.Module):
    """Stands in for the output head for one forward: hidden [B, T+1, H] -> log-probs [B, T] of ``targets`` at the
    positions of ``mask`` (the loss mask; 0 elsewhere), under the sampled distribution (temperature, top-k, top-p)."""

    def __init__(
        self,
        head: torch.nn.Linear,
        targets,
        mask,
        temperature: float,
        max_chunk_bytes: int,
        *,
        prefix: torch.Tensor | None = None,
        top_k: int = 0,
        top_p: float = 1.0,
    ):
        super().__init__()
        self.head = head
        self.targets, self.mask = targets, mask  # [B, T]
        self.temperature, self.max_chunk_bytes = temperature, max_chunk_bytes
        self.top_k, self.top_p = top_k, top_p
        self.prefix = prefix  # [B, 1, H]: the prompt's last hidden state when the prompt was run separately

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.prefix is not None:  # hidden: [B, T, H] of the completion tokens; prepend what predicts token 0
            hidden = torch.cat([self.prefix, hidden], dim=1)
        hidden = hidden[:, :-1, :]  # [B, T, H]: position t predicts completion token t
        keep = self.mask.reshape(-1) > 0  # [B*T]
        rows = keep.nonzero().squeeze(1)  # [M]
        flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # [M, H]
        targets = self.targets.reshape(-1).index_select(0, rows)  # [M]
        live = 3 if not self.top_k and self.top_p >= 1.0 else 10  # float32 [chunk, V] live (truncation: sort, index)
        chunk = max(1, self.max_chunk_bytes // (self.head.weight.shape[0] * 4 * live))
        picked = _SelectedLogprob.apply(
            flat, self.head.weight, self.head.bias, targets, 1.0 / self.temperature, chunk, self.top_k, self.top_p
        )  # [M]
        out = picked.new_zeros(keep.shape[0]).index_copy(0, rows, picked)  # [B*T]
        return out.view(self.mask.shape)


class _SelectedLogprob(torch.autograd.Function):
    """logp[m] = log_softmax(support(inv_t * (W h_m + b)))[y_m], chunk by chunk (``support``: :func:`sampled_support`,
    top-k / top-p); d logp / d h kept from the forward pass (the softmax is 0 outside the support)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, inv_t, chunk, top_k=0, top_p=1.0):
        need_grad = ctx.needs_input_grad[0]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)  # [M]
        grad_h = torch.empty_like(hidden) if need_grad else None  # [M, H]
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s : s + chunk], targets[s : s + chunk]
            logits = torch.nn.functional.linear(h, weight, bias).float() * inv_t  # [c, V]
            logits = sampled_support(logits, y, top_k, top_p)  # [c, V]: -inf outside the top-k / nucleus
            logz = torch.logsumexp(logits, dim=-1)  # [c]
            out[s : s + chunk] = logits.gather(-1, y[:, None]).squeeze(-1) - logz
            if need_grad:
                probs = torch.exp(logits - logz[:, None])  # [c, V]
                del logits
                expected = probs.to(weight.dtype) @ weight  # [c, H]: E_p[W]
                grad_h[s : s + chunk] = ((weight[y].float() - expected.float()) * inv_t).to(hidden.dtype)
        if need_grad:
            ctx.save_for_backward(grad_h)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (grad_h,) = ctx.saved_tensors
        return grad_out.to(grad_h.dtype)[:, None] * grad_h, None, None, None, None, None, None, None
