"""Which recipe values cannot work, each refused in one line naming the key (:func:`validate`, run by
:func:`tina.config.load_config` on every recipe and override)."""

from __future__ import annotations

import re
import typing
from typing import TYPE_CHECKING

from tina.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from tina.config import Config

DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_min_lr")
SCALE_REWARDS = ("group", "batch", "none")
TEMPLATES = ("tokenizer", "r1-distill", "r1-distill-tina", "chatml", "plain")  # == tina.prompts.TEMPLATE_NAMES
DEVICES = ("auto", "cpu", "cuda", "mps")


def check_workers(cfg: Config) -> None:
    """``rollout.devices``, ``max_staleness`` and ``worker_threads``: values that cannot work, in one line."""
    r = cfg.rollout
    _positive("rollout.max_staleness", r.max_staleness, allow_zero=True)
    if r.worker_threads is not None:
        _positive("rollout.worker_threads", r.worker_threads)
    for d in r.devices:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", str(d)):
            raise ConfigError(f"rollout.devices: '{d}' is not a device; name one per worker, e.g. [cuda:1] or [cpu]")
    for url in r.servers:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", str(url)):
            raise ConfigError(f"rollout.servers: '{url}' is not a server address; e.g. [http://node-b:8000]")
    if r.devices and r.servers:
        raise ConfigError("rollout.devices and rollout.servers: choose local worker processes or remote servers")
    if r.max_staleness and not (r.devices or r.servers):
        raise ConfigError(
            f"rollout.max_staleness: {r.max_staleness} needs rollout workers that generate while the trainer "
            "learns; name their devices, e.g. rollout.devices=[cuda:1] (or [cpu]), or rollout.servers"
        )
    if r.max_staleness and cfg.algorithm.num_iterations > r.max_staleness:
        raise ConfigError(
            f"rollout.max_staleness: {r.max_staleness} is below algorithm.num_iterations "
            f"({cfg.algorithm.num_iterations}): a batch is trained that many steps, so the next one could never be "
            f"generated ahead; use max_staleness >= {cfg.algorithm.num_iterations} or 0"
        )


