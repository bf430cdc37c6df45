"""Rollouts with ``transformers`` ``generate``: batched, KV cache, left padding, the *current* adapter.

The backend holds a reference to the live (PEFT) model, so every call samples from the adapter as it is now — there
is no weight copy that could go stale.
"""

from __future__ import annotations

import torch

from tina.rl.masks import completion_lengths
from tina.rollout.base import Rollout, Sampling
from tina.rollout.sampling import GumbelSampler, row_seed


class HFBackend:
    def __init__(self, model, tokenizer, *, eos_ids: list[int] | None = None, batch_size: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids or eos_token_ids(model, tokenizer)
        self.batch_size = batch_size  # rows per generate call (None = all at once)

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: Sampling, keys: list[int] | None = None) -> Rollout:
        from transformers import GenerationConfig, LogitsProcessorList

        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        prompt_ids = enc["input_ids"].repeat_interleave(sampling.n, dim=0)  # [N, P]
        prompt_mask = enc["attention_mask"].repeat_interleave(sampling.n, dim=0)  # [N, P]
        seeded = sampling.seed is not None and not sampling.greedy
        native = not sampling.greedy and not seeded  # torch.multinomial on the global RNG
        config = GenerationConfig(
            do_sample=native,
            temperature=sampling.temperature if native else None,
            top_p=sampling.top_p if native else None,
            top_k=(sampling.top_k or None) if native else None,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else self.eos_ids[0],
            bos_token_id=None,
        )
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        if seeded:
            keys = list(range(len(prompts))) if keys is None else keys
            seeds = torch.tensor([row_seed(sampling.seed, k, j) for k in keys for j in range(sampling.n)])  # [N]
        chunks = []
        step = self.batch_size or prompt_ids.shape[0]
        try:
            for i in range(0, prompt_ids.shape[0], step):
                ids = prompt_ids[i : i + step].to(device)
                mask = prompt_mask[i : i + step].to(device)
                processors = LogitsProcessorList()
                if seeded:
                    processors.append(GumbelSampler(seeds[i : i + step], ids.shape[1], temperature=sampling.temperature,
                                                    top_k=sampling.top_k, top_p=sampling.top_p))
                # synced_gpus=False: the weights are local while generating (replicated, or gathered by
                # Dist.gathered under FSDP), so each process decodes on its own and may stop at its own length
                out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                          logits_processor=processors, synced_gpus=False)
                chunks.append(out[:, ids.shape[1] :].cpu())  # [n, T_i]
        finally:
            self.model.train(was_training)
        width = max(c.shape[1] for c in chunks)
        pad = config.pad_token_id
        completion_ids = torch.cat(
            [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad) for c in chunks], dim=0
        )  # [N, T]
        lengths, truncated = completion_lengths(completion_ids, self.eos_ids)
        texts = tok.batch_decode(
            [row[:n] for row, n in zip(completion_ids.tolist(), lengths.tolist())], skip_special_tokens=True
        )
        return Rollout(prompt_ids, prompt_mask, completion_ids, lengths, truncated, texts)


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the generation config's EOS ids plus the tokenizer's EOS."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v not in ids:
                ids.append(int(v))
    if not ids:
        raise ValueError("the model and tokenizer define no end-of-sequence token")
    return ids
