"""Handing the live adapter to a rollout engine: a fresh, verifiable version every time the weights change.

The ``hf`` engine generates with the trainer's own model, so a version is only a number.  An engine with its own copy
of the base (``vllm``) reads adapters from disk: :meth:`AdapterHandover.publish` writes the adapter as a standard PEFT
folder (``adapter_config.json`` + ``adapter_model.safetensors``) under ``RUN/.engine/rank<r>/v<version>/`` and returns
an :class:`~tina.rollout.base.AdapterVersion` with a digest of the tensors, which the engine re-computes from the
folder before it serves it.  A stale folder (the previous version, a half-written file, another run's adapter) can
therefore never be served as the current one.  The last ``keep`` folders stay on disk (an engine may still read the
previous one); older ones are deleted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from tina.rollout.base import AdapterVersion


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The trainable adapter's tensors as PEFT saves them (keys without the adapter name), on the CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def adapter_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order.

    >>> a = {"x.lora_A.weight": torch.ones(2, 2)}
    >>> adapter_digest(a) == adapter_digest({k: v.clone() for k, v in a.items()}), adapter_digest(a) == adapter_digest(
    ...     {"x.lora_A.weight": torch.zeros(2, 2)})
    (True, False)
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def folder_digest(path: str | Path) -> str:
    """The digest of the tensors in a PEFT adapter folder (what an engine will actually load)."""
    from safetensors.torch import load_file

    return adapter_digest(load_file(str(Path(path) / "adapter_model.safetensors")))


class AdapterHandover:
    """Publishes the trainer's adapter for an engine; ``folder=None`` for engines that share the live model."""

    def __init__(self, folder: str | Path | None = None, *, keep: int = 2):
        self.folder = Path(folder) if folder is not None else None
        self.keep = keep
        self.current: AdapterVersion | None = None
        self._written: list[Path] = []

    def publish(self, model, version: int, *, state: dict | None = None) -> AdapterVersion:
        """The adapter as it is now, as ``version`` (a number that changes whenever the weights may have changed).

        Publishing the same version twice returns the same handle without writing again.  ``state``: the adapter
        tensors when the caller has them (under FSDP they must be gathered first)."""
        if self.current is not None and self.current.version == version:
            return self.current
        if self.folder is None:
            self.current = AdapterVersion(version, digest=f"live:{version}")
            return self.current
        state = adapter_state(model) if state is None else state
        path = self.folder / f"v{version}"
        write_adapter(model, state, path)
        self._written.append(path)
        while len(self._written) > self.keep:
            shutil.rmtree(self._written.pop(0), ignore_errors=True)
        self.current = AdapterVersion(version, adapter_digest(state), str(path))
        return self.current


def write_adapter(model, state: dict[str, torch.Tensor], path: Path) -> None:
    """A standard PEFT adapter folder with exactly these tensors (written to a temp folder, then renamed)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = next(iter(model.peft_config.values())) if hasattr(model, "peft_config") else None
    if config is None:
        raise ValueError("write_adapter needs a PEFT model")
    config.save_pretrained(str(tmp))
    meta = json.loads((tmp / "adapter_config.json").read_text())
    meta["inference_mode"] = True
    (tmp / "adapter_config.json").write_text(json.dumps(meta, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    tmp.rename(path)
