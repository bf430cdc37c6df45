"""Data parallelism through accelerate (DDP, DeepSpeed ZeRO-2, FSDP): one process per device.

How a step is split (see ``train.py``): every process draws the *same* global list of prompts for the step from the
seeded sampler and keeps its contiguous share, so each group of G completions for one prompt lives on one process
and group advantages need no communication.  Sampling is seeded per (run seed, step, global prompt index, sample),
so the completions are the same on 1 or N processes.  What must be global is summed across processes: the loss
normalisers (sequences and active tokens of the step) and the logged metrics.  Gradients of the LoRA parameters are
all-reduced by the wrapped model (DDP averages them, so each process scales its loss by the world size).
Only the main process writes files.  Collectives have a timeout, so a dead peer makes the others fail instead of
hanging forever.

FSDP (FSDP2, ``fully_shard`` through accelerate) shards the base and the adapter over the processes, which changes
three things, each handled here so the loop reads the same:

- the root of the sharding is the transformers model inside the PEFT wrapper, because ``generate`` runs on that
  module (PEFT forwards ``generate`` to it) and FSDP2 needs every forward to enter through its root;
- generation runs inside :meth:`Dist.gathered`: every shard is all-gathered once and kept for the whole rollout, so
  decoding costs no collective per token and processes may stop decoding at different lengths without deadlock
  (the probe, on the main process alone, relies on this too);
- checkpoints gather the LoRA tensors and the optimizer state to full tensors (:meth:`Dist.adapter_state`,
  :meth:`Dist.optimizer_state`), so an FSDP checkpoint is the same standard PEFT adapter as any other.

DeepSpeed ZeRO-2 partitions the fp32 master copy of the LoRA weights and the Adam moments over the processes and
steps inside ``backward`` (on the step's last micro-batch only); checkpoints gather every partition
(:meth:`Dist.optimizer_state`), so a resumed run is exact.

Launch: ``accelerate launch --config_file src/tina/accelerate_configs/ddp.yaml --num_processes N -m tina train ...``
or ``tina train ... --num-processes N [--accelerate-config ddp|zero2|fsdp|PATH]``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from tina.errors import TinaError, did_you_mean


@dataclass
class Dist:
    """The process group as the loop sees it; a single process is the world of size 1."""

    accelerator: object | None = None
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def close(self) -> None:
        """End the process group (every collective of the run is done): a gloo/NCCL group left to the interpreter's
        exit can abort a finished run's process ("terminate called without an active exception")."""
        if self.accelerator is None:
            return
        import torch.distributed as td

        if td.is_available() and td.is_initialized():
            td.destroy_process_group()

    def share(self, n: int) -> slice:
        """This process's contiguous share of ``n`` items (n must be divisible by the world size)."""
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum(self, values: list[float]) -> list[float]:
        """All-reduce sum of a few floats (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t.tolist()

    def gather(self, values: list[float]) -> list[float]:
        """Concatenate equal-length float lists from every process, in rank order."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, t)
        return torch.cat(out).tolist()

    def broadcast_flag(self, flag: bool) -> bool:
        """True on every process if it is True on any (e.g. a stop request seen by one process)."""
        if not self.enabled:
            return flag
        return self.sum([1.0 if flag else 0.0])[0] > 0

    @property
    def is_deepspeed(self) -> bool:
        return self.accelerator is not None and str(self.accelerator.distributed_type).endswith("DEEPSPEED")

    @property
    def is_fsdp(self) -> bool:
        return self.accelerator is not None and str(self.accelerator.distributed_type).endswith("FSDP")

    def sync_gradients(self, model, sync: bool) -> None:
        """Whether the next forward/backward of ``model`` communicates gradients: call it before each micro-batch's
        forward with ``sync`` True only for the optimizer step's last one.

        Before it, DDP accumulates locally (``require_backward_grad_sync``, what ``no_sync()`` sets; DDP reads it in
        the *forward*, so it must be set before the forward, not around the backward) and FSDP2 skips its
        reduce-scatter (``set_requires_gradient_sync``): gradients cross the network once per step, not once per
        micro-batch.  DeepSpeed marks its boundary in :meth:`backward` instead.
        """
        if self.accelerator is None or self.is_deepspeed:
            return
        if self.is_fsdp:
            for unit in _fsdp_units(model):
                unit.set_requires_gradient_sync(sync, recurse=False)
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model.require_backward_grad_sync = sync

    def backward(self, loss: torch.Tensor, *, last: bool = True) -> None:
        """Backward of one micro-batch; ``last`` marks the optimizer step's final micro-batch.

        accelerate's DeepSpeed wrapper runs DeepSpeed's clip + optimizer step inside ``backward`` when gradients are
        synchronised, so for DeepSpeed only the last micro-batch of a step is marked as a boundary.  (DDP and FSDP:
        :meth:`sync_gradients` before the forward.)
        """
        if self.accelerator is None:
            loss.backward()
            return
        if self.is_deepspeed:
            self.accelerator.gradient_state._set_sync_gradients(last)
        self.accelerator.backward(loss)

    def step(self, optimizer) -> None:
        """Apply the step's accumulated gradients, then clear them."""
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def discard_gradients(self, optimizer, loss: torch.Tensor | None = None) -> None:
        """Drop the step's accumulated gradients without updating anything (a skipped step).

        Every process calls it.  Under DeepSpeed ``zero_grad()`` / ``step()`` are no-ops (accelerate's wrapper) and the
        engine keeps the earlier micro-batches' gradients in its own buffers until the step's boundary backward, where
        it steps.  So when the boundary has not been reached yet, pass the current micro-batch's ``loss``: its backward
        is run as the boundary with the loss made NaN, every gradient becomes non-finite, and DeepSpeed's own overflow
        check skips the update and clears all accumulated gradients (the optimizer state is untouched).
        """
        if not self.is_deepspeed:
            optimizer.zero_grad(set_to_none=True)
            return
        if loss is not None:
            self.backward(loss * float("nan"), last=True)
        if not getattr(optimizer, "step_was_skipped", True):
            raise RuntimeError("DeepSpeed applied a step that tina meant to skip")

    def clip_grad_norm(self, params: list, max_norm: float) -> torch.Tensor:
        """Clip and return the total gradient norm (DeepSpeed has clipped already: report its norm)."""
        if self.is_deepspeed:
            norm = self.accelerator.deepspeed_engine_wrapped.engine.get_global_grad_norm()
            return torch.tensor(float(norm) if norm is not None else 0.0)
        if self.accelerator is not None:
            return torch.as_tensor(self.accelerator.clip_grad_norm_(params, max_norm))
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def all_gather_object(self, obj):
        """Every process's ``obj`` (picklable; CPU tensors inside are fine), in rank order."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def prepare(self, model, optimizer, *, max_grad_norm: float | None = None):
        """Wrap for data parallelism (DDP / DeepSpeed / FSDP as accelerate is configured); a no-op alone.

        Returns ``(module to run the loss through, optimizer)``.  For FSDP the sharding root is the transformers model
        inside the PEFT wrapper (sharded in place), and the PEFT model itself is returned.  DeepSpeed clips gradients
        itself, so the recipe's ``max_grad_norm`` is written into its config (the recipe, not the accelerate file,
        decides the clipping).
        """
        if self.accelerator is None:
            return model, optimizer
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None:
            ds = plugin.deepspeed_config
            stage = ds.get("zero_optimization", {}).get("stage")
            if stage not in (None, 0, 1, 2):
                raise TinaError(
                    f"DeepSpeed ZeRO stage {stage} is not supported (generation would need every "
                    "partitioned weight gathered per token); use zero2.yaml, or fsdp.yaml to shard the "
                    "model"
                )
            if ds.get("train_micro_batch_size_per_gpu") in (None, "auto"):  # no dataloader to infer it from
                ds["train_micro_batch_size_per_gpu"] = 1
            ds["gradient_clipping"] = float(max_grad_norm or 0.0)
        if self.is_fsdp:
            fsdp = self.accelerator.state.fsdp_plugin
            if getattr(fsdp, "fsdp_version", 1) != 2:
                raise TinaError(
                    "FSDP1 is not supported: set fsdp_config.fsdp_version: 2 in the accelerate config "
                    "(the shipped fsdp.yaml does)"
                )
            inner, optimizer = self.accelerator.prepare(model.get_base_model(), optimizer)
            if inner is not model.get_base_model():
                raise TinaError("accelerate returned a new module for FSDP2; tina expects in-place sharding")
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    @contextmanager
    def gathered(self, model):
        """FSDP: all-gather every shard once and keep the full weights until exit (then reshard).

        Inside, forwards run no collectives, so a rollout (or the main process's probe) may take a different number
        of decoding steps on each process.  Every process must enter.  A no-op without FSDP.
        """
        if not self.is_fsdp:
            yield
            return
        units = _fsdp_units(model)
        saved = [_reshard_setting(m) for m in units]
        try:
            for m in units:
                m.set_reshard_after_forward(False, recurse=False)
            for m in units:
                m.unshard()
            yield
        finally:
            for m, setting in zip(units, saved, strict=True):
                m.reshard()
                _restore_reshard_setting(m, setting)

    def adapter_state(self, model) -> dict | None:
        """FSDP: the trainable (LoRA) tensors as full CPU tensors, keyed like ``model.state_dict()`` (a collective:
        every process calls it).  None otherwise (PEFT reads the model directly).

        The keys carry the adapter name (``….lora_A.default.weight``), which vLLM and PEFT refuse in a folder: every
        writer maps them to PEFT's saved names -- checkpoints through PEFT's ``save_pretrained(state_dict=...)``,
        the engine's folder through :func:`tina.rollout.adapters.peft_state` (PEFT's own mapping)."""
        if not self.is_fsdp:
            return None
        # a copy even on the CPU: inside Dist.gathered the tensor *is* FSDP's gathered storage, which must stay its own
        # (a digest's numpy view or a safetensors write would pin it, and FSDP could not free it on reshard)
        return {
            name: full_tensor(p).detach().to("cpu", copy=True)
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    @property
    def optimizer_format(self) -> str:
        """How :meth:`optimizer_state` lays the state out: ``torch`` (one optimizer's own state dict), ``by-name``
        (FSDP: full tensors keyed by parameter name) or ``deepspeed-by-rank`` (ZeRO: one partition per process)."""
        return "by-name" if self.is_fsdp else "deepspeed-by-rank" if self.is_deepspeed else "torch"

    def optimizer_state(self, model, optimizer):
        """The optimizer state to checkpoint (a collective under FSDP and DeepSpeed: every process calls it).

        DeepSpeed ZeRO partitions the fp32 master weights and Adam moments over the processes, so every partition is
        gathered (on the CPU) and saved as a list in rank order."""
        if self.is_fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                model, _torch_optimizer(optimizer), options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        if self.is_deepspeed:
            return self.all_gather_object(_to_cpu(optimizer.state_dict()))
        return optimizer.state_dict()

    def load_optimizer_state(self, model, optimizer, state) -> None:
        """Load what :meth:`optimizer_state` returned (after :meth:`prepare` for FSDP and DeepSpeed, before it
        otherwise)."""
        if self.is_fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                model,
                _torch_optimizer(optimizer),
                optim_state_dict=state,
                options=StateDictOptions(full_state_dict=True),
            )
        elif self.is_deepspeed:
            if len(state) != self.world_size:
                raise TinaError(
                    f"this checkpoint holds DeepSpeed optimizer partitions for {len(state)} processes; "
                    f"resume it with --num-processes {len(state)}"
                )
            # the fp32 master weights come from the checkpoint, not from the (bf16) model: the resume is exact
            _torch_optimizer(optimizer).load_state_dict(state, load_optimizer_states=True, load_from_fp32_weights=True)
        else:
            optimizer.load_state_dict(state)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    @property
    def device(self) -> torch.device:
        if self.accelerator is not None:
            return self.accelerator.device
        return torch.device("cpu")


def _fsdp_units(model) -> list:
    """The FSDP2-sharded modules inside ``model`` (empty without FSDP)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP shard) gathered to the full tensor (a collective); any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _torch_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper around the torch / DeepSpeed optimizer


