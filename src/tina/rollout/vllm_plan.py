"""What can be decided about a vLLM engine without vLLM: the LoRA rank slots it accepts, whether it can serve a model,
where each training process's engine runs (:func:`engine_placement`), and whether it sleeps between rollout and
update (:func:`sleep_plan`, from the trainer's estimated memory; ``tina check`` prints the decision).  The engine
itself is :mod:`tina.rollout.vllm`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tina.errors import TinaError

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for max_lora_rank


def lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``; a one-line error above its maximum.

    >>> lora_rank_slot(4), lora_rank_slot(32), lora_rank_slot(100)
    (8, 32, 128)
    """
    for slot in LORA_RANKS:
        if rank <= slot:
            return slot
    raise TinaError(
        f"lora.r: rank {rank} is above vLLM's maximum LoRA rank ({LORA_RANKS[-1]}); use a smaller "
        "lora.r or rollout.backend=hf"
    )


def check_servable(model_path: str) -> None:
    """A model vLLM cannot serve is a one-line error (read from config.json, before any weights are loaded)."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return  # a hub id: vLLM resolves it itself (and fails in one line in VLLMEngine if it cannot)
    archs = json.loads(config.read_text()).get("architectures") or []
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    if archs and not any(a in supported for a in archs):
        raise TinaError(
            f"rollout.backend: vllm cannot serve {model_path} (architecture {', '.join(archs)} is not "
            "supported by this vLLM); use rollout.backend=hf"
        )


# ------------------------------------------------------------------------------------------------ placement and sleep
@dataclass(frozen=True)
class Placement:
    """Where one process's engine runs."""

    executor: str | None  # vLLM's distributed_executor_backend (None: its default for one process, "uni")
    device: str  # the device that holds the engine's weights and KV cache

    def describe(self) -> str:
        if self.executor is None:
            return f"{self.device} (vLLM's default executor, one process)"
        return f"{self.device} (vLLM's {self.executor} executor, one engine per process)"


def engine_placement(*, world_size: int, local_rank: int, cuda: bool) -> Placement:
    """Each training process's engine on that process's own device.

    With several processes, vLLM's ``external_launcher`` executor: the engine joins the existing process group
    (env ``RANK`` / ``LOCAL_RANK``, as ``accelerate launch`` sets them) and its worker takes ``cuda:LOCAL_RANK`` --
    the device accelerate gave the trainer of that process.  Alone, vLLM's default executor puts it on ``cuda:0``
    (every process would, with several: all engines on the first GPU).

    >>> engine_placement(world_size=2, local_rank=1, cuda=True)
    Placement(executor='external_launcher', device='cuda:1')
    >>> engine_placement(world_size=1, local_rank=0, cuda=False)
    Placement(executor=None, device='cpu')
    """
    if world_size > 1:
        return Placement("external_launcher", f"cuda:{local_rank}" if cuda else "cpu")
    return Placement(None, "cuda:0" if cuda else "cpu")


@dataclass(frozen=True)
class SleepPlan:
    """Whether the engine sleeps between calls, and why (one line, shown by ``tina check`` and the run)."""

    sleeps: bool
    reason: str
    fits: bool = True  # False: by the estimate, the device is too small even as planned (a warning, not an error)

    def describe(self) -> str:
        return f"vllm sleep mode {'ON' if self.sleeps else 'OFF'}: {self.reason}"


BUDGET = 0.9  # share of the device that engine + trainer may plan for (allocator fragmentation, estimate error)


