"""What a rollout is and what a rollout engine must provide (a Protocol, not a base class).

An engine takes prompts as token ids (tokenised once, by the trainer or the evaluator: no second tokenisation can
differ) and sampling settings, and returns completions with the engine's log-probabilities of the sampled tokens.
It is told which adapter to serve with ``load_adapter`` (an :class:`AdapterVersion`: a version number, the folder
that holds it and a digest of its tensors) and reports, with every rollout, the version it served -- so the trainer
can check that the rollout came from the adapter it is about to update (see :mod:`tina.rollout.agreement`).

What is sampled is defined by :class:`Sampling` alone: temperature, top-p, top-k, the token budget and the seed.
Engines never take sampling defaults from a model folder's ``generation_config.json`` (repetition penalties, n-gram
blocking, a default top-k, a minimum length...): RL must train on samples from the very policy whose log-probs it
differentiates, and an evaluation must follow its written protocol.  Only the end-of-sequence ids come from the model.
"""

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
    top_k: int = 0  # 0 = off
    greedy: bool = False
    # With a seed, sampling is batch-invariant: completion j of the prompt with key k draws from its own stream
    # row_seed(seed, k, j) (tina.rollout.sampling), whatever else is in the batch or on other processes.
    seed: int | None = None

    def protocol(self) -> dict:
        """What was sampled, for a results file: every setting that changes the completions."""
        return {
            "n": self.n,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "greedy": self.greedy,
            "processors": "temperature, top-k, top-p only (no repetition penalty, n-gram blocking or minimum "
            "length; the model folder's generation_config is not applied)",
        }


@dataclass(frozen=True)
class AdapterVersion:
    """One version of the trained adapter as handed to an engine (None in its place means the base model)."""

    version: int  # a fresh number for every change of the weights
    digest: str  # sha256 over the adapter's tensors (tina.rollout.adapters.adapter_digest)
    path: str | None = None  # a PEFT adapter folder holding exactly these tensors (engines that load from disk)