def _to_cpu(obj):
    """Tensors anywhere in a nested state dict moved to the CPU (before pickling it between processes)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, _to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def checkpoint_safe_types() -> list:
    """Non-tensor types a DeepSpeed optimizer state holds, allowed when loading with ``weights_only=True``."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _reshard_setting(module) -> tuple:
    # FSDP2 has a setter but no getter for reshard_after_forward; accelerate gives the root and the output head
    # different values than the layers, so the exact per-group setting is read back to restore it.
    state = module._get_fsdp_state()
    return state._auto_reshard_after_forward, [g.post_forward_mesh_info for g in state._fsdp_param_groups]


def _restore_reshard_setting(module, setting: tuple) -> None:
    state = module._get_fsdp_state()
    state._auto_reshard_after_forward = setting[0]
    for group, info in zip(state._fsdp_param_groups, setting[1], strict=True):
        group.post_forward_mesh_info = info


CONFIGS_DIR = Path(__file__).parent / "accelerate_configs"


def config_path(name_or_path: str) -> Path:
    """A shipped accelerate config (ddp, zero2, fsdp) or a path to one."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise TinaError(f"accelerate config not found: {path}")
        return path
    shipped = CONFIGS_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
        raise TinaError(
            f"no shipped accelerate config '{name_or_path}'{did_you_mean(name_or_path, names)}; "
            f"choose one of {', '.join(names)} or pass a YAML path"
        )
    return shipped


def launch(num_processes: int, config: str, train_args: list[str]) -> int:
    """Run ``accelerate launch --config_file CONFIG --num_processes N -m tina train ARGS``; return its exit code."""
    import subprocess
    import sys

    check_engine_installed(config_path(config))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_path(config)),
        "--num_processes",
        str(num_processes),
        "-m",
        "tina",
        "train",
        *train_args,
    ]
    print("launching: " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    return subprocess.call(cmd)


def check_engine_installed(config: Path) -> None:
    """Fail before launching when the config's engine is missing (instead of one traceback per process)."""
    import importlib.util

    from tina.config import parse_yaml

    kind = str((parse_yaml(Path(config).read_text(), str(config)) or {}).get("distributed_type", ""))
    if kind.upper() == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise TinaError(
            f"{Path(config).name} uses DeepSpeed, which is not installed: pip install deepspeed "
            "(on a CUDA machine), or use --accelerate-config ddp"
        )


def launched_distributed() -> bool:
    """True when started by accelerate launch / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(*, cpu: bool, timeout_s: float) -> Dist:
    """Create the accelerate process group when launched with several processes; otherwise a world of one."""
    if not launched_distributed():
        return Dist()
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    acc = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))])
    return Dist(accelerator=acc, rank=acc.process_index, world_size=acc.num_processes)
