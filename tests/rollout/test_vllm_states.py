"""The vllm engine's states (awake / asleep) as a tested contract, against a strict fake of vLLM (fake_vllm.py) that
raises on any device-memory call while the engine sleeps -- the CPU build has no sleep mode, so the real engine
cannot show it.  Also: when the engine sleeps at all (sleep_plan), and that the fake's signatures are vLLM's."""

from __future__ import annotations

import inspect

import fake_vllm
import pytest
import torch
from safetensors.torch import save_file

from tina.rollout import AdapterVersion, Sampling, vllm_plan
from tina.rollout.adapters import folder_digest
from tina.rollout.vllm import VLLMEngine

G = 2**30


class Tokenizer:
    pad_token_id, eos_token_id = 0, 2

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(map(str, row)) for row in rows]


@pytest.fixture
def fake(monkeypatch):
    installed = fake_vllm.install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a "GPU": sleep mode is honoured
    return installed


def adapter(tmp_path, version: int) -> AdapterVersion:
    folder = tmp_path / f"v{version}"
    folder.mkdir()
    save_file(
        {"base_model.model.layers.0.q_proj.lora_A.weight": torch.full((2, 4), float(version))},
        str(folder / "adapter_model.safetensors"),
    )
    return AdapterVersion(version, folder_digest(folder), str(folder))


def engine(tmp_path, **kw) -> VLLMEngine:
    return VLLMEngine(str(tmp_path / "model"), Tokenizer(), max_model_len=64, **kw)


PROMPTS = [[5, 6, 7], [8, 9]]
SAMPLING = Sampling(n=2, max_new_tokens=4, seed=1)


def test_a_training_sequence_with_sleep_touches_the_device_only_awake(fake, tmp_path):
    """load_adapter -> generate -> load_adapter -> generate_each, with sleep on.  The old engine called add_lora
    before waking: the second load_adapter raised IllegalWhileAsleep here (on a GPU: an illegal memory access, or
    the previous adapter's weights restored on wake)."""
    eng = engine(tmp_path, sleep=True)
    llm = fake.engines[-1]
    assert llm.kwargs["enable_sleep_mode"] is True and llm.kwargs["gpu_memory_utilization"] == 0.3
    eng.load_adapter(adapter(tmp_path, 1))
    first = eng.generate(PROMPTS, SAMPLING)
    eng.load_adapter(adapter(tmp_path, 2))
    groups = dict(eng.generate_each(PROMPTS, SAMPLING))
    assert first.adapter.version == 1 and groups[0].adapter.version == groups[1].adapter.version == 2
    assert llm.served == ["tina-v1-" + adapter_digest(tmp_path, 1)] * 4 + ["tina-v2-" + adapter_digest(tmp_path, 2)] * 4
    assert eng.state == "asleep" and llm.sleeping  # asleep between calls
    # every device call sits between a wake_up and the next sleep
    awake = False
    for name in llm.names():
        if name in ("wake_up", "sleep"):
            awake = name == "wake_up"
        elif name in fake_vllm.DEVICE_CALLS:
            assert awake, (name, llm.names())
    assert llm.names()[:5] == ["sleep", "wake_up", "add_lora", "reset_prefix_cache", "sleep"]


def adapter_digest(tmp_path, version: int) -> str:
    return folder_digest(tmp_path / f"v{version}")[:12]


def test_the_engine_sleeps_from_the_start_and_a_step_in_one_awake_block_wakes_once(fake, tmp_path):
    eng = engine(tmp_path, sleep=True)
    llm = fake.engines[-1]
    assert eng.state == "asleep" and llm.names() == ["sleep"]  # the trainer has the memory until the first rollout
    with eng.awake():
        assert eng.state == "awake"
        eng.load_adapter(adapter(tmp_path, 1))
        eng.generate(PROMPTS, SAMPLING)
        with eng.awake():  # nested: no second wake-up
            eng.score([[5, 6, 7]], [[1, 2]])
    assert eng.state == "asleep"
    assert llm.names().count("wake_up") == 1 and llm.names().count("sleep") == 2
    assert eng.info()["wake-ups"] == 1 and eng.info()["sleep mode"].startswith("on")


def test_an_error_inside_awake_puts_the_engine_back_to_sleep(fake, tmp_path):
    eng = engine(tmp_path, sleep=True)
    with pytest.raises(KeyError), eng.awake():
        raise KeyError("boom")
    assert eng.state == "asleep" and fake.engines[-1].sleeping


def test_stopping_generate_each_early_aborts_awake_then_sleeps(fake, tmp_path):
    eng = engine(tmp_path, sleep=True)
    llm = fake.engines[-1]
    stream = eng.generate_each(PROMPTS, SAMPLING)
    next(stream)  # the first group is out; the second prompt's requests are still queued
    assert eng.state == "awake"
    stream.close()
    assert eng.state == "asleep" and llm.names()[-2:] == ["abort_request", "sleep"]
    assert not llm.llm_engine.has_unfinished_requests()


