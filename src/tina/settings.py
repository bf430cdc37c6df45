"""The settings a training step uses, each resolved once per run from the recipe (:class:`StepSettings`).

``algorithm.rollout_correction: auto``, the distribution the trainer scores tokens under, whether that distribution
is the one the engine reports, the log-prob chunk size and ``train.max_tokens_per_pass: auto`` each depend on the
recipe and the model only, so :func:`tina.train.train` resolves them once and hands the result to every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from tina.config import Config
from tina.estimates import model_pass_tokens


@dataclass(frozen=True)
class StepSettings:
    """What :func:`tina.train.micro_batches` and :func:`tina.train.update` need besides the recipe's plain values."""

    group: int  # completions per prompt (rollout.num_generations)
    correction: str  # algorithm.rollout_correction resolved: none | token_truncate | token_mask | ...
    comparable: bool  # the trainer's log-probs are of the distribution the engine reports (the sampled one)
    distribution: dict  # token_logprobs keywords: temperature, top_k, top_p
    chunk_bytes: int  # train.logprob_memory_mb in bytes
    pass_tokens: int | None  # train.max_tokens_per_pass as a number (None: one pass per micro-batch)

    @classmethod
    def of(cls, cfg: Config, model) -> StepSettings:
        return cls(
            group=cfg.rollout.num_generations,
            correction=rollout_correction_mode(cfg),
            comparable=comparable_with_engine(cfg),
            distribution=scored_distribution(cfg),
            chunk_bytes=cfg.train.logprob_memory_mb * 2**20,
            pass_tokens=model_pass_tokens(cfg, model),
        )


def rollout_correction_mode(cfg: Config) -> str:
    """``algorithm.rollout_correction`` resolved: ``auto`` is ``token_truncate`` for an engine with its own weights
    (vLLM, or rollout workers: another implementation, or an older adapter) and ``none`` for the ``hf`` engine in the
    training process (the trainer's own model: nothing to correct)."""
    mode = cfg.algorithm.rollout_correction
    if mode == "auto":
        own = cfg.rollout.backend == "hf" and not (cfg.rollout.devices or cfg.rollout.servers)
        mode = "none" if own else "token_truncate"
    if not comparable_with_engine(cfg):
        return "none"  # trainer log-probs of raw logits are not comparable with the engine's of the sampled ones
    return mode


def scored_distribution(cfg: Config) -> dict:
    """The distribution the trainer scores tokens under (``token_logprobs`` keywords): the one they were sampled from
    -- ``rollout.temperature``, ``top_k``, ``top_p`` -- or, with ``algorithm.logprobs_at_temperature: false``
    (Tina's trainer), the raw logits (T = 1, untruncated)."""
    r = cfg.rollout
    if cfg.algorithm.logprobs_at_temperature:
        return dict(temperature=r.temperature, top_k=r.top_k, top_p=r.top_p)
    return dict(temperature=1.0, top_k=0, top_p=1.0)


def comparable_with_engine(cfg: Config) -> bool:
    """Whether the trainer's log-probs are of the distribution the engine reports (the sampled one)."""
    r = cfg.rollout
    return cfg.algorithm.logprobs_at_temperature or (r.temperature == 1.0 and r.top_k == 0 and r.top_p == 1.0)
