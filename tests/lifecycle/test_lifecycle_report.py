"""`tina report`: markdown + plots for a run, the phase-transition detector, and reading `tina eval` results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from lifecycle_util import OVERRIDES

from tina import cli
from tina.config import load_config
from tina.report import read_eval
from tina.train import train
from tina.transitions import detect_phase_transition, moving_average

PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ change-point detector
@pytest.mark.parametrize("seed", range(5))
def test_detector_finds_a_kink(seed):
    rng = np.random.default_rng(seed)
    x = np.arange(1, 301)
    # format-reward-like: rises, peaks at step 120, then destabilises downwards
    y = np.where(x < 120, 0.3 + 0.005 * x, 0.9 - 0.002 * (x - 120)) + rng.normal(0, 0.05, x.size)
    t = detect_phase_transition(x, y)
    assert t.label == "clear" and abs(t.step - 120) <= 6, t
    assert t.slope_before > 0 > t.slope_after
    assert t.strength > 0.8


def test_detector_finds_a_jump_and_a_length_minimum():
    rng = np.random.default_rng(0)
    x = np.arange(1, 201)
    jump = np.where(x < 80, 0.1, 0.9) + rng.normal(0, 0.1, x.size)
    t = detect_phase_transition(x, jump)
    assert t.label == "clear" and abs(t.step - 80) <= 3
    length = np.where(x < 60, 3000 - 20 * x, 1800 + 8 * (x - 60)) + rng.normal(0, 150, x.size)
    t = detect_phase_transition(x, length)
    assert t.label == "clear" and abs(t.step - 60) <= 6 and t.slope_before < 0 < t.slope_after


@pytest.mark.parametrize("seed", range(10))
def test_detector_says_none_for_flat_noise_and_straight_trends(seed):
    rng = np.random.default_rng(100 + seed)
    for n in (30, 150, 400):
        x = np.arange(1, n + 1)
        assert detect_phase_transition(x, 0.5 + rng.normal(0, 0.1, n)).label != "clear"
        assert detect_phase_transition(x, 0.2 + 0.003 * x + rng.normal(0, 0.1, n)).label != "clear"


def test_detector_edge_cases():
    assert detect_phase_transition(range(1, 101), [0.7] * 100).label == "none"  # constant
    assert detect_phase_transition(range(1, 6), [0, 1, 0, 1, 0]).label == "none"  # too short
    t = detect_phase_transition(range(1, 41), [None] * 5 + [math.nan] + list(np.linspace(0, 1, 34)))
    assert t.label == "none"  # missing values skipped; a straight line is no transition
    assert moving_average(np.array([1.0, 2.0, 3.0]), 1).tolist() == [1.0, 2.0, 3.0]


def test_detector_flat_noise_is_mostly_none():
    rng = np.random.default_rng(7)
    labels = [detect_phase_transition(np.arange(1, 201), 0.5 + rng.normal(0, 0.1, 200)).label for _ in range(40)]
    assert labels.count("clear") <= 2 and labels.count("none") >= 30, labels


# ----------------------------------------------------------------------------------------------------- reports
def eval_results(steps: list[int], acc, *, selection: bool = True) -> dict:
    """A results.json in the shape `tina eval --run` writes (models / results / averages / selection)."""
    models = [{"label": "base", "adapter": None, "step": None}] + [
        {"label": f"checkpoint-{s}", "adapter": f"RUN/checkpoint-{s}", "step": s} for s in steps
    ]
    results = {
        m["label"]: {
            b: {
                "mean": acc(m["step"] or 0) + off,
                "ci95": [acc(m["step"] or 0) + off - 0.05, acc(m["step"] or 0) + off + 0.05],
            }
            for b, off in (("aime24", 0.0), ("math_500", 0.4))
        }
        for m in models
    }
    out = {
        "models": models,
        "benchmarks": ["aime24", "math_500"],
        "results": results,
        "averages": {k: float(np.mean([v["mean"] for v in r.values()])) for k, r in results.items()},
        "selection": None,
    }
    if selection:
        best = max(steps, key=acc)
        out["selection"] = {
            "name": "holdout",
            "chosen": f"checkpoint-{best}",
            "chosen_step": best,
            "scores": [
                {
                    "model": m["label"],
                    "step": m["step"],
                    "mean": acc(m["step"] or 0),
                    "ci95": [acc(m["step"] or 0) - 0.1, acc(m["step"] or 0) + 0.1],
                }
                for m in models
            ],
        }
    return out


def test_report_on_a_tiny_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = load_config("demo", [*OVERRIDES, "train.max_steps=6", "cost.usd_per_device_hour=1.5"])
    train(cfg, run_dir, progress=False)
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").write_text(json.dumps(eval_results([2, 4, 6], lambda s: 0.2 + 0.01 * s)))
    assert cli.main(["report", str(run_dir)]) == 0
    assert "wrote" in capsys.readouterr().out
    report = (run_dir / "report.md").read_text()
    plots = sorted((run_dir / "plots").glob("*.png"))
    names = {p.name for p in plots}
    assert len(plots) >= 6, names
    assert {
        "reward.png",
        "format_reward.png",
        "completion_length.png",
        "clip_ratio.png",
        "entropy.png",
        "learning_rate.png",
        "cost.png",
        "accuracy.png",
    } <= names
    for p in plots:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000, p
        assert f"plots/{p.name}" in report
    for text in (
        "## Cost",
        "device-hours",
        "## Phase transition",
        "## Accuracy per checkpoint",
        "Best checkpoint: checkpoint-6",
        "## Probe completions",
        "### Step 6",
        "holdout (validation)",
    ):
        assert text in report, text
    led = json.loads((run_dir / "ledger.json").read_text())
    assert f"${led['usd']:.4f}" in report


def synthetic_run(run_dir, n=240, brk=100, seed=0):
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("train: {max_steps: 480, stop_step: 240}\nrewards: {accuracy: 2.0}\n")
    recs = []
    for s in range(1, n + 1):
        fmt = 0.3 + 0.006 * s if s < brk else 0.9 - 0.002 * (s - brk)
        length = 3000 - 12 * s if s < brk else 3000 - 12 * brk + 6 * (s - brk)
        recs.append(
            {
                "step": s,
                "reward": 1.0,
                "reward/accuracy": 0.3 + 0.0005 * s + rng.normal(0, 0.05),
                "reward/format": fmt + rng.normal(0, 0.04),
                "completion_length": length + rng.normal(0, 80),
                "kl": 0.001 * s,
                "clip_ratio": 0.01,
                "entropy": 0.6 - 0.001 * s,
                "learning_rate": 1e-6,
                "usd": 0.1 * s,
                "device_hours": 0.1 * s,
            }
        )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run_dir


def test_report_marks_the_transition_and_the_best_checkpoint(tmp_path):
    from tina.report import write_report

    run_dir = synthetic_run(tmp_path / "run")
    (run_dir / "eval").mkdir()
    acc = lambda s: 0.3 + 0.001 * min(s, 80) - 0.0005 * max(0, s - 80)  # noqa: E731 - peak at step 80
    (run_dir / "eval" / "results.json").write_text(json.dumps(eval_results([40, 80, 120, 160, 200, 240], acc)))
    report, plots = write_report(run_dir)
    text = report.read_text()
    assert "**Phase transition at step" in text
    step = int(float(text.split("**Phase transition at step ")[1].split("**")[0]))
    assert abs(step - 100) <= 6
    assert "Best checkpoint: checkpoint-80" in text and "steps before the phase transition" in text
    assert "$8.0000" in text  # training dollars to reach checkpoint-80
    assert {p.name for p in plots} >= {"kl.png", "accuracy.png", "format_reward.png"}
    assert "No ledger.json" in text  # reported, not a crash


def test_report_without_eval_and_flat_series_says_no_transition(tmp_path):
    from tina.report import write_report

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rng = np.random.default_rng(1)
    (run_dir / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "step": s,
                    "reward": 0.5,
                    "reward/format": 0.5 + rng.normal(0, 0.05),
                    "completion_length": 100 + rng.normal(0, 5),
                    "learning_rate": 1e-6,
                }
            )
            + "\n"
            for s in range(1, 121)
        )
    )
    text = write_report(run_dir)[0].read_text()
    assert "**No clear transition**" in text and "No evaluation results yet" in text


def test_report_errors_and_odd_eval_files(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    data, note = read_eval(bad)
    assert data is None and "could not read" in note
    bad.write_text(json.dumps({"results": {"checkpoint-5": {"b": {"mean": "x"}}}}))
    assert read_eval(bad)[0] is None
    bad.write_text(
        json.dumps([{"checkpoint": "checkpoint-10", "mean": 0.4, "ci95": [0.3, 0.5]}, {"step": 20, "accuracy": 0.5}])
    )
    data, _ = read_eval(bad)
    assert [r[:2] for r in data["curves"]["accuracy"]] == [(10, 0.4), (20, 0.5)]
