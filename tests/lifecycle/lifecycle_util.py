"""Shared helpers for the run-lifecycle tests: a tiny recipe, CLI subprocesses, and bit-exact comparisons."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tina.records import WALL_TIME_FIELDS

# builtin:tiny-random with a length reward: group rewards differ, so every step really changes the adapter.
OVERRIDES = [
    "model.name_or_path=builtin:tiny-random",
    "train.batch_size=16",
    "rollout.num_generations=4",
    "rollout.max_new_tokens=8",
    "train.max_steps=10",
    "train.save_steps=2",
    "train.seed=7",
    "train.probe_max_new_tokens=8",
    "eval.num_problems=16",
    "rewards.length.weight=1.0",
]
STEPS = 10


def cli_args(run_dir: Path, *extra: str, resume: bool = False, overrides: list[str] | None = None) -> list[str]:
    args = ["train", "demo", "--output-dir", str(run_dir), "--no-progress"]
    for o in [*OVERRIDES, *(overrides or []), *extra]:
        args += ["--set", o]
    return args + (["--resume"] if resume else [])


def env() -> dict:
    e = dict(os.environ)
    # One thread: the same arithmetic in every process (bit-exactness needs the same thread count), and no
    # oversubscription on a shared 2-core machine.
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return e


def start(run_dir: Path, *, resume: bool = False, overrides: list[str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tina", *cli_args(run_dir, resume=resume, overrides=overrides)],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(
    run_dir: Path, *, resume: bool = False, overrides: list[str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tina", *cli_args(run_dir, resume=resume, overrides=overrides)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def signal_at(proc: subprocess.Popen, run_dir: Path, lines: int, sig: int, *, timeout: float = 120) -> None:
    """Send ``sig`` once RUN/metrics.jsonl has ``lines`` records *written by this process*.

    A resumed process first replaces metrics.jsonl (cut back to its checkpoint); until the file's inode changes the
    old file's lines do not count.
    """
    metrics = run_dir / "metrics.jsonl"
    old = _inode(metrics)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process ended before step {lines}: rc={proc.returncode}\n{proc.stderr.read()}")
        ino = _inode(metrics)
        if ino is not None and ino != old:
            try:
                n = sum(1 for line in metrics.read_text().splitlines() if line.strip())
            except FileNotFoundError:
                n = 0
            if n >= lines:
                proc.send_signal(sig)
                return
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"timed out waiting for {lines} metric lines")


def adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


def assert_adapters_identical(a: Path, b: Path) -> None:
    ta, tb = adapter(a), adapter(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} of {len(ta)} adapter tensors differ, e.g. {different[:2]}"


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def reproducible(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_TIME_FIELDS} for r in records]


def stop_step(stderr: str) -> int:
    """The step a graceful stop reported ('stopped by SIGTERM after step N; ...')."""
    import re

    m = re.search(r"stopped by SIG\w+ after step (\d+)", stderr)
    assert m, stderr
    return int(m.group(1))


SIGKILL, SIGTERM, SIGINT = signal.SIGKILL, signal.SIGTERM, signal.SIGINT