@dataclass
class Rollout:
    """Completions for ``len(prompts) * n`` rows; row i belongs to prompt i // n."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T] (anything after the EOS is padding)
    lengths: torch.Tensor  # [N] tokens generated, EOS included
    truncated: torch.Tensor  # [N] bool: hit max_new_tokens without an EOS
    texts: list[str]  # decoded completions, special tokens removed
    logprobs: torch.Tensor | None = None  # [N, T] engine log-probs of the sampled tokens (0 past the end)
    adapter: AdapterVersion | None = None  # the adapter the engine served (None: the base model)
    engine: str = "hf"

    @property
    def completion_mask(self) -> torch.Tensor:
        from tina.rl.masks import mask_from_lengths

        return mask_from_lengths(self.lengths, self.completion_ids.shape[1])  # [N, T]

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def select(self, rows: list[int]) -> Rollout:
        """The completions at ``rows`` (any order), as a Rollout of their own."""
        idx = torch.tensor(rows, dtype=torch.long)
        return Rollout(
            self.prompt_ids[idx],
            self.prompt_mask[idx],
            self.completion_ids[idx],
            self.lengths[idx],
            self.truncated[idx],
            [self.texts[i] for i in rows],
            None if self.logprobs is None else self.logprobs[idx],
            self.adapter,
            self.engine,
        )

    @staticmethod
    def concat(parts: list[Rollout]) -> Rollout:
        """One Rollout from several (prompts left-padded and completions right-padded to common widths)."""

        def pad(tensors, value, left=False):
            width = max(t.shape[1] for t in tensors)
            return torch.cat(
                [
                    torch.nn.functional.pad(
                        t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]), value=value
                    )
                    for t in tensors
                ]
            )

        first = parts[0]  # padding ids are masked out (masks come from lengths), any valid id does
        return Rollout(
            pad([p.prompt_ids for p in parts], 0, left=True),
            pad([p.prompt_mask for p in parts], 0, left=True),
            pad([p.completion_ids for p in parts], 0),
            torch.cat([p.lengths for p in parts]),
            torch.cat([p.truncated for p in parts]),
            [t for p in parts for t in p.texts],
            None if first.logprobs is None else pad([p.logprobs for p in parts], 0.0),
            first.adapter,
            first.engine,
        )

    @staticmethod
    def from_rows(
        prompts, ids, logprobs, truncated, n: int, *, tokenizer, pad_id: int, adapter, engine: str
    ) -> Rollout:
        """A Rollout from per-completion token-id lists, their log-probs and truncation flags (``n`` per prompt, in
        order): what an engine that answers completion by completion (vLLM in-process or a vLLM server) returns."""
        rows = len(ids)
        width = max([len(x) for x in ids] + [1])
        completion_ids = torch.full((rows, width), pad_id, dtype=torch.long)  # [N, T]
        logps = torch.zeros((rows, width))  # [N, T]
        for r, (row, lp) in enumerate(zip(ids, logprobs, strict=True)):
            completion_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            logps[r, : len(row)] = torch.tensor([float(v) for v in lp])
        prompt_ids, prompt_mask = left_pad([list(p) for p in prompts], pad_id)
        return Rollout(
            prompt_ids.repeat_interleave(n, 0),
            prompt_mask.repeat_interleave(n, 0),
            completion_ids,
            torch.tensor([len(x) for x in ids], dtype=torch.long),
            torch.tensor([bool(t) for t in truncated], dtype=torch.bool),
            tokenizer.batch_decode([list(x) for x in ids], skip_special_tokens=True),
            logps,
            adapter,
            engine,
        )

    def rows(self, start: int, stop: int) -> Rollout:
        """The completions ``start:stop`` (e.g. one prompt's group) as a Rollout of their own."""
        sl = slice(start, stop)
        return Rollout(
            self.prompt_ids[sl],
            self.prompt_mask[sl],
            self.completion_ids[sl],
            self.lengths[sl],
            self.truncated[sl],
            self.texts[sl],
            None if self.logprobs is None else self.logprobs[sl],
            self.adapter,
            self.engine,
        )


class Engine(Protocol):
    """A rollout engine: ``hf`` (:class:`tina.rollout.hf.HFEngine`) or ``vllm``
    (:class:`tina.rollout.vllm.VLLMEngine`)."""

    name: str

    def load_adapter(self, adapter: AdapterVersion | None) -> None:
        """Serve this adapter version from the next ``generate`` on (None: the base model, no adapter)."""
        ...

    def generate(self, prompts: list[list[int]], sampling: Sampling, keys: list[int] | None = None) -> Rollout:
        """``sampling.n`` completions per prompt (token ids); ``keys`` (one stable integer per prompt) select the
        random streams, so a prompt's completions do not depend on what else is in the call."""
        ...

    def generate_each(self, prompts: list[list[int]], sampling: Sampling, keys: list[int] | None = None):
        """The same completions, yielded as ``(prompt index, Rollout of its n completions)`` as soon as each prompt's
        group is done (any order) -- long evaluations write results as they go."""
        ...

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
        """[N, T] float32 log-probs of each completion token given its prompt and the completion tokens before it,
        under the adapter the engine serves now (after ``load_adapter``; None: the base), at temperature 1 over the
        full vocabulary (no top-k / top-p); 0 past each row's end.  Prompts must not be empty.  The trainer scores
        a fixed probe the same way every step, to check *what* the engine serves, not only the version number it
        reports (:func:`tina.rollout.agreement.probe_verdict`)."""
        ...

    def awake(self):
        """A context manager: inside it the engine may touch device memory (a sleeping vLLM engine wakes on entry
        and sleeps again on exit; every call above wakes it by itself too).  The trainer holds one around a step's
        engine calls, so a sleeping engine wakes once per step; engines that never sleep return a no-op context."""
        ...


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> (ids [B, P], mask [B, P]), left-padded.

    >>> left_pad([[5, 6], [7]], 0)
    (tensor([[5, 6],
            [0, 7]]), tensor([[1, 1],
            [0, 1]]))
    """
    width = max((len(p) for p in prompts), default=0)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids, mask


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the generation config's EOS ids plus the tokenizer's EOS.

    (The end-of-sequence ids are the only thing taken from a model's ``generation_config``.)"""
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
