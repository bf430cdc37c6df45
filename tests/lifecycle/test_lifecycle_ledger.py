"""The cost ledger: phases add up to the wall time, dollars = device-hours x price, resumed runs and evaluations
accumulate without double counting."""

from __future__ import annotations

import json
import time

import pytest
from lifecycle_util import OVERRIDES, metrics

from tina.config import load_config
from tina.ledger import PHASES, Ledger, add_eval_cost
from tina.train import train

PRICE, DEVICES = 3.0, 2


def cfg(*extra: str):
    return load_config(
        "demo",
        [*OVERRIDES, "train.max_steps=6", f"cost.usd_per_device_hour={PRICE}", f"cost.num_devices={DEVICES}", *extra],
    )


def ledger(run_dir):
    return json.loads((run_dir / "ledger.json").read_text())


def check_consistent(led: dict) -> None:
    assert set(led["phases"]) == {*PHASES, "other"}
    assert sum(led["phases"].values()) == pytest.approx(led["wall_seconds"], rel=0.05)
    assert led["device_hours"] == pytest.approx(
        led["training"]["device_hours"] + led["evaluation"]["device_hours"], abs=1e-6
    )
    assert led["usd"] == pytest.approx(led["device_hours"] * PRICE, rel=1e-3, abs=1e-5)


def test_ledger_adds_up_across_resume_and_evaluation(tmp_path):
    run_dir = tmp_path / "run"
    t0 = time.perf_counter()
    train(cfg("train.stop_step=3"), run_dir, progress=False, started_at=t0)
    first = time.perf_counter() - t0
    led = ledger(run_dir)
    check_consistent(led)
    assert led["wall_seconds"] == pytest.approx(first, rel=0.05, abs=0.25)  # setup (model loading) counted
    assert led["phases"]["setup"] > 0 and led["phases"]["generation"] > 0 and led["phases"]["backward"] > 0
    # the recipe names 2 devices (for the estimate); this run used one process, and one device is booked
    assert led["num_devices"] == led["training"]["num_devices"] == 1
    assert led["training"]["device_hours"] == pytest.approx(led["wall_seconds"] / 3600, rel=1e-3)
    assert led["tokens_generated"] == sum(m["tokens"] for m in metrics(run_dir)) > 0
    assert metrics(run_dir)[-1]["usd"] <= led["training"]["usd"]

    # `tina eval --run` books its time; the next training session keeps it and adds its own
    add_eval_cost(run_dir, 360.0, num_devices=1, label="checkpoint-2")
    led = ledger(run_dir)
    check_consistent(led)
    assert led["evaluation"] == {"seconds": 360.0, "device_hours": 0.1, "usd": pytest.approx(0.3), "runs": 1}
    assert led["phases"]["evaluation"] == pytest.approx(360.0)

    t1 = time.perf_counter()
    train(cfg(), run_dir, resume=True, progress=False, started_at=t1)
    second = time.perf_counter() - t1
    led = ledger(run_dir)
    check_consistent(led)
    assert led["training"]["sessions"] == 2
    assert led["training"]["wall_seconds"] == pytest.approx(first + second, rel=0.05, abs=0.25)
    assert led["wall_seconds"] == pytest.approx(first + second + 360.0, rel=0.05, abs=0.25)
    assert led["evaluation"]["runs"] == 1 and led["phases"]["evaluation"] == pytest.approx(360.0)
    assert led["tokens_generated"] == sum(m["tokens"] for m in metrics(run_dir))
    assert led["training"]["usd"] == pytest.approx(led["training"]["wall_seconds"] / 3600 * PRICE, rel=1e-3)
    usd = [m["usd"] for m in metrics(run_dir)]
    assert usd == sorted(usd)  # cost over time never goes down, across the resume too


def test_ledger_other_bucket_closes_the_gap():
    led = Ledger(num_devices=1, usd_per_device_hour=1.0, started_at=time.perf_counter() - 0.2)
    with led.phase("generation"):
        time.sleep(0.05)
    time.sleep(0.05)  # outside any phase
    d = led.to_dict()
    assert d["phases"]["setup"] == pytest.approx(0.2, abs=0.02)
    assert d["phases"]["other"] == pytest.approx(0.05, abs=0.03)
    assert sum(d["phases"].values()) == pytest.approx(d["wall_seconds"], abs=1e-3)


def test_add_eval_cost_on_an_older_ledger_and_without_one(tmp_path):
    assert add_eval_cost(tmp_path, 10.0) is None  # no run ledger: nothing to book
    (tmp_path / "ledger.json").write_text(
        json.dumps(
            {
                "wall_seconds": 3600,
                "phases": {"evaluation": 0},
                "num_devices": 2,
                "device_hours": 2.0,
                "usd_per_device_hour": 1.5,
                "usd": 3.0,
            }
        )
    )
    out = add_eval_cost(tmp_path, 1800.0)  # the ledger's own 2 devices and price
    assert out["wall_seconds"] == 5400.0 and out["phases"]["evaluation"] == 1800.0
    assert out["device_hours"] == pytest.approx(3.0) and out["usd"] == pytest.approx(4.5)
    assert out["evaluation"] == {"seconds": 1800.0, "device_hours": 1.0, "usd": 1.5, "runs": 1}
    out = add_eval_cost(tmp_path, 3600.0, num_devices=1, label="checkpoint-2")
    assert out["evaluation"]["runs"] == 2 and out["device_hours"] == pytest.approx(4.0)
    assert json.loads((tmp_path / "ledger.json").read_text()) == out


def test_evaluation_booked_directly_in_ledger_json_survives_a_training_write(tmp_path):
    from tina.ledger import adopt_untracked_eval, read_ledger

    # a ledger written by training, then edited in place by a tool that knows nothing of eval_costs.jsonl
    led = Ledger(num_devices=1, usd_per_device_hour=2.0)
    led.write(tmp_path)
    data = read_ledger(tmp_path)
    data["evaluation"] = {"seconds": 1800.0, "device_hours": 0.5, "usd": 1.0, "runs": 1}
    data["phases"]["evaluation"] += 1800.0
    data["wall_seconds"] += 1800.0
    (tmp_path / "ledger.json").write_text(json.dumps(data))
    adopt_untracked_eval(tmp_path, read_ledger(tmp_path))
    adopt_untracked_eval(tmp_path, read_ledger(tmp_path))  # idempotent
    resumed = Ledger(num_devices=1, usd_per_device_hour=2.0, prior=read_ledger(tmp_path))
    out = resumed.write(tmp_path)
    assert out["evaluation"]["seconds"] == 1800.0 and out["evaluation"]["usd"] == pytest.approx(1.0)
    assert out["phases"]["evaluation"] == pytest.approx(1800.0)
    assert out["training"]["sessions"] == 2
    assert sum(out["phases"].values()) == pytest.approx(out["wall_seconds"], abs=1e-2)
