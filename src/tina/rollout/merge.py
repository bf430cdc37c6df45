"""Decode with the LoRA adapter merged into a copy of its base weights, for the length of one engine call.

Unmerged, every adapted linear layer computes ``W x + s * B (A x)`` at every decoded token: two small matrix products
beside each base product (two thirds of a decode's matmul calls for LoRA on all linear layers) and their additions.
Merged, it computes ``W' x`` with ``W' = W + s * B A``, the same function.  :func:`merged_adapter` builds ``W'`` from
the adapter *as it is now* (so the engine still serves the live adapter, never a stale merge), puts a plain linear
layer holding it in place of each LoRA layer, and on exit puts the LoRA layers back and drops the copies: the base
weights are never written (a merge followed by an unmerge, PEFT's way, would leave float rounding in them, and the
reference model of the KL term, the base-weights digest and bit-exact resume all read them).

Only where merging is exact to float32 rounding (:func:`mergeable_layers`): float32 / float64 weights -- in bfloat16 a
small update ``s * B A`` is largely rounded away in ``W + s * B A``, so the merged model would serve an older policy
than the trainer's -- plain LoRA (no DoRA or other variant) on ``torch.nn.Linear`` layers, one active adapter, and no
FSDP / DTensor shards.  Anything else decodes unmerged, as before.  The copies cost one float32 copy of the adapted
weights while a call runs (freed after it); ``rollout.merge_adapter: false`` turns it off.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

MERGE_DTYPES = (torch.float32, torch.float64)


class MergedLinear(torch.nn.Module):
    """``x @ W'.T + b``: a LoRA layer's base linear layer with the adapter folded into a copy of its weight."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight, self.bias = weight, bias  # plain tensors, not parameters: nothing trains or saves them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def mergeable_layers(model) -> list[tuple[torch.nn.Module, str, torch.nn.Module, str]] | None:
    """``(parent, attribute, lora layer, adapter name)`` of every adapted layer, or None when the model cannot be
    served merged exactly (see the module's docstring) -- a model without LoRA layers included."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    if _sharded(model):
        return None
    found = []
    for parent in model.modules():
        for attribute, layer in parent.named_children():
            if not isinstance(layer, LoraLayer):
                continue
            if getattr(layer, "disable_adapters", False) or getattr(layer, "merged", False):
                return None
            active = [a for a in layer.active_adapters if a in layer.lora_A]
            if len(active) > 1 or any(a in getattr(layer, "lora_variant", {}) for a in active):
                return None
            if getattr(layer, "fan_in_fan_out", False) or type(layer.get_base_layer()) is not torch.nn.Linear:
                return None
            if any(getattr(layer, "use_dora", {}).get(a, False) for a in active):
                return None
            weight = layer.get_base_layer().weight
            if hasattr(layer.get_base_layer(), "_hf_hook"):  # accelerate's offloading hooks move the weight
                return None
            if weight.dtype not in MERGE_DTYPES or _is_dtensor(weight) or weight.device.type == "meta":
                return None
            if active:
                found.append((parent, attribute, layer, active[0]))
    return found or None


@contextmanager
def merged_adapter(model, enabled: bool = True):
    """For the ``with`` block, ``model`` computes with each LoRA layer replaced by a :class:`MergedLinear` of its
    current weights; yields whether it did (False: the model is used as it is)."""
    layers = mergeable_layers(model) if enabled else None
    if not layers:
        yield False
        return
    placed = []
    try:
        with torch.no_grad():
            for parent, attribute, layer, adapter in layers:
                base = layer.get_base_layer()
                a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight  # [r, in], [out, r]
                weight = torch.addmm(
                    base.weight, b.to(base.weight.dtype), a.to(base.weight.dtype), alpha=layer.scaling[adapter]
                )
                setattr(parent, attribute, MergedLinear(weight, base.bias))
                placed.append((parent, attribute, layer))
        yield True
    finally:
        for parent, attribute, layer in placed:
            setattr(parent, attribute, layer)


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def _sharded(model) -> bool:
    """FSDP (either version) or DeepSpeed ZeRO-3 holds the weights in shards: never merged."""
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # pragma: no cover
        return False
    return any(
        isinstance(m, (FSDPModule, FullyShardedDataParallel)) or hasattr(getattr(m, "weight", None), "ds_id")
        for m in model.modules()
    )
