"""Helpers for the evaluation tests: tiny LoRA adapters with known behaviour."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def probe_answer(model) -> str:
    """A deterministic function of the live weights: the argmax token after a fixed probe input."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 17, 42, 99, 7]])).logits[0, -1]  # [V]
    return str(int(logits.argmax()))


def save_adapter(base, folder: Path, *, scale: float, seed: int) -> None:
    """A LoRA adapter on a copy of ``base`` whose B matrices are N(0, scale) (scale 0: a no-op adapter)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    model.save_pretrained(folder)
