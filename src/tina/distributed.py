"""Data parallelism through accelerate (DDP, DeepSpeed ZeRO-2, FSDP): one process per device.

How a step is split (see ``train.py``): every process draws the *same* global list of prompts for the step from the
seeded sampler and keeps its contiguous share, so each group of G completions for one prompt lives on one process
and group advantages need no communication.  Sampling is seeded per (run seed, step, global prompt index, sample),
so the completions are the same on 1 or N processes.  What must be global is summed across processes: the loss
normalisers (sequences and active tokens of the step) and the logged metrics.  Gradients of the LoRA parameters are
all-reduced by the wrapped model (DDP averages them, so each process scales its loss by the world size).
Only the main process writes files.  Collectives have a timeout, so a dead peer makes the others fail instead of
hanging forever.

Launch: ``accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes N -m tina train ...`` or
``tina train ... --num-processes N``.
"""

from __future__ import annotations

import os
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

    def backward(self, loss: torch.Tensor, *, last: bool = True) -> None:
        """Backward of one micro-batch; ``last`` marks the optimizer step's final micro-batch.

        accelerate's DeepSpeed wrapper runs DeepSpeed's clip + optimizer step inside ``backward`` when gradients are
        synchronised, so for DeepSpeed only the last micro-batch of a step is marked as a boundary.
        """
        if self.accelerator is None:
            loss.backward()
            return
        if self.is_deepspeed:
            self.accelerator.gradient_state._set_sync_gradients(last)
        self.accelerator.backward(loss)

    def clip_grad_norm(self, params: list, max_norm: float) -> torch.Tensor:
        """Clip and return the total gradient norm (DeepSpeed has clipped already: report its norm)."""
        if self.is_deepspeed:
            norm = self.accelerator.deepspeed_engine_wrapped.engine.get_global_grad_norm()
            return torch.tensor(float(norm) if norm is not None else 0.0)
        if self.accelerator is not None:
            return torch.as_tensor(self.accelerator.clip_grad_norm_(params, max_norm))
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def all_gather_object(self, obj):
        """Every process's ``obj``, in rank order (small Python objects only)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def prepare(self, model, optimizer):
        """Wrap for data parallelism (DDP / DeepSpeed / FSDP as accelerate is configured); a no-op alone."""
        if self.accelerator is None:
            return model, optimizer
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None:  # no dataloader is prepared, so DeepSpeed cannot infer its micro-batch size
            if plugin.deepspeed_config.get("train_micro_batch_size_per_gpu") in (None, "auto"):
                plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
        return self.accelerator.prepare(model, optimizer)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    @property
    def device(self) -> torch.device:
        if self.accelerator is not None:
            return self.accelerator.device
        return torch.device("cpu")


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
        raise TinaError(f"no shipped accelerate config '{name_or_path}'{did_you_mean(name_or_path, names)}; "
                        f"choose one of {', '.join(names)} or pass a YAML path")
    return shipped


def launch(num_processes: int, config: str, train_args: list[str]) -> int:
    """Run ``accelerate launch --config_file CONFIG --num_processes N -m tina train ARGS``; return its exit code."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path(config)),
           "--num_processes", str(num_processes), "-m", "tina", "train", *train_args]
    print("launching: " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    return subprocess.call(cmd)


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
