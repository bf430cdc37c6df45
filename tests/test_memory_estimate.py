"""The trainer's memory estimate (tina.estimates) that decides whether a vLLM engine sharing its GPU must sleep, and
`tina check`'s line saying which.  Numbers are worked out by hand from the Qwen2-1.5B shape (tina.synthetic)."""

from __future__ import annotations

import json

import pytest

from tina import cli
from tina.config import load_config
from tina.estimates import (
    GIB,
    ModelShape,
    estimate_trainer_memory,
    pass_tokens,
    trainer_memory,
)
from tina.synthetic import SHAPES

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def qwen15() -> ModelShape:
    return ModelShape.from_config(SHAPES["qwen2-1.5b"])


def test_qwen2_1_5b_parameters_and_lora_parameters(qwen15):
    # per layer: q 1536^2 + k, v 1536*256 + o 1536^2 + gate, up, down 1536*8960 + 2 norms = 46,795,776
    assert qwen15.params == 2 * 151936 * 1536 + 28 * 46_795_776 + 1536 == 1_777_030_656
    # rank 32: 32 x (in + out) per module: q 3072, k 1792, v 1792, o 3072, gate 10496, up 10496, down 10496
    assert qwen15.lora_params(32, ALL7) == 28 * 32 * (3072 + 1792 + 1792 + 3072 + 3 * 10496) == 36_929_536
    assert ModelShape.from_config({"hidden_size": 8}) is None  # not a decoder config this estimate knows


def test_tokens_per_pass_follow_the_micro_batch_processes_and_the_pass_limit():
    cfg = load_config("tina-open-rs3")  # 12 completions per micro-batch, rows of max_model_len 4608, G = 6
    assert pass_tokens(cfg) == (12 * 4608, 4608)
    assert pass_tokens(cfg, world_size=2) == (6 * 4608, 4608)
    group = 6 * 4608
    assert pass_tokens(load_config("tina-open-rs3", ["train.max_tokens_per_pass=10000"]))[0] == group  # one group
    assert pass_tokens(load_config("tina-open-rs3", ["train.max_tokens_per_pass=60000"]))[0] == 2 * group
    demo = load_config("demo", ["rollout.max_new_tokens=100"])  # no max_model_len: max_new_tokens + 512
    assert pass_tokens(demo)[1] == 612


def test_gradient_checkpointing_keeps_only_layer_inputs():
    s = ModelShape(layers=2, hidden=4, intermediate=8, vocab=10, heads=2, kv_heads=1, head_dim=2, tied=True)
    kw = {"weight_bytes": 2, "lora_params": 0, "tokens": 10, "seq": 5, "chunk_bytes": 0, "on_gpu": False}
    # per layer 4*4 + 3*4 + 4*2 + 4*8 = 68 elements; checkpointed: 2 inputs of 4 + 1 layer recomputed + 1 in backward
    assert trainer_memory(s, checkpointing=True, **kw).activations == 10 * ((2 * 4 + 68 + 68) * 2 + 16 + 16)
    assert trainer_memory(s, checkpointing=False, **kw).activations == 10 * ((2 * 68 + 68) * 2 + 16 + 16)
    eager = trainer_memory(s, checkpointing=False, eager_attention=True, **kw).activations
    assert eager == 10 * ((3 * (68 + 2 * 2 * 5)) * 2 + 32)  # + scores and probabilities: 2 heads x 5 positions, x2


def test_open_rs3_on_one_process(qwen15):
    # bf16, r 32 on all 7 modules, dropout 0.05, checkpointing, 12 x 4608 tokens in one pass
    cfg = load_config("tina-open-rs3", ["train.max_tokens_per_pass=null"])
    m = estimate_trainer_memory(cfg, qwen15, weight_bytes=2)
    assert m.weights == 1_777_030_656 * 2 and m.adapter == 36_929_536 * 16
    # per token and layer: 65,792 elements (47,616 + LoRA dropout copies 5 x 1536 + 1536 + 8960); checkpointed
    # 28 x 1536 + 2 x 65,792 = 174,592 elements x 2 bytes + the head's 12,288 bytes
    assert m.activations == 55296 * (174_592 * 2 + 12_288)
    assert m.logits == 3 * 256 * 2**20 and m.overhead == GIB
    assert m.peak == pytest.approx(24.2 * GIB, abs=0.05 * GIB)
    assert m.resident == pytest.approx(4.9 * GIB, abs=0.05 * GIB)
    fsdp = estimate_trainer_memory(cfg, qwen15, weight_bytes=2, world_size=2, fsdp=True)
    assert fsdp.weights == m.weights / 2 and fsdp.resident == m.resident  # gathered for the rollout
    # auto (the default) on the recipe's L40S (45 GiB): a quarter holds one group of 6 rows a pass, not two
    auto = estimate_trainer_memory(load_config("tina-open-rs3"), qwen15, weight_bytes=2)
    assert auto.activations == 6 * 4608 * (174_592 * 2 + 12_288)


@pytest.fixture
def local_qwen(tmp_path):
    folder = tmp_path / "qwen2-1.5b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SHAPES["qwen2-1.5b"]))
    return str(folder)


def check_line(capsys, *overrides: str) -> str | None:
    args = ["check", "tina-open-rs3"]
    for item in overrides:
        args += ["--set", item]
    assert cli.main(args) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("# vllm sleep mode")]
    return lines[0] if lines else None


