"""Per-token log-probabilities of completions under the current policy."""

from __future__ import annotations

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` uses them: [[0,0,1,2]] for mask [[0,1,1,1]]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,  # [B, P] left-padded
    prompt_mask: torch.Tensor,  # [B, P]
    completion_ids: torch.Tensor,  # [B, T]
    completion_mask: torch.Tensor,  # [B, T] from lengths
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log pi(completion_t | prefix) for every completion token: [B, T].

    Logits are divided by the sampling temperature, so the log-probs are those of the distribution that was sampled.
    Only the last T+1 positions' logits are materialised (``logits_to_keep``), which saves memory on long prompts.
    ``chunk_size`` splits the batch to bound activation memory.
    """
    batch = prompt_ids.shape[0]
    if chunk_size is None or chunk_size >= batch:
        return _token_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
    parts = [
        _token_logprobs(
            model,
            prompt_ids[i : i + chunk_size],
            prompt_mask[i : i + chunk_size],
            completion_ids[i : i + chunk_size],
            completion_mask[i : i + chunk_size],
            temperature,
        )
        for i in range(0, batch, chunk_size)
    ]
    return torch.cat(parts, dim=0)


def _token_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature):
    width = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
    attention_mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)  # [B, P+T]
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=width + 1,
        use_cache=False,
    ).logits  # [B, T+1, V]
    logits = logits[:, :-1, :].float() / temperature  # [B, T, V]: position t predicts completion token t
    return selective_log_softmax(logits, completion_ids)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., index] without keeping the full [B, T, V] log-softmax around for long.

    >>> selective_log_softmax(torch.zeros(1, 1, 4), torch.tensor([[2]]))
    tensor([[-1.3863]])
    """
    picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return picked - torch.logsumexp(logits, dim=-1)  # [B, T]
