"""Bit-exact resume after SIGKILL and after a graceful SIGTERM stop (real `python -m tina train` subprocesses).

Each interrupted run is compared with one uninterrupted run of the same recipe: every tensor of the final
adapter must be bit-identical (torch.equal) and every per-step metric identical (wall-time fields aside).
"""

from __future__ import annotations

import json
import random
import re
import shlex
import subprocess
import sys

import pytest
from lifecycle_util import (
    SIGKILL,
    SIGTERM,
    STEPS,
    assert_adapters_identical,
    env,
    metrics,
    reproducible,
    run,
    signal_at,
    start,
    stop_step,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    done = run(run_dir)
    assert done.returncode == 0, done.stderr
    assert len(metrics(run_dir)) == STEPS
    return run_dir


def test_sigkill_at_random_steps_then_resume_is_bit_exact(reference, tmp_path):
    rng = random.Random(1234)  # seeded choice of three kill points, one after the other on the same run
    first = rng.randint(2, 4)
    second = first + rng.randint(2, 3)
    third = min(second + rng.randint(1, 2), STEPS - 1)
    run_dir = tmp_path / "run"
    resumed_from = []
    for i, kill_at in enumerate((first, second, third)):
        proc = start(run_dir, resume=i > 0)
        signal_at(proc, run_dir, kill_at, SIGKILL)
        proc.wait(timeout=60)
        err = proc.stderr.read()
        assert proc.returncode == -SIGKILL, err
        if i:
            resumed_from.append(int(re.search(r"from checkpoint-(\d+)", err).group(1)))
    done = run(run_dir, resume=True)
    assert done.returncode == 0, done.stderr
    resumed_from.append(int(re.search(r"from checkpoint-(\d+)", done.stderr).group(1)))
    assert len(resumed_from) == 3 and all(0 < s < STEPS for s in resumed_from), resumed_from

    assert_adapters_identical(reference / f"checkpoint-{STEPS}", run_dir / f"checkpoint-{STEPS}")
    assert reproducible(metrics(run_dir)) == reproducible(metrics(reference))
    probes = [json.loads(line) for line in (run_dir / "probes.jsonl").read_text().splitlines()]
    ref_probes = [json.loads(line) for line in (reference / "probes.jsonl").read_text().splitlines()]
    assert probes == ref_probes  # one probe per checkpoint step, no duplicates from the replayed steps
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert ledger["training"]["sessions"] == 4
    assert not list(run_dir.glob(".checkpoint-*"))


def test_sigterm_stops_gracefully_and_resumes_bit_exact(reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, overrides=["train.save_steps=4"])  # checkpoints never change the trajectory
    signal_at(proc, run_dir, 3, SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stopped = stop_step(err)
    assert stopped < STEPS
    assert (run_dir / f"checkpoint-{stopped}" / "manifest.json").is_file()
    assert len(metrics(run_dir)) == stopped
    command = err.split("Resume with:")[1].strip().splitlines()[0]
    assert command == (
        f"tina train {shlex.quote(str(run_dir / 'config.yaml'))} --output-dir {shlex.quote(str(run_dir))} --resume"
    )

    argv = shlex.split(command)
    done = subprocess.run(
        [sys.executable, "-m", *argv, "--no-progress"], env=env(), capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert f"from checkpoint-{stopped}" in done.stderr
    assert_adapters_identical(reference / f"checkpoint-{STEPS}", run_dir / f"checkpoint-{STEPS}")
    assert reproducible(metrics(run_dir)) == reproducible(metrics(reference))
