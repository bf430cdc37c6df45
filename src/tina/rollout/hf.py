"""The ``hf`` rollout engine: the live transformers (PEFT) model, decoded by our own short loop with a KV cache.

It holds a reference to the model the trainer updates, so every call samples from the adapter as it is *now* -- there
is no weight copy that could go stale.  The loop, per call::

    prefill every distinct prompt ONCE (left-padded)          # not G times: the cache is then repeated G times
    repeat: sample one token per active row                    # tina.rollout.sampling: keyed, batch-invariant
            drop the rows that just ended from the batch       # their KV cache rows too: no decode slot is spent
            one forward of the active rows                     #   on a finished completion
    until every row ended or the token budget is spent

Only temperature / top-k / top-p (from :class:`~tina.rollout.base.Sampling`) shape the distribution: the model
folder's ``generation_config`` (repetition penalty, n-gram blocking, top-k, minimum length ...) never applies, which
transformers' ``generate`` would do for every field the caller leaves unset.  The log-probability of each sampled
token under the distribution it was drawn from (``logits / T``, truncated to the top-k / nucleus and renormalised:
:mod:`tina.rollout.sampling`, the trainer's and vLLM's definition too) is returned with the completion.  Prompts are
processed in *waves* of at most ``max_batch_rows`` rows (all at once by default), sorted by prompt length so a wave
pads little; with seeded sampling the completions do not depend on the waves.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from tina.rl.logprobs import cache_argument, position_ids_from_mask, returned_cache
from tina.rollout.base import AdapterVersion, Rollout, Sampling, eos_token_ids, left_pad
from tina.rollout.merge import merged_adapter
from tina.rollout.sampling import row_seed, sample_tokens


@dataclass
class DecodeStats:
    """Decode work of an engine's calls so far (for benchmarks and the ledger)."""

    calls: int = 0
    tokens: int = 0  # tokens generated (EOS included)
    decode_slots: int = 0  # row-steps decoded (== tokens: finished rows leave the batch)
    static_slots: int = 0  # row-steps a static batch (every row decodes until its wave's longest ends) would take

    @property
    def static_waste(self) -> float:
        """Fraction of a static batch's decode slots that would be spent on rows that had already finished."""
        return 1 - self.tokens / self.static_slots if self.static_slots else 0.0


