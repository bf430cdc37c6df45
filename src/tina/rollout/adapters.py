"""Handing the live adapter to a rollout engine: a fresh, verifiable version every time the weights change.

The ``hf`` engine generates with the trainer's own model, so a version is only a number.  An engine with its own copy
of the base (``vllm``) reads adapters from disk: :meth:`AdapterHandover.publish` writes the adapter as a standard PEFT
folder (``adapter_config.json`` + ``adapter_model.safetensors``) under ``RUN/.engine/rank<r>/v<version>/`` and returns
an :class:`~tina.rollout.base.AdapterVersion` with a digest of the tensors, which the engine re-computes from the
folder before it serves it.  A stale folder (the previous version, a half-written file, another run's adapter) can
therefore never be served as the current one.  The last ``keep`` folders stay on disk (an engine may still read the
previous one); older ones are deleted.

Names: a folder always holds PEFT's *saved* names (``base_model.model.….q_proj.lora_A.weight``: the adapter name
removed, as ``PeftModel.save_pretrained`` writes them), whatever form the tensors arrive in -- FSDP gathers them from
``model.named_parameters()`` (``….lora_A.default.weight``), which vLLM and PEFT both refuse.  :func:`peft_state` is the
one mapping every writer goes through; :func:`adapter_parameters` is the same map onto the live parameters, and
:func:`replace_adapter` writes an adapter into them (FSDP shards included) for the start-up canary.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import weakref
from pathlib import Path

import torch

from tina.rollout.base import AdapterVersion


def adapter_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The model's adapter parameters under the names PEFT saves them with: the keys of
    ``get_peft_model_state_dict(model)``, the live parameters as values (under FSDP the shards, or inside
    :meth:`tina.distributed.Dist.gathered` the gathered full tensors).

    ``model.state_dict()`` is never read: FSDP2 reshards gathered weights when it is.

    >>> from peft import LoraConfig, get_peft_model
    >>> m = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 2)), LoraConfig(r=1, target_modules=["0"]))
    >>> {k: tuple(p.shape) for k, p in adapter_parameters(m).items()}
    {'base_model.model.0.lora_A.weight': (1, 4), 'base_model.model.0.lora_B.weight': (2, 1)}
    """
    names = _saved_names(model)
    return {names[n]: p for n, p in model.named_parameters() if n in names}


def peft_state(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under PEFT's saved names, from either form it comes in: keys as ``model.named_parameters()`` /
    ``model.state_dict()`` name them (what FSDP gathers: ``….lora_A.default.weight``), or already saved ones (kept).
    Every adapter tensor must be there exactly once (ValueError otherwise); the tensors themselves are not copied.

    >>> from peft import LoraConfig, get_peft_model
    >>> m = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 2)), LoraConfig(r=1, target_modules=["0"]))
    >>> sorted(peft_state(m, {n: p for n, p in m.named_parameters() if p.requires_grad}))
    ['base_model.model.0.lora_A.weight', 'base_model.model.0.lora_B.weight']
    """
    names = _saved_names(model)
    saved = set(names.values())
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key if key in saved else names.get(key)
        if name is None:
            raise ValueError(f"{key} is not a tensor of the model's adapter")
        if name in out:
            raise ValueError(f"the adapter tensor {name} is given twice")
        out[name] = tensor
    missing = sorted(saved - out.keys())
    if missing:
        raise ValueError(f"the adapter state lacks {len(missing)} tensor(s), e.g. {missing[0]}")
    return out


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors as PEFT saves them (keys without the adapter name), full, on the CPU.

    Under FSDP outside :meth:`~tina.distributed.Dist.gathered` each tensor is all-gathered (a collective: every process
    calls it); inside, the gathered weights are read as they are."""
    from tina.distributed import full_tensor

    return {k: full_tensor(p).detach().to("cpu", copy=True) for k, p in adapter_parameters(model).items()}


