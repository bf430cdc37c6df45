"""`tina demo`: the embedded default visibly instils a skill with LoRA-GRPO (the acceptance bar of the demo)."""

from __future__ import annotations

import json

import pytest

from tina import cli

pytestmark = pytest.mark.slow


def test_demo_gain_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--output-dir", str(out), "--seed", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "demo_summary.json").read_text())
    for key in (
        "base_accuracy",
        "tuned_accuracy",
        "gain",
        "gain_ci95",
        "n_eval",
        "seconds",
        "trainable_params",
        "total_params",
    ):
        assert key in summary, key
    assert summary["n_eval"] >= 200
    assert summary["gain"] >= 0.25, summary
    assert summary["gain_ci95"][0] > 0, summary
    assert summary["gain"] == pytest.approx(summary["tuned_accuracy"] - summary["base_accuracy"])
    assert summary["base_weights_unchanged"] is True
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert (out / "reward_curve.png").stat().st_size > 10_000
    assert (out / "run" / "metrics.jsonl").is_file()
    assert "gain (sampled)" in printed and str(out / "demo_summary.json") in printed


def test_demo_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "run").mkdir(parents=True)
    (out / "run" / "metrics.jsonl").write_text("")
    assert cli.main(["demo", "--output-dir", str(out), "--no-progress"]) == 2
    assert "already holds a demo run" in capsys.readouterr().err
