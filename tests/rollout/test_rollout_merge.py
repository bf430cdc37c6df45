"""The hf engine decodes with the adapter merged into a copy of its weights (tina.rollout.merge): the same
completions and log-probs as the LoRA layers give, the live adapter every call, the base weights and the module tree
untouched after a call (an exception included), and no merge where it would not be exact."""

from __future__ import annotations

import hashlib

import pytest
import torch

from tina.models import attach_lora, load_model_and_tokenizer
from tina.rollout import HFEngine, Sampling
from tina.rollout.merge import MergedLinear, mergeable_layers, merged_adapter

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(dtype="float32", **lora):
    model, tok = load_model_and_tokenizer("builtin:tiny-arith", dtype=dtype, device="cpu")
    model = attach_lora(model, r=4, alpha=8, dropout=0.1, target_modules=TARGETS, **lora)
    _perturb(model, 0)
    return model, tok


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.05)


def _digest(model) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode() + t.detach().float().numpy().tobytes())
    return h.hexdigest()


def _prompts(tok):
    rows = ["1+2-3", "4+4-0", "9+9-9 and a longer prompt", "5+1-2"]
    return [tok(f"{p} =", add_special_tokens=False)["input_ids"] for p in rows]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    return _model()


def test_merged_decode_equals_the_lora_layers_and_serves_the_live_adapter(setup):
    model, tok = setup
    prompts, sampling = _prompts(tok), Sampling(n=3, max_new_tokens=20, temperature=1.0, seed=7)
    before = _digest(model)
    merged, plain = HFEngine(model, tok), HFEngine(model, tok, merge=False)
    a, b = merged.generate(prompts, sampling), plain.generate(prompts, sampling)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.lengths, b.lengths)
    assert (a.logprobs - b.logprobs).abs().max() < 1e-4  # float32 rounding (log-probs down to about -10)
    assert (a.logprobs - b.logprobs).abs().mean() < 1e-6
    assert _digest(model) == before and not any(isinstance(m, MergedLinear) for m in model.modules())
    _perturb(model, 1)  # the trainer's update: the next call must serve it, not the previous merge
    try:
        c, d = merged.generate(prompts, sampling), plain.generate(prompts, sampling)
        assert torch.equal(c.completion_ids, d.completion_ids) and not torch.equal(c.completion_ids, a.completion_ids)
        assert (c.logprobs - d.logprobs).abs().max() < 1e-4
        completions = [row[:k] for row, k in zip(c.completion_ids.tolist(), c.lengths.tolist(), strict=True)]
        repeated = [p for p in prompts for _ in range(3)]
        assert (merged.score(repeated, completions) - plain.score(repeated, completions)).abs().max() < 1e-4
    finally:
        _perturb(model, 0)


def test_the_merged_layers_compute_what_the_lora_layers_do_and_leave_on_error(setup):
    model, tok = setup
    ids = torch.tensor([_prompts(tok)[2]])
    model.eval()
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        with merged_adapter(model) as merged:
            assert merged
            inside = model(input_ids=ids).logits
            swapped = [m for m in model.modules() if isinstance(m, MergedLinear)]
            assert len(swapped) == 7 * model.config.num_hidden_layers
            assert not any(isinstance(w, torch.nn.Parameter) for m in swapped for w in (m.weight,))
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert (inside - reference).abs().max() < 1e-4  # float32 rounding of logits up to about 5
    assert (base - reference).abs().max() > 1e-2  # ... and the adapter does change them
    before = _digest(model)
    with pytest.raises(RuntimeError, match="boom"), merged_adapter(model):
        raise RuntimeError("boom")
    assert _digest(model) == before and not any(isinstance(m, MergedLinear) for m in model.modules())
    with merged_adapter(model, enabled=False) as merged:
        assert not merged and not any(isinstance(m, MergedLinear) for m in model.modules())


def test_no_merge_where_it_would_not_be_exact(setup):
    model, _ = setup
    assert len(mergeable_layers(model)) == 7 * model.config.num_hidden_layers
    with model.disable_adapter():  # serving the base: nothing to merge
        assert mergeable_layers(model) is None
    bf16, _ = _model("bfloat16")  # W + s*B*A in bfloat16 would round small updates away
    assert mergeable_layers(bf16) is None
    from peft import LoraConfig, get_peft_model

    plain, _ = load_model_and_tokenizer("builtin:tiny-arith", dtype="float32", device="cpu")
    dora = get_peft_model(plain, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    assert mergeable_layers(dora) is None  # DoRA rescales the merged weight's columns: not a plain sum
    plain, _ = load_model_and_tokenizer("builtin:tiny-arith", dtype="float32", device="cpu")
    assert mergeable_layers(plain) is None  # no adapter at all
    with merged_adapter(bf16) as merged:
        assert not merged