def test_an_engine_that_does_not_sleep_never_calls_sleep_mode(fake, tmp_path):
    eng = engine(tmp_path, sleep=False, sleep_reason="engine 0.3 x 80 GiB + trainer fits")
    llm = fake.engines[-1]
    eng.load_adapter(adapter(tmp_path, 1))
    eng.generate(PROMPTS, SAMPLING)
    assert eng.state == "awake" and "sleep" not in llm.names() and "wake_up" not in llm.names()
    assert llm.kwargs["enable_sleep_mode"] is False
    assert eng.info() == {
        "engine": eng.version,
        "device": "cuda:0 (vLLM's default executor, one process)",
        "sleep mode": "off (engine 0.3 x 80 GiB + trainer fits)",
    }


def test_sleep_is_not_asked_of_vllm_without_a_gpu(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    eng = engine(tmp_path, sleep=True)
    llm = fake.engines[-1]
    eng.generate(PROMPTS, SAMPLING)
    assert "enable_sleep_mode" not in llm.kwargs and "sleep" not in llm.names() and eng.state == "awake"


# ---------------------------------------------------------------------------------------------- when to sleep
def plan(**kw) -> vllm_plan.SleepPlan:
    args = {
        "allowed": True,
        "sleep_mode": True,
        "shares_device": True,
        "engine_share": 0.4,
        "trainer_peak": 24 * G,
        "trainer_resident": 5 * G,
        "total": 80 * G,
    }
    return vllm_plan.sleep_plan(**{**args, **kw})


def test_sleep_only_when_engine_and_trainer_do_not_fit_together():
    # 0.4 x 80 = 32 GiB + 24 GiB = 56 GiB <= 0.9 x 80 = 72 GiB: awake
    fits = plan()
    assert not fits.sleeps and fits.fits and "56.0 GiB fits in 90% of 80.0 GiB" in fits.reason
    # 0.4 x 48 = 19.2 + 24 = 43.2 GiB > 0.9 x 46 = 41.4 GiB: sleep; asleep 19.2 + 5 and 24 both fit
    tight = plan(total=46 * G)
    assert tight.sleeps and tight.fits and "exceeds 90% of 46.0 GiB" in tight.reason
    # the trainer alone (50 GiB) is above 0.9 x 46: sleeping, and warned
    big = plan(total=46 * G, trainer_peak=50 * G)
    assert big.sleeps and not big.fits and "train.max_tokens_per_pass" in big.reason
    # asleep the trainer fits, but engine 0.9 x 46 = 41.4 + 5 GiB resident does not
    share = plan(total=46 * G, engine_share=0.9)
    assert share.sleeps and not share.fits and "lower rollout.gpu_memory_utilization" in share.reason


def test_no_sleep_off_a_shared_gpu_or_when_switched_off_and_sleep_when_nothing_is_known():
    assert not plan(sleep_mode=False).sleeps
    assert not plan(shares_device=False).sleeps and "device of its own" in plan(shares_device=False).reason
    off = plan(allowed=False, total=46 * G)
    assert not off.sleeps and not off.fits and "rollout.vllm_sleep=false, but" in off.reason
    assert plan(allowed=False).reason == "rollout.vllm_sleep=false"
    unknown = plan(trainer_peak=None, trainer_resident=None)
    assert unknown.sleeps and "no memory estimate" in unknown.reason
    assert plan(total=None).sleeps


# ---------------------------------------------------------------------------------------------- the fake is vLLM
@pytest.mark.vllm
def test_the_fake_matches_the_real_vllm_api():
    """Every fake method tina calls has the real signature (names, order, defaults) of vLLM installed here."""
    vllm = pytest.importorskip("vllm")
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.llm_engine import LLMEngine

    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    for name in ("sleep", "wake_up", "reset_prefix_cache", "generate"):
        assert params(getattr(fake_vllm.LLM, name)) == params(getattr(vllm.LLM, name)), name
    for name in (
        "add_lora",
        "remove_lora",
        "add_request",
        "step",
        "abort_request",
        "has_unfinished_requests",
        "is_sleeping",
    ):
        assert params(getattr(fake_vllm.LLMEngine, name)) == params(getattr(LLMEngine, name)), name
    assert fake_vllm.ENGINE_ARGS <= {f.name for f in dataclasses.fields(EngineArgs)}
    assert fake_vllm.SAMPLING_FIELDS <= set(SamplingParams.__struct_fields__)
    assert [f.name for f in dataclasses.fields(fake_vllm.LoRARequest)] == list(LoRARequest.__struct_fields__[:3])
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    for fake_cls, real_cls in (
        (fake_vllm.CompletionOutput, CompletionOutput),
        (fake_vllm.RequestOutput, RequestOutput),
        (fake_vllm.Logprob, Logprob),
    ):  # what the fake returns, the real one has
        assert {f.name for f in dataclasses.fields(fake_cls)} <= set(inspect.signature(real_cls).parameters)
    assert RequestOutputKind.FINAL_ONLY.name == fake_vllm.RequestOutputKind.FINAL_ONLY.name
