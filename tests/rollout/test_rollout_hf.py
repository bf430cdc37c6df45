"""The hf engine: our decode loop against transformers' generate, its log-probs against the trainer's, batch and
wave invariance, finished rows leaving the batch, and no sampling setting taken from a model's generation_config."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GenerationConfig

from tina.models import attach_lora, load_model_and_tokenizer
from tina.rl.logprobs import token_logprobs
from tina.rollout import AdapterVersion, HFEngine, Sampling
from tina.rollout.base import eos_token_ids, left_pad

PROBLEMS = ["1+2-3", "4+4-0", "9+9-9 and a longer prompt", "5+1-2", "7-3+1"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(
        "builtin:tiny-arith", dtype="float32", attn_implementation="eager", device="cpu"
    )
    model = attach_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    model.eval()
    prompts = [
        tok(
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for p in PROBLEMS
    ]
    return model, tok, prompts


def test_greedy_equals_transformers_generate(setup):
    model, tok, prompts = setup
    rollout = HFEngine(model, tok).generate(prompts, Sampling(n=1, max_new_tokens=24, greedy=True))
    ids, mask = left_pad(prompts, tok.pad_token_id)
    config = GenerationConfig(
        do_sample=False, max_new_tokens=24, eos_token_id=eos_token_ids(model, tok), pad_token_id=tok.pad_token_id
    )
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    assert rollout.texts == tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_engine_log_probs_equal_the_trainers(setup, temperature):
    model, tok, prompts = setup
    rollout = HFEngine(model, tok).generate(prompts, Sampling(n=3, max_new_tokens=24, temperature=temperature, seed=5))
    with torch.no_grad():
        trainer = token_logprobs(
            model,
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.completion_ids,
            rollout.completion_mask,
            temperature=temperature,
        )
    mask = rollout.completion_mask
    assert mask.sum() > 30
    assert ((trainer - rollout.logprobs).abs() * mask).max() < 1e-4


def test_completions_do_not_depend_on_calls_batches_or_waves(setup):
    model, tok, prompts = setup
    sampling = Sampling(n=3, max_new_tokens=24, temperature=1.0, seed=7)
    keys = [10, 11, 12, 13, 14]
    together = HFEngine(model, tok).generate(prompts, sampling, keys=keys)
    torch.manual_seed(123)  # the global RNG must not matter
    alone = HFEngine(model, tok).generate(prompts[1:2], sampling, keys=[11])
    assert together.texts[3:6] == alone.texts
    assert torch.equal(together.lengths[3:6], alone.lengths)
    waves = HFEngine(model, tok, max_batch_rows=4).generate(prompts, sampling, keys=keys)  # 1 prompt per wave
    assert waves.texts == together.texts and torch.equal(waves.completion_ids, together.completion_ids)
    other_seed = HFEngine(model, tok).generate(prompts[1:2], Sampling(n=3, max_new_tokens=24, seed=8), keys=[11])
    assert other_seed.texts != alone.texts


def test_finished_rows_leave_the_batch(setup):
    model, tok, prompts = setup
    engine = HFEngine(model, tok)
    rollout = engine.generate(prompts, Sampling(n=4, max_new_tokens=40, temperature=1.0, seed=1))
    assert engine.stats.decode_slots == engine.stats.tokens == rollout.n_tokens
    assert len(set(rollout.lengths.tolist())) > 1  # lengths differ, so a static batch would waste slots ...
    assert engine.stats.static_slots == len(rollout.texts) * int(rollout.lengths.max())
    assert 0 < engine.stats.static_waste < 1  # ... which this engine did not spend
    ended = ~rollout.truncated
    assert ended.any()
    eos = eos_token_ids(model, tok)
    for row, n, t in zip(rollout.completion_ids, rollout.lengths, rollout.truncated, strict=True):
        assert (int(row[n - 1]) in eos) != bool(t)  # the EOS is the last token of a finished completion


def test_generation_config_of_the_model_is_never_applied(setup):
    model, tok, prompts = setup
    greedy, seeded = Sampling(n=1, max_new_tokens=24, greedy=True), Sampling(n=2, max_new_tokens=24, seed=3)
    plain = [HFEngine(model, tok).generate(prompts, s) for s in (greedy, seeded)]
    loaded = copy.deepcopy(model)
    gc = loaded.generation_config
    gc.repetition_penalty, gc.no_repeat_ngram_size, gc.top_k, gc.min_new_tokens = 1.5, 2, 1, 20
    gc.temperature, gc.top_p, gc.do_sample = 0.1, 0.5, True
    again = [HFEngine(loaded, tok).generate(prompts, s) for s in (greedy, seeded)]
    for a, b in zip(plain, again, strict=True):
        assert a.texts == b.texts and torch.equal(a.completion_ids, b.completion_ids)


def test_base_model_is_served_when_no_adapter_is_loaded(setup):
    model, tok, prompts = setup
    engine = HFEngine(model, tok)
    sampling = Sampling(n=1, max_new_tokens=16, seed=2)
    engine.load_adapter(None)
    base = engine.generate(prompts, sampling)
    assert base.adapter is None
    with model.disable_adapter():
        reference = HFEngine(model, tok).generate(prompts, sampling)
    assert base.texts == reference.texts
    version = AdapterVersion(3, "live:3")
    engine.load_adapter(version)
    adapted = engine.generate(prompts, sampling)
    assert adapted.adapter == version and adapted.texts != base.texts
