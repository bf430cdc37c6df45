"""Two runs of one recipe on one machine give the same bits: on the CPU tina trains with torch's deterministic kernels
(tina.build.deterministic_kernels).  With two threads some default kernels of the loss pass are not: two separate
processes' first updates differed by up to 4e-8 per LoRA weight."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

ARGS = [
    "--set",
    "train.max_steps=6",
    "--set",
    "train.stop_step=2",
    "--set",
    "train.save_steps=2",
    "--set",
    "train.probe_prompt=''",
    "--no-progress",
]


def _train(out) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tina", "train", "demo", "-o", str(out), *ARGS],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(out / "checkpoint-2" / "adapter_model.safetensors"))


def test_two_processes_of_one_recipe_train_the_same_bits(tmp_path):
    from tina.tiny import resolve_builtin

    resolve_builtin("builtin:tiny-arith", progress=False)  # the warm-start is built once, before both runs
    a, b = _train(tmp_path / "a"), _train(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(bool(a[k].abs().sum() > 0) for k in a if "lora_B" in k)  # the adapter did move


def test_deterministic_kernels_only_on_the_cpu(monkeypatch):
    from tina.build import deterministic_kernels

    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, **kw: calls.append((on, kw)))
    deterministic_kernels(torch.device("meta"))
    assert calls == []  # a GPU (or any other device) keeps its fast kernels
    deterministic_kernels(torch.device("cpu"))
    assert calls == [(True, {"warn_only": True})]
