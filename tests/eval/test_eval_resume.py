"""A long evaluation survives a kill: SIGKILL mid-benchmark, `--resume`, and the results equal an uninterrupted
run's (same samples, same CIs) with no problem generated twice.  Also: data-parallel shards give the numbers of one
process, and --dry-run predicts the work from a measured throughput without generating it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tina.cli import main

HERE = Path(__file__).parent
REPO = HERE.parent.parent
MATH = [{"id": f"m{i}", "problem": f"What is ${i} + {i + 1}$?", "answer": str(2 * i + 1)} for i in range(12)]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "aime24.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATH))
    return d


def args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--model",
        "builtin:tiny-arith",
        "--benchmarks",
        "arith,aime24",
        "--data-dir",
        str(data_dir),
        "--limit",
        "12",
        "--samples",
        "2",
        "--seeds",
        "0,1",
        "--max-new-tokens",
        "24",
        "--batch-size",
        "4",
        "--temperature",
        "1.0",
        "--dtype",
        "float32",
        "--no-progress",
        "--output-dir",
        str(out),
        *extra,
    ]


def samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def comparable(records: list[dict]) -> list[tuple]:
    keys = ("model", "benchmark", "phase", "seed", "problem_id", "sample", "completion", "correct", "reason", "tokens")
    return sorted(tuple(r[k] for k in keys) for r in records)


def stats(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())["results"]
    return {
        (m, b): (e["mean"], e["ci95"], e["pass_at_k"], e["n_completions"])
        for m, per in res.items()
        for b, e in per.items()
    }


@pytest.mark.slow
def test_sigkill_mid_benchmark_then_resume_equals_an_uninterrupted_run(tmp_path, data_dir):
    whole = tmp_path / "whole"
    assert main(args(whole, data_dir)) == 0

    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, str(HERE / "kill_after.py"), "3", *args(cut, data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed by SIGKILL, mid-way
    written = samples(cut)
    assert 0 < len(written) < len(samples(whole)) and not (cut / "results.json").exists()

    assert main(args(cut, data_dir, "--resume")) == 0
    assert comparable(samples(cut)) == comparable(samples(whole))  # the very same completions and verdicts
    assert stats(cut) == stats(whole)  # so the same means, pass@k and bootstrap CIs
    units = Counter((r["model"], r["benchmark"], r["seed"], r["problem_id"], r["sample"]) for r in samples(cut))
    assert set(units.values()) == {1}  # no completion twice in the log
    done = json.loads((cut / "results.json").read_text())["units"]
    total = 2 * 2 * 12  # benchmarks x seeds x problems
    assert done["restored"] == len(
        {k[:4] for k in Counter((r["model"], r["benchmark"], r["seed"], r["problem_id"]) for r in written)}
    )
    assert done["restored"] + done["generated"] == total and done["restored"] > 0  # nothing generated twice


def test_resume_with_other_options_is_refused_and_nothing_is_lost(tmp_path, data_dir, capsys):
    out = tmp_path / "eval"
    assert main(args(out, data_dir, "--benchmarks", "arith", "--limit", "4")) == 0
    before = (out / "samples.jsonl").read_text()
    rc = main(args(out, data_dir, "--benchmarks", "arith", "--limit", "4", "--temperature", "0.5", "--resume"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "--resume with different options" in err and "temperature" in err
    assert (out / "samples.jsonl").read_text() == before


@pytest.mark.slow
def test_data_parallel_shards_give_the_numbers_of_one_process(tmp_path, data_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(args(one, data_dir)) == 0
    assert main(args(two, data_dir, "--data-parallel", "2")) == 0
    assert comparable(samples(two)) == comparable(samples(one))
    assert stats(two) == stats(one)
    shard = json.loads((two / "shards" / "shard-1" / "results.json").read_text())
    assert shard["results"]["base"]["arith"]["n_problems"] == 6  # problems 1, 3, 5, ... of 12
    assert json.loads((two / "results.json").read_text())["results"]["base"]["arith"]["protocol"]["data_parallel"] == 2


def test_dry_run_predicts_tokens_and_time_without_generating(tmp_path, data_dir, capsys):
    out = tmp_path / "eval"
    assert main(args(out, data_dir, "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "throughput" in text and "measured now" in text and "| arith |" in text and "| aime24 |" in text
    assert "total:" in text and not (out / "samples.jsonl").exists()
    assert main(args(out, data_dir)) == 0  # after a real run its own measurements are used
    capsys.readouterr()
    assert main(args(out, data_dir, "--dry-run")) == 0
    assert "measured by the earlier evaluation" in capsys.readouterr().out
