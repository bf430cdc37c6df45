"""What a rollout is and what a backend must provide."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Sampling:
    n: int = 1  # completions per prompt (G); groups are contiguous in the output
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    # With a seed, sampling is batch-invariant (tina.rollout.sampling): completion j of the prompt with key k draws
    # from its own stream row_seed(seed, k, j), whatever else is in the batch or on other processes.
    seed: int | None = None


@dataclass
class Rollout:
    """Completions for ``len(prompts) * n`` rows; row i belongs to prompt i // n."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T] (anything after the EOS is padding)
    lengths: torch.Tensor  # [N] tokens generated, EOS included
    truncated: torch.Tensor  # [N] bool: hit max_new_tokens without an EOS
    texts: list[str]  # decoded completions, special tokens removed

    @property
    def completion_mask(self) -> torch.Tensor:
        from tina.rl.masks import mask_from_lengths

        return mask_from_lengths(self.lengths, self.completion_ids.shape[1])  # [N, T]

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())


class Backend(Protocol):
    def generate(self, prompts: list[str], sampling: Sampling, keys: list[int] | None = None) -> Rollout:
        """``sampling.n`` completions per prompt; ``keys`` (one stable integer per prompt) select the streams."""
        ...
