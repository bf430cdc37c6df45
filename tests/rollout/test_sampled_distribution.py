"""One distribution on both sides: the hf engine reports, and the trainer computes, the log-probs of the distribution
the tokens were sampled from -- tempered, truncated to the top-k / nucleus, renormalised (tina.rollout.sampling)."""

from __future__ import annotations

import pytest
import torch

from tina.models import attach_lora, load_model_and_tokenizer
from tina.rl.logprobs import token_logprobs
from tina.rollout import HFEngine, Sampling

PROBLEMS = ["1+2-3", "4+4-0", "9+9-9 and a longer prompt", "5+1-2"]


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


@pytest.mark.parametrize("path", [dict(lean=False), dict(lean=True), dict(lean=True, group_size=3)])
def test_engine_and_trainer_log_probs_agree_under_top_p_and_top_k(setup, path):
    model, tok, prompts = setup
    sampled = dict(temperature=1.3, top_k=5, top_p=0.9)
    # through the LoRA layers, as the trainer computes: equal to 1e-5 (the merged decode agrees to float32 rounding
    # of the merged weights, ~2e-5 here: tests/rollout/test_rollout_merge.py)
    engine = HFEngine(model, tok, merge=False)
    rollout = engine.generate(prompts, Sampling(n=3, max_new_tokens=24, seed=5, **sampled))
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    mask = rollout.completion_mask
    with torch.no_grad():
        trainer = token_logprobs(model, *args, **sampled, **path)
        untruncated = token_logprobs(model, *args, temperature=1.3, **path)
    assert mask.sum() > 50
    assert ((trainer - rollout.logprobs).abs() * mask).max() < 1e-5
    truncated = ((trainer - untruncated).abs() * mask) > 1e-3  # tokens whose support the truncation narrowed
    assert truncated.sum() > 10
    assert torch.all(trainer * mask >= untruncated * mask - 1e-6)  # renormalised over fewer tokens: never lower


def test_the_start_up_canary_samples_and_scores_with_the_recipes_top_p_and_top_k(setup, tmp_path):
    """start_up_check hands the recipe's top-k / top-p to both sides: the engine samples with them and the trainer
    scores the same truncated distribution (a trainer that ignored them would differ by far more than fp32 noise)."""
    from types import SimpleNamespace

    from tina.config import load_config
    from tina.errors import TinaError
    from tina.rollout.adapters import AdapterHandover
    from tina.rollout.agreement import canary
    from tina.rollout.engines import start_up_check

    model, tok, prompts = setup
    cfg = load_config(
        {
            "model": {"name_or_path": "builtin:tiny-arith", "dtype": "float32"},
            "rollout": {"temperature": 1.3, "top_k": 5, "top_p": 0.9, "max_new_tokens": 16, "canary_tolerance": 1e-4},
            "train": {"device": "cpu", "probe_prompt": ""},
        }
    )
    engine = HFEngine(model, tok)
    seen = []
    real = engine.generate

    def generate(prompts, sampling, keys=None):
        seen.append((sampling.top_k, sampling.top_p))
        return real(prompts, sampling, keys)

    engine.generate = generate
    run = SimpleNamespace(
        cfg=cfg,
        model=model,
        device="cpu",
        dist=SimpleNamespace(is_fsdp=False, is_main=True),
        problems=[SimpleNamespace(prompt_ids=p) for p in prompts],
    )
    results = start_up_check(engine, run, AdapterHandover(tmp_path / "engine"))
    assert seen and set(seen) == {(5, 0.9)}
    assert max(results["base"], results["A"], results["B"]) < 1e-5

    def untruncated(rollout):
        with torch.no_grad():
            return token_logprobs(
                model,
                rollout.prompt_ids,
                rollout.prompt_mask,
                rollout.completion_ids,
                rollout.completion_mask,
                temperature=1.3,
            )

    with pytest.raises(TinaError, match="engine check at start-up failed"):
        canary(
            engine,
            model,
            AdapterHandover(tmp_path / "other"),
            prompts[:2],
            tolerance=1e-4,
            temperature=1.3,
            top_k=5,
            top_p=0.9,
            logprob_fn=untruncated,
        )