def test_tina_check_says_whether_the_engine_sleeps_and_why(capsys, local_qwen, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the GPU is the recipe's cost.device_name
    model = f"model.name_or_path={local_qwen}"
    # 0.4 x 79.6 = 31.8 GiB + ~24.2 GiB = 56.1 GiB <= 0.9 x 79.6 (auto: a whole micro-batch fits a quarter of 79.6)
    h100 = check_line(capsys, model, "cost.device_name=H100")
    assert h100.startswith("# vllm sleep mode OFF: engine 0.4 x 79.6 GiB + trainer ~24.2 GiB") and "fits" in h100
    # the whole micro-batch in one pass: 0.4 x 45 = 18 GiB + ~24.2 GiB = 42.2 GiB > 0.9 x 45 = 40.5 GiB
    l40s = check_line(capsys, model, "train.max_tokens_per_pass=null")
    assert l40s.startswith("# vllm sleep mode ON: engine 0.4 x 45.0 GiB + trainer ~24.2 GiB (estimate) = 42.2 GiB")
    assert "NVIDIA L40S (cost.device_name)" in l40s
    # auto (the default): a quarter of 45 GiB holds one prompt group a pass, so the two fit awake (~14.9 GiB)
    auto = check_line(capsys, model)
    assert auto.startswith("# vllm sleep mode OFF: engine 0.4 x 45.0 GiB + trainer ~14.9 GiB (estimate) = 32.9 GiB")
    no_sleep = check_line(capsys, model, "rollout.vllm_sleep=false", "train.max_tokens_per_pass=null")
    assert "rollout.vllm_sleep=false, but" in no_sleep
    assert "no memory estimate" in check_line(capsys, "model.name_or_path=nobody/not-in-the-hub-cache")
    assert "not on a CUDA GPU" in check_line(capsys, "cost.device_name=cpu")
    assert check_line(capsys, "rollout.backend=hf") is None


# ------------------------------------------------------------------------------ train.max_tokens_per_pass: auto
def test_max_tokens_per_pass_auto_is_the_default_and_bad_values_are_one_line():
    from tina.config import TrainConfig
    from tina.errors import ConfigError

    assert TrainConfig().max_tokens_per_pass == "auto"
    assert load_config("demo", ["train.max_tokens_per_pass=null"]).train.max_tokens_per_pass is None
    assert load_config("demo", ["train.max_tokens_per_pass=2048"]).train.max_tokens_per_pass == 2048
    with pytest.raises(ConfigError, match=r"expected a positive integer, auto or null, got 'automatic'"):
        load_config("demo", ["train.max_tokens_per_pass=automatic"])
    with pytest.raises(ConfigError, match="train.max_tokens_per_pass"):
        load_config("demo", ["train.max_tokens_per_pass=0"])


def test_auto_pass_fits_the_budget_by_hand():
    """SmolLM2-135M in float32 without checkpointing saves (30 + 1) layers x 10,944 elements x 4 bytes per token
    (+ the head's 2 x 576 x 4 + 4 x 576): 1 GiB on a CPU holds 787 tokens; a quarter of an 80 GiB GPU in bf16 far more;
    gradient checkpointing keeps 30 x 576 + 10,944 elements a layer's worth."""
    from tina.estimates import CPU_PASS_BUDGET, auto_pass_tokens

    smol = ModelShape(
        layers=30, hidden=576, intermediate=1536, vocab=49152, heads=9, kv_heads=3, head_dim=64, tied=True
    )  # SmolLM2-135M
    cfg = load_config("demo-smollm2", ["train.gradient_checkpointing=false"])
    per_layer = 4 * 576 + 3 * 576 + 4 * 192 + 4 * 1536
    assert per_layer == 10_944
    per_token = 31 * per_layer * 4 + 2 * 576 * 4 + 4 * 576
    assert auto_pass_tokens(cfg, smol, weight_bytes=4, device_bytes=None) == CPU_PASS_BUDGET // per_token == 787
    gpu = auto_pass_tokens(cfg, smol, weight_bytes=2, device_bytes=80 * GIB)
    assert gpu == int(20 * GIB // (31 * per_layer * 2 + 2 * 576 * 2 + 4 * 576))
    ckpt = load_config("demo-smollm2", ["train.gradient_checkpointing=true"])
    per_token_ckpt = (30 * 576 + 2 * per_layer) * 4 + 2 * 576 * 4 + 4 * 576
    assert auto_pass_tokens(ckpt, smol, weight_bytes=4, device_bytes=None) == CPU_PASS_BUDGET // per_token_ckpt
    assert auto_pass_tokens(cfg, None, weight_bytes=4, device_bytes=None) is None  # unknown shape: whole micro-batch


def test_a_run_resolves_auto_once_from_its_model_and_keeps_auto_in_config_yaml(tmp_path, monkeypatch):
    """The run resolves `auto` from the loaded model (its config, dtype, device) and trains with that number; the
    run directory's config.yaml keeps `auto` (a resume on another device resolves again); the loss passes are cut."""
    import yaml

    import tina.estimates as est
    import tina.train as train_mod
    from tina.train import train

    monkeypatch.setattr(est, "CPU_PASS_BUDGET", 300 * 1024)  # the tiny model: ~300 KB holds a few rows of a group
    seen = []
    pieces = train_mod.MicroBatch.pieces

    def spy(self, group, max_tokens):
        out = pieces(self, group, max_tokens)
        seen.append((max_tokens, len(out)))
        return out

    monkeypatch.setattr(train_mod.MicroBatch, "pieces", spy)
    cfg = load_config("demo", ["train.max_steps=1", "train.save_steps=1", "train.probe_prompt=''"])
    result = train(cfg, tmp_path / "run", progress=False, keep_model=True)
    shape = ModelShape.from_config(result.model.config.to_dict())
    expected = est.auto_pass_tokens(cfg, shape, weight_bytes=4, device_bytes=None)
    assert seen and all(limit == expected and n > 1 for limit, n in seen)  # cut into several passes
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["max_tokens_per_pass"] == "auto"
