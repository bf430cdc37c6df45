"""Bad input to `tina eval` is one line on stderr and exit 2 -- and, with --resume, nothing already written is lost.

Every case runs against the output folder of a finished evaluation (base + one good adapter on builtin:tiny-arith) with
``--resume``, and afterwards every file in that folder (samples.jsonl, results.json, results.md, eval_state.json) is
byte-for-byte what it was: an adapter of another model (other shapes, other modules, an unreachable base id), an unknown
benchmark, an unreadable data folder (missing, not a folder, unreadable, malformed JSONL, rows without an answer, not
UTF-8) and ``--backend vllm`` where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from eval_util import save_adapter

from tina.cli import main

MATH = [{"id": f"m{i}", "problem": f"What is ${i} + {i + 1}$?", "answer": str(2 * i + 1)} for i in range(4)]


def common(out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--model",
        "builtin:tiny-arith",
        "--limit",
        "4",
        "--samples",
        "1",
        "--max-new-tokens",
        "8",
        "--temperature",
        "1.0",
        "--dtype",
        "float32",
        "--no-progress",
        "--output-dir",
        str(out),
        *extra,
    ]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def other_shape_model(hidden_size: int = 64, layers: int = 4):
    """A random Qwen2 model like tiny-arith but with another hidden size / depth (its adapter cannot fit)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tina.tiny import ARCH

    torch.manual_seed(0)
    config = Qwen2Config(
        **{**ARCH, "hidden_size": hidden_size, "intermediate_size": 3 * hidden_size, "num_hidden_layers": layers},
        vocab_size=322,
    )
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, request):
    """A finished evaluation of base + a good adapter on arith and aime24 (from --data-dir), and bad adapters."""
    from tina.models import load_model_and_tokenizer

    root = tmp_path_factory.mktemp("bad_input")
    base, _ = load_model_and_tokenizer("builtin:tiny-arith", dtype="float32", device="cpu")
    good = root / "good" / "checkpoint-1"
    save_adapter(base, good, scale=0.003, seed=1)
    bad = {}
    bad["narrow"] = root / "narrow" / "checkpoint-1"  # hidden size 64, not 128: every LoRA tensor has other shapes
    save_adapter(other_shape_model(hidden_size=64), bad["narrow"], scale=0.1, seed=1)
    bad["deeper"] = root / "deeper" / "checkpoint-1"  # 6 layers, not 4: it adapts layers tiny-arith does not have
    save_adapter(other_shape_model(hidden_size=128, layers=6), bad["deeper"], scale=0.1, seed=1)
    data = root / "data"
    data.mkdir()
    (data / "aime24.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATH))
    out = root / "eval"
    assert (
        main(
            common(
                out, "--adapter", str(good), "--include-base", "--benchmarks", "arith,aime24", "--data-dir", str(data)
            )
        )
        == 0
    )
    assert {"samples.jsonl", "results.json", "results.md", "eval_state.json"} <= set(snapshot(out))
    return {"root": root, "good": good, "bad": bad, "data": data, "out": out, "before": snapshot(out)}


def resume(f, *extra: str) -> list[str]:
    """The finished evaluation's command with --resume, changed by ``extra`` (later flags win)."""
    return common(
        f["out"],
        "--adapter",
        str(f["good"]),
        "--include-base",
        "--benchmarks",
        "arith,aime24",
        "--data-dir",
        str(f["data"]),
        "--resume",
        *extra,
    )


def refused(capsys, argv: list[str], f, *expected: str) -> str:
    """``tina eval argv`` exits 2 with exactly one line on stderr holding ``expected``; the folder is untouched."""
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    assert err.startswith("tina eval: error: "), err
    for text in expected:
        assert text in err, err
    assert snapshot(f["out"]) == f["before"]  # nothing already written is lost or changed
    return err


def test_an_adapter_of_another_shape(finished, capsys):
    f = finished
    err = refused(
        capsys, resume(f, "--adapter", str(f["bad"]["narrow"])), f, "does not fit", "narrow", "pass the right --model"
    )
    here, there = map(int, re.search(r"has (?:in|out) size (\d+) here but (\d+) in the adapter", err).groups())
    assert (here, there) in {(128, 64), (384, 192)}  # hidden or intermediate size of tiny-arith vs the narrow model


def test_an_adapter_of_a_deeper_model(finished, capsys):
    f = finished
    refused(
        capsys,
        resume(f, "--adapter", str(f["bad"]["deeper"])),
        f,
        "does not fit",
        "adapts 'model.layers.4.",
        "which this model does not have",
    )


def test_an_adapter_whose_base_cannot_be_found(finished, capsys, tmp_path):
    """Without --model the base comes from the adapter: a base id that is neither a folder nor reachable offline."""
    import shutil

    f = finished
    stray = tmp_path / "stray" / "checkpoint-9"
    shutil.copytree(f["good"], stray)
    config = json.loads((stray / "adapter_config.json").read_text())
    (stray / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/nowhere/base"}))
    out = tmp_path / "eval"
    assert main(["eval", "--adapter", str(stray), "--benchmarks", "arith", "--limit", "2", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model folder not found: /nowhere/base" in err
    assert not (out / "samples.jsonl").exists()
    # resuming the finished evaluation with it (the base again from the adapters): their bases disagree
    argv = resume(f, "--adapter", str(stray))
    at = argv.index("--model")
    refused(
        capsys,
        argv[:at] + argv[at + 2 :],
        f,
        "the adapters have different base models",
        "/nowhere/base",
        "pass --model",
    )


def test_a_damaged_adapter_file(finished, capsys, tmp_path):
    import shutil

    f = finished
    broken = tmp_path / "checkpoint-7"
    shutil.copytree(f["good"], broken)
    blob = (broken / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(blob[:100])
    refused(capsys, resume(f, "--adapter", str(broken)), f, "cannot load adapter", "checkpoint-7")


def test_an_unknown_benchmark(finished, capsys):
    refused(
        capsys,
        resume(finished, "--benchmarks", "arith,aime2024"),
        finished,
        "unknown benchmark 'aime2024'",
        "did you mean 'aime24'",
    )


@pytest.mark.parametrize("case", ["missing", "a_file", "malformed", "no_answer", "not_utf8", "unreadable"])
def test_an_unreadable_data_dir(finished, capsys, tmp_path, case):
    f = finished
    data = tmp_path / "data"
    expected = {
        "missing": (f"no {data / 'aime24.jsonl'} for benchmark 'aime24'",),
        "a_file": ("for benchmark 'aime24'",),
        "malformed": (f"{data / 'aime24.jsonl'}:2: not valid JSON",),
        "no_answer": ("row 2: missing answer",),
        "not_utf8": ("cannot read", "aime24.jsonl"),
        "unreadable": ("cannot read", "aime24.jsonl", "Permission denied"),
    }[case]
    if case == "a_file":
        data.write_text("not a folder")
    elif case != "missing":
        data.mkdir()
        good = json.dumps(MATH[0]) + "\n"
        body = {
            "malformed": good + '{"id": "m1", "problem": "x", \n',
            "no_answer": good + json.dumps({"id": "m1", "problem": "x"}) + "\n",
            "unreadable": good,
        }.get(case)
        path = data / "aime24.jsonl"
        if case == "not_utf8":
            path.write_bytes(good.encode() + b'{"id": "m1", "problem": "\xff\xfe", "answer": "1"}\n')
        else:
            path.write_text(body)
        if case == "unreadable":
            path.chmod(0)
            if os.access(path, os.R_OK):  # root reads anything
                pytest.skip("running as root: a file without read permission is still readable")
    refused(capsys, resume(f, "--data-dir", str(data)), f, *expected)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_backend_vllm_without_vllm(finished, capsys, tmp_path):
    err = refused(capsys, resume(finished, "--backend", "vllm"), finished, "--backend vllm needs vLLM", "pip install")
    assert "--backend hf" in err
    fresh = tmp_path / "fresh"  # the same line for a new evaluation, and nothing is created
    assert main(common(fresh, "--benchmarks", "arith", "--backend", "vllm")) == 2
    assert "pip install" in capsys.readouterr().err and not fresh.exists()


def test_an_adapter_trained_on_another_base_of_the_same_shape(tmp_path, capsys):
    """tiny-random and tiny-arith have the same shapes: only the checkpoint's recorded base (tina_base.json) tells
    them apart, and evaluating on the wrong one is refused before anything is written."""
    from tina.config import load_config
    from tina.train import train

    run = tmp_path / "run"
    train(
        load_config(
            "demo", ["train.max_steps=1", "train.save_steps=1", "train.batch_size=16", "train.probe_prompt=''"]
        ),
        run,
        progress=False,
    )
    recorded = json.loads((run / "checkpoint-1" / "tina_base.json").read_text())
    assert recorded["model"] == "builtin:tiny-arith" and len(recorded["base_weights_sha256"]) == 64
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--adapter",
        str(run / "checkpoint-1"),
        "--benchmarks",
        "arith",
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
    capsys.readouterr()
    assert main([*argv, "--model", "builtin:tiny-random"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "was trained on builtin:tiny-arith" in err and "other weights" in err
    assert not (out / "samples.jsonl").exists()
    assert main([*argv, "--model", "builtin:tiny-arith"]) == 0  # the right base