def sleep_plan(
    *,
    allowed: bool,
    sleep_mode: bool,
    shares_device: bool,
    engine_share: float,
    trainer_peak: float | None,
    trainer_resident: float | None,
    total: float | None,
) -> SleepPlan:
    """Sleep only when it is needed: each sleep copies the base weights to the host and back (every rollout).

    Awake, the engine holds ``engine_share x total`` (vLLM's ``gpu_memory_utilization``) for the whole run, next to the
    trainer's peak.  Sleeping, it releases that memory during the update, but still needs it next to what the trainer
    keeps between steps (``trainer_resident``: weights and optimizer state) while it generates.

    >>> G = 2**30
    >>> sleep_plan(allowed=True, sleep_mode=True, shares_device=True, engine_share=0.4, trainer_peak=24 * G,
    ...            trainer_resident=5 * G, total=80 * G).sleeps  # 32 + 24 = 56 GiB <= 72 GiB
    False
    >>> sleep_plan(allowed=True, sleep_mode=True, shares_device=True, engine_share=0.4, trainer_peak=24 * G,
    ...            trainer_resident=5 * G, total=40 * G).sleeps  # 16 + 24 = 40 GiB > 36 GiB
    True
    """
    from tina.estimates import gib

    if not sleep_mode:
        return SleepPlan(False, "not on a CUDA GPU (vLLM has no sleep mode there)")
    known = trainer_peak is not None and trainer_resident is not None and total is not None
    if known:
        budget, engine = BUDGET * total, engine_share * total
        together = engine + max(trainer_peak, trainer_resident)
        arithmetic = (
            f"engine {engine_share:g} x {gib(total)} + trainer ~{gib(max(trainer_peak, trainer_resident))} "
            f"(estimate) = {gib(together)}"
        )
        asleep_fits = engine + trainer_resident <= budget and trainer_peak <= budget
    if not shares_device:
        return SleepPlan(False, "the engine has a device of its own")
    if not allowed:
        if known and together > budget:
            return SleepPlan(
                False,
                f"rollout.vllm_sleep=false, but {arithmetic} exceeds {BUDGET:.0%} of the device; "
                "it may run out of memory",
                fits=False,
            )
        return SleepPlan(False, "rollout.vllm_sleep=false")
    if not known:
        return SleepPlan(True, "no memory estimate for this model: sleeping to be safe")
    if together <= budget:
        return SleepPlan(
            False,
            f"{arithmetic} fits in {BUDGET:.0%} of {gib(total)}: the engine stays awake (no "
            "weight copies to the host and back every step)",
        )
    reason = f"{arithmetic} exceeds {BUDGET:.0%} of {gib(total)}: the engine sleeps between rollout and update"
    if trainer_peak > budget:
        reason += (
            f"; even so the trainer's ~{gib(trainer_peak)} peak may not fit: set train.max_tokens_per_pass "
            "(or train.gradient_checkpointing=true)"
        )
    elif engine + trainer_resident > budget:
        reason += (
            f"; even so the engine's {gib(engine)} next to the trainer's ~{gib(trainer_resident)} between steps "
            "may not fit: lower rollout.gpu_memory_utilization"
        )
    return SleepPlan(True, reason, fits=asleep_fits)


def recipe_sleep_plan(
    cfg,
    shape,
    *,
    total: float | None,
    sleep_mode: bool,
    shares_device: bool,
    weight_bytes: int,
    world_size: int = 1,
    fsdp: bool = False,
) -> SleepPlan:
    """:func:`sleep_plan` for a recipe: the trainer's memory estimated from the model's shape
    (:class:`tina.estimates.ModelShape`; None: unknown) for one of ``world_size`` processes."""
    from tina.estimates import estimate_trainer_memory

    est = (
        None
        if shape is None
        else estimate_trainer_memory(
            cfg, shape, weight_bytes=weight_bytes, world_size=world_size, fsdp=fsdp, device_bytes=total
        )
    )
    return sleep_plan(
        allowed=cfg.rollout.vllm_sleep,
        sleep_mode=sleep_mode,
        shares_device=shares_device,
        engine_share=cfg.rollout.gpu_memory_utilization,
        trainer_peak=None if est is None else est.peak,
        trainer_resident=None if est is None else est.resident,
        total=total,
    )


def describe_recipe_sleep(cfg) -> str | None:
    """``tina check``'s line on sleep mode for a vllm recipe (None for other engines), without loading any weights:
    the model's shape from its ``config.json`` (a local folder, or the hub cache), the device's memory from this
    machine's first GPU, else from ``cost.device_name``; one process.  A run decides again with what it finds."""
    if cfg.rollout.backend != "vllm":
        return None
    from tina.estimates import ModelShape, dtype_bytes, nominal_gpu_bytes

    if torch.cuda.is_available():
        total, where = float(torch.cuda.get_device_properties(0).total_memory), torch.cuda.get_device_name(0)
    else:
        total, where = nominal_gpu_bytes(cfg.cost.device_name), f"{cfg.cost.device_name} (cost.device_name)"
    config = _model_config(cfg.model.name_or_path, cfg.model.revision)
    shape = None if config is None else ModelShape.from_config(config)
    plan = recipe_sleep_plan(
        cfg,
        shape,
        total=total,
        sleep_mode=total is not None,
        shares_device=True,
        weight_bytes=dtype_bytes(cfg.model.dtype),
    )
    text = f"{plan.describe()} [on {where}, one process"
    if shape is None and total is not None:
        text += "; the model's config.json is not on this machine"
    return text + "; a run decides again on its own device]"


def _model_config(name_or_path: str, revision: str | None) -> dict | None:
    """The model's config.json without loading or downloading anything (None: not here)."""
    path = Path(name_or_path) / "config.json"
    if not path.is_file() and not name_or_path.startswith("builtin:") and "/" in name_or_path:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
            path = Path(cached) if isinstance(cached, str) else path
        except (ImportError, ValueError):
            pass
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