class HFEngine:
    name = "hf"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        eos_ids: list[int] | None = None,
        max_batch_rows: int | None = None,
        merge: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids or eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.max_batch_rows = max_batch_rows  # rows per decode wave (None = all at once)
        self.adapter: AdapterVersion | None = None
        self._base = False  # serve the base model (the adapter disabled)
        self.merge = merge  # decode with the adapter merged into a copy of the weights, where exact (rollout.merge)
        self.stats = DecodeStats()

    @property
    def version(self) -> str:
        import transformers

        return f"transformers {transformers.__version__} (tina decode loop)"

    def load_adapter(self, adapter: AdapterVersion | None) -> None:
        """The live model *is* the current adapter; None serves the base model (the adapter disabled)."""
        self.adapter, self._base = adapter, adapter is None

    def awake(self):
        """The trainer's own model never sleeps: a no-op context (the protocol's ``awake``)."""
        return nullcontext()

    def info(self) -> dict:
        """What the engine reports of itself (``tina doctor`` shows it)."""
        return {
            "engine": self.version,
            "memory": "shares the trainer's model (never sleeps)"
            + ("; a float32 adapter is merged into a copy of its weights during each call" if self.merge else ""),
            "calls": self.stats.calls,
            "tokens": self.stats.tokens,
        }

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: Sampling, keys: list[int] | None = None) -> Rollout:
        n = sampling.n
        seeded = sampling.seed is not None and not sampling.greedy
        keys = list(range(len(prompts))) if keys is None else list(keys)
        seeds = [row_seed(sampling.seed, k, j) for k in keys for j in range(n)] if seeded else None
        rows = len(prompts) * n
        width = sampling.max_new_tokens
        tokens = torch.full((rows, width), self.pad_id, dtype=torch.long)
        logps = torch.zeros((rows, width))
        lengths = torch.zeros(rows, dtype=torch.long)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # waves of similar prompt lengths
        per_wave = max(1, (self.max_batch_rows or rows) // n)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        self.stats.calls += 1
        try:
            with self._served():
                for start in range(0, len(order), per_wave):
                    wave = order[start : start + per_wave]
                    at = torch.tensor([i * n + j for i in wave for j in range(n)])  # output rows of this wave
                    wave_seeds = torch.tensor([seeds[r] for r in at.tolist()]) if seeded else None
                    ids, mask = left_pad([prompts[i] for i in wave], self.pad_id)
                    t, lp, ln = self._decode(ids.to(device), mask.to(device), n, wave_seeds, sampling)
                    tokens[at, : t.shape[1]], logps[at, : t.shape[1]], lengths[at] = t, lp, ln
                    self.stats.static_slots += len(at) * int(ln.max())
        finally:
            self.model.train(was_training)
        used = int(lengths.max()) if rows else 0
        tokens, logps = tokens[:, :used], logps[:, :used]
        truncated = ~torch.isin(
            tokens.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1), torch.tensor(self.eos_ids)
        ) | (lengths == 0)
        self.stats.tokens += int(lengths.sum())
        self.stats.decode_slots += int(lengths.sum())
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_id)
        texts = self.tokenizer.batch_decode(
            [row[:k] for row, k in zip(tokens.tolist(), lengths.tolist(), strict=True)], skip_special_tokens=True
        )
        return Rollout(
            prompt_ids.repeat_interleave(n, 0),
            prompt_mask.repeat_interleave(n, 0),
            tokens,
            lengths,
            truncated,
            texts,
            logps,
            None if self._base else self.adapter,
            self.name,
        )

    def generate_each(self, prompts: list[list[int]], sampling: Sampling, keys: list[int] | None = None):
        """Yield ``(prompt index, Rollout of its n completions)`` wave after wave (prompts sorted by length)."""
        keys = list(range(len(prompts))) if keys is None else list(keys)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_wave = max(1, (self.max_batch_rows or len(prompts) * sampling.n) // sampling.n)
        for start in range(0, len(order), per_wave):
            wave = order[start : start + per_wave]
            rollout = self.generate([prompts[i] for i in wave], sampling, keys=[keys[i] for i in wave])
            for k, i in enumerate(wave):
                yield i, rollout.rows(k * sampling.n, (k + 1) * sampling.n)

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
        """[N, T] log-probs (temperature 1) of the completions under the live model as served (the base when serving
        None), by the trainer's own :func:`tina.rl.logprobs.token_logprobs`; 0 past each row's end."""
        from tina.rollout.agreement import score_with_model

        with nullcontext() if self._base else merged_adapter(self.model, self.merge):
            return score_with_model(self.model, prompts, completions, base=self._base)

    def _served(self):
        """The model as this call serves it: the base (adapter disabled), or the live adapter -- merged into a copy of
        its weights where that is exact (:mod:`tina.rollout.merge`), else through the LoRA layers."""
        if self._base:
            return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
        return merged_adapter(self.model, self.merge)

    def _decode(self, ids, mask, n, seeds, sampling: Sampling):
        """Decode one wave: ids/mask [b, P] -> (tokens [b*n, T], logprobs [b*n, T], lengths [b*n]) on the CPU."""
        model, budget = self.model, sampling.max_new_tokens
        cache_arg = cache_argument(model)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=True,
            logits_to_keep=1,
        )
        cache, logits = returned_cache(out), out.logits[:, -1, :]  # [b, V]
        if n > 1:  # the prompt was prefilled once; its cache serves all n samples
            cache.batch_repeat_interleave(n)
            logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        rows = logits.shape[0]
        device = logits.device
        eos = torch.tensor(self.eos_ids, device=device)
        active = torch.arange(rows, device=device)  # output row of each batch row
        position = mask.sum(-1)  # [rows] position of the next token (prompt length: left padding is skipped)
        tokens = torch.zeros((rows, budget), dtype=torch.long, device=device)
        logps = torch.zeros((rows, budget), device=device)
        lengths = torch.full((rows,), budget, dtype=torch.long, device=device)
        for t in range(budget):
            tok, lp = sample_tokens(
                logits,
                None if seeds is None else seeds.to(device)[active],
                t,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                greedy=sampling.greedy,
            )
            tokens[active, t], logps[active, t] = tok, lp
            ended = torch.isin(tok, eos)
            lengths[active[ended]] = t + 1
            if t + 1 == budget or bool(ended.all()):
                break
            if bool(ended.any()):  # finished rows leave the batch, KV cache included
                keep = (~ended).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                active, mask, position, tok = active[keep], mask[keep], position[keep], tok[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = model(
                input_ids=tok[:, None],
                attention_mask=mask,
                position_ids=position[:, None],
                use_cache=True,
                logits_to_keep=1,
                **{cache_arg: cache},
            )
            logits = out.logits[:, -1, :]
            position = position + 1
        return tokens.cpu(), logps.float().cpu(), lengths.cpu()
