"""`tina eval` and `tina grade` through the CLI entry point, in-process."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tina.cli import main

PROTOCOL_KEYS = {
    "model",
    "model_path",
    "base_weights_sha256",
    "dtype",
    "device",
    "chat_template",
    "chat_template_sha256",
    "sampling",
    "grader",
    "statistics",
    "versions",
    "adapter",
    "adapter_sha256",
    "benchmark",
    "prompt_template",
    "example_prompt",
}


@pytest.mark.slow
def test_eval_tiny_model_on_two_benchmarks(shared_data, tmp_path):
    out = tmp_path / "eval"
    rc = main(
        [
            "eval",
            "--model",
            "builtin:tiny-random",
            "--data-dir",
            str(shared_data / "benchmarks"),
            "--benchmarks",
            "aime24,math500",
            "--samples",
            "2",
            "--limit",
            "10",
            "--max-new-tokens",
            "64",
            "--output-dir",
            str(out),
            "--no-progress",
            "--dtype",
            "float32",
        ]
    )
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["benchmarks"] == ["aime24", "math500"]
    assert [m["label"] for m in results["models"]] == ["base"]
    manifest = json.loads((shared_data / "MANIFEST.json").read_text())
    for name in ("aime24", "math500"):
        entry = results["results"]["base"][name]
        keys = {"mean", "ci95", "pass_at_k", "n_problems", "n_samples", "seeds", "n_ungradable", "protocol"}
        assert keys <= set(entry)
        assert entry["n_problems"] == 10 and entry["n_samples"] == 2 and entry["seeds"] == [0]
        assert set(entry["pass_at_k"]) == {"1", "2"}
        low, high = entry["ci95"]
        assert 0.0 <= low <= entry["mean"] <= high <= 1.0
        p = entry["protocol"]
        assert PROTOCOL_KEYS <= set(p)
        assert p["model"] == "builtin:tiny-random" and len(p["base_weights_sha256"]) == 64
        assert p["adapter"] is None and p["adapter_sha256"] is None
        assert p["sampling"]["temperature"] == 0.6 and p["sampling"]["top_p"] == 0.95
        assert p["sampling"]["max_new_tokens"] == 64 and p["sampling"]["samples"] == 2
        assert p["prompt_template"].startswith("Solve the following math problem efficiently and clearly.")
        assert {"tina", "transformers", "torch", "math-verify", "peft"} <= set(p["versions"])
        assert p["benchmark"]["data_sha256"] == manifest[f"benchmarks/{name}.jsonl"]["sha256"]
        assert p["benchmark"]["limit"] == 10 and p["grader"]["name"] == "tina.grading"
        assert p["example_prompt"].startswith("<|im_start|>user\nSolve the following math problem")
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 10 * 2
    assert {
        "model",
        "benchmark",
        "problem_id",
        "seed",
        "sample",
        "completion",
        "extracted",
        "correct",
        "reason",
        "gold",
        "tokens",
        "truncated",
    } <= set(lines[0])
    assert Counter(x["benchmark"] for x in lines) == {"aime24": 20, "math500": 20}
    assert {(x["problem_id"], x["sample"]) for x in lines if x["benchmark"] == "aime24"} == {
        (str(i), j) for i in range(60, 70) for j in (0, 1)
    }
    md = (out / "results.md").read_text()
    assert "| base |" in md and "aime24" in md
    # the same command again refuses to overwrite, in one line
    assert main(["eval", "--model", "builtin:tiny-random", "--benchmarks", "arith", "--output-dir", str(out)]) == 2


def test_eval_user_errors_are_one_line(capsys, tmp_path):
    assert main(["eval", "--model", "builtin:tiny-random", "--benchmarks", "aime2024", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'aime24'" in err
    assert main(["eval", "--run", str(tmp_path / "nope"), "-o", str(tmp_path)]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--model",
                "builtin:tiny-random",
                "--benchmarks",
                "arith",
                "--select-on",
                "x.jsonl",
                "-o",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--select-on chooses among checkpoints" in capsys.readouterr().err


def test_each_backend_is_a_server_that_checks_its_own_options():
    """Evaluation asks the server of --backend, never branches on the name: its options, its random streams."""
    from tina.errors import TinaError
    from tina.eval.serving import SERVERS, server_class

    assert set(SERVERS) == {"hf", "vllm"}
    for name, cls in SERVERS.items():
        assert server_class(name) is cls and cls.backend == name and "row_seed" in cls.streams
    with pytest.raises(TinaError, match=r"unknown engine 'vlm' \(did you mean 'vllm'\?\); choose hf or vllm"):
        server_class("vlm")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_grade_right_wrong_ungradable(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    _write(
        src,
        [
            {"id": 1, "completion": r"so \boxed{25}", "gold": "025"},  # right (leading zero)
            {"id": 2, "completion": r"\boxed{27}", "gold": 27.0},  # right (number gold)
            {"id": 3, "completion": r"\boxed{26}", "gold": "27.0"},  # wrong
            {"id": 4, "completion": "no answer here", "gold": "3"},  # wrong: no answer
            {"id": 5, "completion": r"\boxed{x}", "gold": "E_{1},E_{2}"},  # ungradable gold
            {"id": 6, "completion": "Answer: C", "gold": "C", "task": "gpqa"},  # right, per-line task
        ],
    )
    out = tmp_path / "out.jsonl"
    assert main(["grade", str(src), "--out", str(out)]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary == "n=6 correct=3 incorrect=2 ungradable=1 accuracy=0.5000 (ungradable counts as incorrect)"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, True, False, False, None, True]
    assert [r["reason"] for r in rows] == ["ok", "ok", "ok", "no_answer", "gold_unparseable", "ok"]
    assert rows[0]["extracted"] == "25" and rows[0]["id"] == 1  # other keys kept
    # stdout mode: JSONL on stdout, the summary on stderr
    assert main(["grade", str(src), "--task", "math"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 6 and captured.err.startswith("n=6 ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"completion": "x", "gold": "1"}\n{not json\n', "in.jsonl:2: not valid JSON"),
        ('{"completion": "x"}\n', "needs a 'gold'"),
        ('{"gold": "1"}\n', "needs a string 'completion'"),
        ("[1, 2]\n", "expected a JSON object"),
        ('{"completion": "x", "gold": "1", "task": "code"}\n', "unknown task"),
        ("", "no lines to grade"),
    ],
)
def test_grade_bad_input_exits_2_with_one_line(tmp_path, capsys, content, message):
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    assert main(["grade", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("tina grade: error:") and message in err


def test_grade_missing_file(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "missing.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_samples_do_not_depend_on_batch_size_or_limit(tmp_path):
    def completions(name, *extra):
        out = tmp_path / name
        assert (
            main(
                [
                    "eval",
                    "--model",
                    "builtin:tiny-random",
                    "--benchmarks",
                    "arith",
                    "--samples",
                    "2",
                    "--max-new-tokens",
                    "8",
                    "--temperature",
                    "1.0",
                    "--no-progress",
                    "--dtype",
                    "float32",
                    "--output-dir",
                    str(out),
                    *extra,
                ]
            )
            == 0
        )
        return [
            (x["problem_id"], x["sample"], x["completion"])
            for x in map(json.loads, (out / "samples.jsonl").read_text().splitlines())
        ]

    big = completions("big", "--limit", "6", "--batch-size", "64")
    small = completions("small", "--limit", "6", "--batch-size", "2")
    fewer = completions("fewer", "--limit", "3", "--batch-size", "64")
    other_seed = completions("seed1", "--limit", "6", "--seeds", "1")
    assert big == small  # batch-invariant sampling: batching does not change a problem's samples
    assert fewer == big[:6]  # --limit keeps the samples of the problems it keeps
    assert other_seed != big