def replace_adapter(model, state: dict[str, torch.Tensor], *, local: bool = False) -> dict[str, torch.Tensor]:
    """Write ``state`` into the model's adapter parameters in place; return what they held before.

    ``state``: full tensors, in either naming :func:`peft_state` accepts.  ``local=True``: a dict this function
    returned, put back bit for bit -- each process's own part of every tensor (its FSDP shard, or the whole tensor).
    Under FSDP every process calls it; the shards (the master copy) are written, and inside
    :meth:`~tina.distributed.Dist.gathered` the full weights are gathered again afterwards, so the next forward
    computes with the new adapter.

    >>> from peft import LoraConfig, get_peft_model
    >>> m = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 2)), LoraConfig(r=1, target_modules=["0"]))
    >>> lora_B = m.base_model.model[0].lora_B["default"].weight  # [2, 1], zero at init
    >>> old = replace_adapter(m, {k: torch.ones_like(p) for k, p in adapter_parameters(m).items()})
    >>> float(lora_B.sum()), float(old["base_model.model.0.lora_B.weight"].sum())
    (2.0, 0.0)
    >>> _ = replace_adapter(m, old, local=True)
    >>> float(lora_B.sum())
    0.0
    """
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, distribute_tensor

    state = state if local else peft_state(model, state)
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    params = adapter_parameters(model)
    regather = bool(units) and not any(isinstance(p, DTensor) for p in params.values())  # inside Dist.gathered
    if regather:
        for unit in units:
            unit.reshard()  # the shards registered again: they are what FSDP gathers from
        params = adapter_parameters(model)
    old: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for key, p in params.items():
                target = p.to_local() if isinstance(p, DTensor) else p  # a view of this process's shard
                new = state[key]
                if isinstance(p, DTensor) and not local:  # this process's part of the full tensor (no communication)
                    new = distribute_tensor(
                        new.detach().to(target.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None
                    ).to_local()
                if tuple(new.shape) != tuple(target.shape):
                    raise ValueError(
                        f"{key}: shape {tuple(new.shape)} does not fit the adapter's {tuple(target.shape)}"
                    )
                old[key] = target.detach().clone()
                target.copy_(new)
    finally:
        if regather:
            for unit in units:
                unit.unshard()
    return old


_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _saved_names(model) -> dict[str, str]:
    """{parameter name: PEFT's saved name} for the parameters ``get_peft_model_state_dict`` saves (computed by PEFT
    itself from the parameters, once per model and set of parameter names)."""
    from peft import get_peft_model_state_dict

    if not hasattr(model, "peft_config"):
        raise ValueError("the adapter's names need a PEFT model")
    params = dict(model.named_parameters())
    cached = _NAMES.get(model)
    if cached is not None and cached[0] == frozenset(params):
        return cached[1]
    by_id = {id(p): n for n, p in params.items()}
    saved = get_peft_model_state_dict(model, state_dict=params, adapter_name=next(iter(model.peft_config)))
    names = {}
    for key, p in saved.items():
        if id(p) not in by_id:
            raise ValueError(f"PEFT saves {key}, which is not one of the model's parameters")
        names[by_id[id(p)]] = key
    _NAMES[model] = (frozenset(params), names)
    return names


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
        tensors when the caller has them (full tensors, in either naming :func:`peft_state` accepts); the folder and
        the digest use PEFT's saved names."""
        if self.current is not None and self.current.version == version:
            return self.current
        if self.folder is None:
            self.current = AdapterVersion(version, digest=f"live:{version}")
            return self.current
        state = adapter_state(model) if state is None else peft_state(model, state)  # the names the folder holds
        path = self.folder / f"v{version}"
        write_adapter(model, state, path)
        self._written.append(path)
        while len(self._written) > self.keep:
            shutil.rmtree(self._written.pop(0), ignore_errors=True)
        self.current = AdapterVersion(version, adapter_digest(state), str(path))
        return self.current


def write_adapter(model, state: dict[str, torch.Tensor], path: Path) -> None:
    """A standard PEFT adapter folder with exactly these tensors under PEFT's saved names (:func:`peft_state`),
    written to a temp folder, then renamed."""
    from safetensors.torch import save_file

    state = peft_state(model, state)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = next(iter(model.peft_config.values()))
    config.save_pretrained(str(tmp))
    meta = json.loads((tmp / "adapter_config.json").read_text())
    meta["inference_mode"] = True
    (tmp / "adapter_config.json").write_text(json.dumps(meta, indent=2))
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in state.items()},
        str(tmp / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    tmp.rename(path)