def _choice(key: str, value: str | None, choices: typing.Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}{did_you_mean(str(value), choices)}")


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(cfg: Config) -> None:
    """Reject impossible values with a message naming the key."""
    from tina.rewards import check_params  # late import: rewards import the grader
    from tina.rl.losses import LOSSES

    _choice("model.dtype", cfg.model.dtype, DTYPES)
    _choice("model.attn_implementation", cfg.model.attn_implementation, ATTN_IMPLEMENTATIONS)
    # Impossible on CPU whatever is installed.  (On device "auto", flash-attn and the GPU are checked when the model
    # loads, so a GPU recipe still validates on a laptop.)
    if cfg.train.device == "cpu" and cfg.model.dtype == "float16":
        raise ConfigError("model.dtype: float16 is not supported on CPU (train.device=cpu); use bfloat16 or float32")
    if cfg.train.device == "cpu" and cfg.model.attn_implementation == "flash_attention_2":
        raise ConfigError(
            "model.attn_implementation: flash_attention_2 needs a CUDA GPU but train.device is cpu; use sdpa or eager"
        )
    _positive("lora.r", cfg.lora.r)
    _positive("lora.alpha", cfg.lora.alpha)
    if not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(f"lora.dropout: must be in [0, 1), got {cfg.lora.dropout}")
    if not cfg.lora.target_modules:
        raise ConfigError("lora.target_modules: must name at least one module (e.g. [q_proj, v_proj])")
    _choice("lora.bias", cfg.lora.bias, ("none", "all", "lora_only"))
    _choice("data.template", cfg.data.template, TEMPLATES)
    _check_system_prompt(cfg.data.system_prompt)
    if cfg.data.l1_mode is not None:
        _choice("data.l1_mode", cfg.data.l1_mode, ("exact", "max", "tina"))
    if cfg.data.l1_target is not None:
        _positive("data.l1_target", cfg.data.l1_target)
    if cfg.data.l1_target_range is not None:
        rng = cfg.data.l1_target_range
        if len(rng) != 2 or not 0 < rng[0] <= rng[1]:
            raise ConfigError(f"data.l1_target_range: must be [low, high] with 0 < low <= high, got {rng}")
        if cfg.data.l1_target is not None:
            raise ConfigError("data.l1_target_range and data.l1_target are exclusive: a fixed target or a range")
    if (cfg.data.l1_target is not None or cfg.data.l1_target_range is not None) and cfg.data.l1_mode is None:
        raise ConfigError(
            "data.l1_mode: an L1 target (data.l1_target / data.l1_target_range) needs l1_mode exact or max"
        )
    _positive("data.holdout", cfg.data.holdout, allow_zero=True)
    if cfg.data.limit is not None:
        _positive("data.limit", cfg.data.limit)
    _choice("rollout.backend", cfg.rollout.backend, ("hf", "vllm"))
    if cfg.rollout.generation_batch_size is not None:
        _positive("rollout.generation_batch_size", cfg.rollout.generation_batch_size)
    if not 0 < cfg.rollout.gpu_memory_utilization <= 1:
        raise ConfigError(
            f"rollout.gpu_memory_utilization: must be in (0, 1], got {cfg.rollout.gpu_memory_utilization}"
        )
    if cfg.rollout.max_model_len is not None:
        _positive("rollout.max_model_len", cfg.rollout.max_model_len)
    if cfg.rollout.canary_tolerance is not None:
        _positive("rollout.canary_tolerance", cfg.rollout.canary_tolerance)
    if cfg.rollout.max_logp_diff is not None:
        _positive("rollout.max_logp_diff", cfg.rollout.max_logp_diff)
    if cfg.rollout.num_generations < 2:
        raise ConfigError(
            "rollout.num_generations: must be >= 2 (group-relative advantages need a group), "
            f"got {cfg.rollout.num_generations}"
        )
    _positive("rollout.max_new_tokens", cfg.rollout.max_new_tokens)
    check_workers(cfg)
    _positive("rollout.temperature", cfg.rollout.temperature)
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p: must be in (0, 1], got {cfg.rollout.top_p}")
    _positive("rollout.top_k", cfg.rollout.top_k, allow_zero=True)
    _choice("algorithm.objective", cfg.algorithm.objective, LOSSES)
    _choice("algorithm.scale_rewards", cfg.algorithm.scale_rewards, SCALE_REWARDS)
    _positive("algorithm.beta", cfg.algorithm.beta, allow_zero=True)
    if cfg.algorithm.epsilon is not None:
        _positive("algorithm.epsilon", cfg.algorithm.epsilon)
    if cfg.algorithm.epsilon_high is not None:
        _positive("algorithm.epsilon_high", cfg.algorithm.epsilon_high)
    _choice(
        "algorithm.rollout_correction",
        cfg.algorithm.rollout_correction,
        ("auto", "none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
    )
    if cfg.algorithm.rollout_correction_cap <= 1:
        raise ConfigError(f"algorithm.rollout_correction_cap: must be > 1, got {cfg.algorithm.rollout_correction_cap}")
    _positive("algorithm.num_iterations", cfg.algorithm.num_iterations)
    _positive("algorithm.dynamic_sampling_rounds", cfg.algorithm.dynamic_sampling_rounds)
    t = cfg.train
    _positive("train.max_steps", t.max_steps)
    if t.stop_step is not None and not 0 < t.stop_step <= t.max_steps:
        raise ConfigError(f"train.stop_step: must be in 1..train.max_steps ({t.max_steps}), got {t.stop_step}")
    _positive("train.batch_size", t.batch_size)
    if t.batch_size % cfg.rollout.num_generations:
        raise ConfigError(
            f"train.batch_size: {t.batch_size} completions is not divisible by rollout.num_generations "
            f"({cfg.rollout.num_generations}); use a multiple such as "
            f"{cfg.rollout.num_generations * max(1, t.batch_size // cfg.rollout.num_generations)}"
        )
    _positive("train.gradient_accumulation_steps", t.gradient_accumulation_steps)
    _positive("train.learning_rate", t.learning_rate)
    _choice("train.lr_scheduler", t.lr_scheduler, SCHEDULERS)
    if not 0 <= t.warmup_ratio < 1:
        raise ConfigError(f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    if not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"train.min_lr_ratio: must be in [0, 1], got {t.min_lr_ratio}")
    _positive("train.weight_decay", t.weight_decay, allow_zero=True)
    _positive("train.max_grad_norm", t.max_grad_norm, allow_zero=True)
    _positive("train.save_steps", t.save_steps)
    if t.save_total_limit is not None:
        _positive("train.save_total_limit", t.save_total_limit)
    _positive("train.logging_steps", t.logging_steps)
    _choice("train.device", t.device, DEVICES)
    _positive("train.grader_timeout", t.grader_timeout)
    _positive("train.collective_timeout", t.collective_timeout)
    for tracker in t.report_to:
        _choice("train.report_to", tracker, ("tensorboard", "wandb"))
    _positive("train.max_bad_steps", t.max_bad_steps)
    _positive("train.probe_max_new_tokens", t.probe_max_new_tokens)
    _positive("train.logprob_memory_mb", t.logprob_memory_mb)
    if isinstance(t.max_tokens_per_pass, str) and t.max_tokens_per_pass != "auto":
        raise ConfigError(
            f"train.max_tokens_per_pass: expected a positive integer, auto or null, got {t.max_tokens_per_pass!r}"
        )
    if isinstance(t.max_tokens_per_pass, int):
        _positive("train.max_tokens_per_pass", t.max_tokens_per_pass)
    _positive("cost.num_devices", cfg.cost.num_devices)
    _positive("cost.usd_per_device_hour", cfg.cost.usd_per_device_hour, allow_zero=True)
    if cfg.cost.seconds_per_step is not None:
        _positive("cost.seconds_per_step", cfg.cost.seconds_per_step)
    _choice("cost.seconds_per_step_source", cfg.cost.seconds_per_step_source, ("paper", "guess", "measured"))
    if cfg.cost.reference_usd is not None:
        _positive("cost.reference_usd", cfg.cost.reference_usd, allow_zero=True)
    _positive("eval.num_problems", cfg.eval.num_problems)
    _positive("eval.samples", cfg.eval.samples)
    if not cfg.rewards:
        raise ConfigError("rewards: at least one reward is needed, e.g. rewards: {accuracy: {weight: 1.0}}")
    for reward in cfg.rewards:
        check_params(reward.name, reward.params)  # unknown reward or parameter -> ConfigError with a suggestion


def _check_system_prompt(system_prompt: str | None) -> None:
    """A system prompt that looks like a misspelt key of tina.prompts.SYSTEM_PROMPTS is an error now, not at run
    time."""
    from tina.prompts import resolve_system_prompt

    try:
        resolve_system_prompt(system_prompt)
    except ConfigError as exc:
        raise ConfigError(f"data.system_prompt: {exc}") from None
