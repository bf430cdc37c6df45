"""tina doctor: the preflight runs the recipe's own engine, canary and training steps, and fails in one line."""

from __future__ import annotations

import importlib.util

import pytest

from tina import doctor
from tina.cli import main
from tina.config import load_config
from tina.doctor import Check, step_time_check

SMALL = [
    "--set",
    "train.batch_size=16",
    "--set",
    "rollout.num_generations=4",
    "--set",
    "rollout.max_new_tokens=8",
    "--set",
    "train.probe_prompt=''",
]


def rows(out: str) -> dict[str, list[str]]:
    table = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("| check"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            table[cells[0]] = cells[1:]
    return table


@pytest.mark.slow
def test_doctor_runs_the_recipe_and_measures_a_step(capsys, tmp_path):
    code = main(["doctor", "demo", *SMALL, "--steps", "2", "-o", str(tmp_path / "d")])
    out = capsys.readouterr().out
    table = rows(out)
    assert code == 0, out
    assert [k for k in table] == [
        "recipe",
        "versions",
        "devices",
        "engine",
        "run",
        "engine states",
        "step time",
        "memory",
    ]
    assert table["run"][0] == "ok" and "2 steps" in table["run"][1] and "canary on" in table["run"][1]
    assert "s/step (step 2)" in table["step time"][1]
    assert table["memory"][0] == "ok" and "headroom" in table["memory"][1]
    assert (tmp_path / "d" / "metrics.jsonl").read_text().count("\n") == 2  # two real steps were trained


@pytest.mark.slow
def test_doctor_fails_in_one_line_when_the_canary_fails(capsys, tmp_path):
    # a tolerance no two implementations meet: the engine check at start-up must fail, and doctor must say so
    code = main(["doctor", "demo", *SMALL, "--set", "rollout.canary_tolerance=1e-15", "-o", str(tmp_path / "d")])
    captured = capsys.readouterr()
    table = rows(captured.out)
    assert code == 2
    assert table["run"][0] == "FAIL" and "engine check at start-up failed" in table["run"][1]
    assert "step time" not in table  # nothing measured after a failed run
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tina doctor: error: run:")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_doctor_without_vllm_names_the_install_command(capsys):
    code = main(["doctor", "demo", "--set", "rollout.backend=vllm"])
    captured = capsys.readouterr()
    table = rows(captured.out)
    assert code == 2
    assert table["engine"][0] == "FAIL" and "pip install" in table["engine"][2]
    assert [table[k][0] for k in ("run", "step time", "memory")] == ["skip"] * 3
    assert len(captured.err.strip().splitlines()) == 1 and "pip install" in captured.err


def test_bad_recipe_and_bad_options_are_one_line(capsys):
    assert main(["doctor", "demo", "--set", "rollout.temprature=1"]) == 2
    captured = capsys.readouterr()
    assert rows(captured.out)["recipe"][0] == "FAIL" and "did you mean" in captured.out
    assert main(["doctor", "demo", "--fraction", "0"]) == 2
    assert "--fraction" in capsys.readouterr().err


def test_untested_versions_warn_but_do_not_fail(monkeypatch):
    monkeypatch.setitem(doctor.TESTED, "torch", ("1.0.",))
    (check,) = doctor.version_checks("hf")
    assert check.status == "warn" and "not in the tested matrix: torch" in check.detail
    monkeypatch.setitem(doctor.TESTED, "torch", ("2.",))
    assert doctor.version_checks("hf")[0].status == "ok"


def test_step_time_against_the_recipe_estimate():
    cfg = load_config("demo", ["cost.seconds_per_step=10"])
    ok = step_time_check(cfg, [{"step_seconds": 30.0}, {"step_seconds": 12.0}], fraction=1.0)
    assert ok.status == "ok" and "12.00 s/step (step 2)" in ok.detail and "1.20x" in ok.detail
    slow = step_time_check(cfg, [{"step_seconds": 30.0}, {"step_seconds": 10.0}], fraction=0.5)
    # measured at half the prompts: ~20 s at full size, 2x the estimate -> a warning with the measured figure
    assert slow.status == "warn" and "2.00x" in slow.detail and "cost.seconds_per_step=20" in slow.fix
    none = step_time_check(load_config("demo"), [{"step_seconds": 3.0}], fraction=1.0)
    assert none.status == "ok" and "includes warm-up" in none.detail and "seconds_per_step=3" in none.fix


def test_memory_without_headroom_fails(monkeypatch):
    monkeypatch.setattr(doctor, "_ram_bytes", lambda: 1)  # any process's peak RSS exceeds a 1-byte machine
    check = doctor.memory_check()
    assert check.status == "FAIL" and "batch_size" in check.fix


def test_render_is_a_markdown_table():
    text = doctor.render([Check("a", "ok", "x | y")])
    assert text.splitlines()[2] == "| a | ok | x / y |  |"


@pytest.mark.vllm
@pytest.mark.slow
def test_doctor_with_the_vllm_engine(capsys, tmp_path):
    pytest.importorskip("vllm")
    code = main(
        [
            "doctor",
            "demo",
            *SMALL,
            "--set",
            "rollout.backend=vllm",
            "--set",
            "model.dtype=float32",
            "-o",
            str(tmp_path / "d"),
        ]
    )
    out = capsys.readouterr().out
    table = rows(out)
    assert code == 0, out
    assert table["engine"][0] == "ok" and table["run"][0] == "ok"
    assert "vllm" in table["engine states"][1] and "sleep" in table["engine states"][1]
    assert table["step time"][0] in ("ok", "warn")
