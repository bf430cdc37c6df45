"""What a recipe builds before its first step: the model (base + LoRA), optimizer, schedule, seeds, the probe
prompt, and the loss pass size (``train.max_tokens_per_pass: auto`` resolved)."""

from __future__ import annotations

import dataclasses
import random
import warnings

import torch

from tina import config as cfgmod
from tina.config import Config
from tina.console import say
from tina.models import attach_lora, base_weights_digest, load_model_and_tokenizer
from tina.rl.schedule import lr_multiplier, warmup_steps_for


def seed_everything(seed: int) -> None:
    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def deterministic_kernels(device: torch.device) -> None:
    """On the CPU, torch's deterministic kernels, so that two runs of one recipe on one machine give the same bits.

    With more than one thread some of torch's default CPU kernels in the loss pass do not: the tiny demo's first update
    differed between two identical runs by up to 4e-8 per LoRA weight, which 150 steps grew into a 2-point difference
    of its held-out gain; with these kernels (or one thread) the runs are identical.  Not on a GPU: there cuBLAS needs
    ``CUBLAS_WORKSPACE_CONFIG`` for it, and vLLM and flash-attention have kernels without a deterministic version
    (``warn_only`` would only warn about those).  Uninitialised memory is not filled: tina reads none.
    """
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False


def build_model(cfg: Config, device: str | None = None):
    """(PEFT model with a fresh or initial LoRA adapter, tokenizer, digest of the base weights)."""
    m, lc, t = cfg.model, cfg.lora, cfg.train
    model, tokenizer = load_model_and_tokenizer(
        m.name_or_path,
        revision=m.revision,
        dtype=m.dtype,
        attn_implementation=m.attn_implementation,
        trust_remote_code=m.trust_remote_code,
        device=device or t.device,
    )
    digest = base_weights_digest(model)
    model = attach_lora(
        model,
        r=lc.r,
        alpha=lc.alpha,
        dropout=lc.dropout,
        target_modules=lc.target_modules,
        bias=lc.bias,
        init_adapter=lc.init_adapter,
    )
    if t.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    return model, tokenizer, digest


def make_optimizer(model, t: cfgmod.TrainConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, weight_decay=t.weight_decay
    )


def make_scheduler(optimizer, t: cfgmod.TrainConfig):
    warmup = warmup_steps_for(t.max_steps, t.warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(
            step,
            total_steps=t.max_steps,
            kind=t.lr_scheduler,
            warmup_steps=warmup,
            min_ratio=t.min_lr_ratio,
            warmup_from_zero=t.warmup_from_zero,
        ),
    )


def advance_schedule(scheduler) -> None:
    """scheduler.step(), without torch's warning when the first step was skipped (no optimizer.step() yet)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        scheduler.step()


def render_probe(cfg: Config, tokenizer) -> list[int] | None:
    """The probe prompt rendered like a training prompt and tokenised, or None when ``train.probe_prompt`` is empty."""
    from tina.prompts import render_prompt

    text = cfg.train.probe_prompt.strip()
    if not text:
        return None
    d = cfg.data
    prompt = render_prompt(
        tokenizer,
        text,
        system_prompt=d.system_prompt,
        template=d.template,
        l1_mode=d.l1_mode if d.l1_target else None,
        l1_target=d.l1_target,
    )
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def resolve_pass_tokens(cfg: Config, model, *, say_it: bool) -> Config:
    """``train.max_tokens_per_pass: auto`` resolved once for this run's model and device (config.yaml keeps
    ``auto``, so a resume on another device resolves again: the pass size never changes the update)."""
    from tina.estimates import model_pass_tokens

    if cfg.train.max_tokens_per_pass != "auto":
        return cfg
    tokens = model_pass_tokens(cfg, model)
    if say_it:
        where = "the model's shape is unknown: one pass per micro-batch" if tokens is None else f"{tokens:,} tokens"
        say(f"loss pass: train.max_tokens_per_pass auto -> {where}")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_tokens_per_pass=tokens))
