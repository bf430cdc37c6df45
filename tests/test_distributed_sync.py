"""Gradient accumulation under DDP: one all-reduce per optimizer step, not one per micro-batch (no_sync)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tina.distributed import config_path

pytestmark = pytest.mark.slow


def test_ddp_all_reduces_once_per_optimizer_step():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_path("ddp")),
        "--num_processes",
        "2",
        str(Path(__file__).with_name("ddp_sync_worker.py")),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert result["allreduce_calls"] == 1  # three micro-batches, one bucket, one all-reduce (was 3)
    assert result["grad"] == pytest.approx(result["expected"])  # and the gradient is still the global mean


ACCUMULATE = [
    "--set",
    "train.batch_size=16",
    "--set",
    "rollout.num_generations=4",
    "--set",
    "train.max_steps=2",
    "--set",
    "train.save_steps=2",
    "--set",
    "rollout.max_new_tokens=16",
    "--set",
    "train.gradient_accumulation_steps=3",
    "--set",
    "train.probe_prompt=''",
    "--no-progress",
]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu"
    )
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)


def test_accumulated_micro_batches_give_the_one_process_update_under_ddp_and_fsdp(tmp_path):
    """Gradients synchronised only at the step's last micro-batch (DDP no_sync, FSDP2 without reduce-scatter before
    it) still sum every micro-batch of every process: the adapter equals one process's with the same global batch."""
    import torch
    from safetensors.torch import load_file

    from tina.tiny import resolve_builtin

    resolve_builtin("builtin:tiny-arith", progress=False)
    one = _run(["-m", "tina", "train", "demo", "-o", str(tmp_path / "one"), *ACCUMULATE])
    assert one.returncode == 0, one.stderr[-3000:]
    reference = load_file(str(tmp_path / "one" / "checkpoint-2" / "adapter_model.safetensors"))
    on_cpu = str(Path(__file__).with_name("accelerate_on_cpu.py"))
    for engine in ("ddp", "fsdp"):
        two = _run(
            [
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                str(config_path(engine)),
                "--num_processes",
                "2",
                "--mixed_precision",
                "no",
                on_cpu,
                "train",
                "demo",
                "-o",
                str(tmp_path / engine),
                *ACCUMULATE,
            ]
        )
        assert two.returncode == 0, (engine, two.stderr[-3000:])
        got = load_file(str(tmp_path / engine / "checkpoint-2" / "adapter_model.safetensors"))
        assert got.keys() == reference.keys()
        for key in reference:
            assert torch.allclose(got[key], reference[key], rtol=1e-4, atol=2e-5), (engine, key)
