"""Checkpoints: contents, atomicity, manifest verification, fallback past a damaged checkpoint, pruning, resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lifecycle_util import OVERRIDES, assert_adapters_identical, metrics, reproducible

from tina.checkpoint import (
    MANIFEST_FILE,
    STATE_FILE,
    _file_entry,
    clean_partial,
    latest_valid_checkpoint,
    list_checkpoints,
    load_trainer_state,
    rng_state,
    set_rng_state,
    verify_checkpoint,
)
from tina.config import load_config
from tina.errors import TinaError
from tina.train import train


def cfg(*extra: str):
    return load_config("demo", [*OVERRIDES, "train.max_steps=6", *extra])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 6-step run with checkpoints 2, 4, 6; tests work on copies."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    train(cfg(), run_dir, progress=False)
    return run_dir


def copy_run(base_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


def test_checkpoint_contents(base_run):
    assert [s for s, _ in list_checkpoints(base_run)] == [2, 4, 6]
    ck = base_run / "checkpoint-4"
    names = {p.name for p in ck.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainer_state.pt",
        "metrics.jsonl",
        "ledger.json",
        MANIFEST_FILE,
    } <= names
    manifest = json.loads((ck / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == names - {MANIFEST_FILE}
    state = load_trainer_state(ck)
    assert state["step"] == 4 and {"optimizer", "scheduler", "rng", "sampler"} <= state.keys()
    assert {"python", "numpy", "torch"} <= state["rng"].keys()
    assert state["scheduler"]["last_epoch"] == 4
    assert [m["step"] for m in metrics(ck)] == [1, 2, 3, 4]
    assert reproducible(metrics(ck)) == reproducible(metrics(base_run)[:4])
    assert json.loads((ck / "ledger.json").read_text())["training"]["wall_seconds"] > 0
    assert verify_checkpoint(ck) is None
    # adapters really change from checkpoint to checkpoint (the bit-exact tests would be vacuous otherwise)
    from lifecycle_util import adapter

    a2, a6 = adapter(base_run / "checkpoint-2"), adapter(base_run / "checkpoint-6")
    assert any(not torch.equal(a2[k], a6[k]) for k in a2)
    # one probe per checkpoint, greedy
    probes = [json.loads(line) for line in (base_run / "probes.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probes] == [2, 4, 6] and all(p["prompt"] and "completion" in p for p in probes)


def test_truncated_newest_checkpoint_falls_back_to_previous(base_run, tmp_path, capsys):
    run_dir = copy_run(base_run, tmp_path)
    original = run_dir / "original-6"
    shutil.copytree(run_dir / "checkpoint-6", original)
    path = run_dir / "checkpoint-6" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a crash or full disk
    assert "bytes" in verify_checkpoint(run_dir / "checkpoint-6")

    result = train(cfg(), run_dir, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "checkpoint-6 is damaged" in err and "from checkpoint-4" in err
    assert (run_dir / "damaged" / "checkpoint-6").is_dir()
    assert result.steps == 6
    assert_adapters_identical(original, run_dir / "checkpoint-6")  # steps 5-6 replayed bit for bit
    assert reproducible(metrics(run_dir)) == reproducible(metrics(base_run))


def test_verify_detects_same_size_corruption_and_missing_files(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path)
    state = run_dir / "checkpoint-6" / "trainer_state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    assert "SHA-256" in verify_checkpoint(run_dir / "checkpoint-6")
    (run_dir / "checkpoint-4" / "metrics.jsonl").unlink()
    assert "missing" in verify_checkpoint(run_dir / "checkpoint-4")
    warnings = []
    assert latest_valid_checkpoint(run_dir, warn=warnings.append)[0] == 2
    assert len(warnings) == 2


def test_partial_checkpoint_folders_are_cleaned(tmp_path):
    (tmp_path / ".checkpoint-8.tmp").mkdir()  # killed while writing checkpoint-8
    (tmp_path / ".checkpoint-4.old").mkdir()  # killed between the two renames of a re-save of checkpoint-4
    (tmp_path / ".checkpoint-4.old" / "x").write_text("complete")
    clean_partial(tmp_path)
    assert not (tmp_path / ".checkpoint-8.tmp").exists()
    assert (tmp_path / "checkpoint-4" / "x").read_text() == "complete"


def test_save_total_limit_keeps_the_newest(tmp_path):
    train(cfg("train.save_total_limit=2", "train.max_steps=4", "train.save_steps=1"), tmp_path / "run", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [3, 4]


def test_resume_rules(base_run, tmp_path, capsys):
    run_dir = copy_run(base_run, tmp_path)
    with pytest.raises(TinaError, match=r"different config .*train\.learning_rate"):
        train(cfg("train.learning_rate=0.1"), run_dir, resume=True, progress=False)
    with pytest.raises(TinaError, match="already holds a run"):
        train(cfg(), run_dir, progress=False)
    # stop_step (and other keys that do not change the trajectory) may change; a finished run has nothing to do
    result = train(cfg("train.stop_step=5"), run_dir, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "resuming with changed train.stop_step" in err and "already complete" in err
    assert result.steps == 6

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "rew')  # killed before its first checkpoint
    result = train(cfg("train.max_steps=2"), fresh, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "starting fresh" in err
    assert [m["step"] for m in metrics(fresh)] == [1, 2]


def test_rng_state_roundtrip_covers_python_numpy_torch():
    import random

    import numpy as np

    state = rng_state()
    a = (random.random(), float(np.random.rand()), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), float(np.random.rand()), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_resume_mid_rollout_reuse_is_bit_exact(tmp_path):
    """num_iterations=2 reuses a step's rollouts for the next update: a checkpoint between the two must carry them."""
    extra = [
        "algorithm.num_iterations=2",
        "algorithm.beta=0.04",
        "train.gradient_accumulation_steps=2",
        "train.save_steps=3",
    ]
    full = tmp_path / "full"
    train(cfg(*extra), full, progress=False)
    part = tmp_path / "part"
    train(cfg(*extra, "train.stop_step=3"), part, progress=False)  # checkpoint-3 sits between the two updates
    saved = load_trainer_state(part / "checkpoint-3")
    assert len(saved["buffer_by_rank"]) == 1 and len(saved["buffer_by_rank"][0]) == 2  # one process, 2 micro-batches
    assert saved["rollout_metrics_by_rank"][0]["reward"][1] > 0  # the metrics beside the micro-batches
    two = tmp_path / "two"  # as if two processes wrote it: one process cannot train on both shares
    _rewrite_state(part, two, {**saved, "buffer_by_rank": saved["buffer_by_rank"] * 2})
    with pytest.raises(TinaError, match="holds the reused rollouts of 2 process.es., .*--num-processes 2"):
        train(cfg(*extra), two, resume=True, progress=False)
    older = tmp_path / "older"  # an older tina's checkpoint: one buffer, the metrics in its first micro-batch
    saved["buffer"] = saved.pop("buffer_by_rank")[0]
    saved["buffer"][0]["metrics"] = saved.pop("rollout_metrics_by_rank")[0]
    _rewrite_state(part, older, saved)
    train(cfg(*extra), part, resume=True, progress=False)
    train(cfg(*extra), older, resume=True, progress=False)
    assert_adapters_identical(full / "checkpoint-6", part / "checkpoint-6")
    assert reproducible(metrics(part)) == reproducible(metrics(full)) == reproducible(metrics(older))
    assert all(m.get("kl") is not None for m in metrics(full))
    # the reused step logs its rollout's metrics again: steps 3 and 4 share one rollout
    assert [m["reward"] for m in metrics(part)][2] == [m["reward"] for m in metrics(part)][3]


def _rewrite_state(run: Path, copy: Path, state: dict) -> None:
    """A copy of ``run`` whose checkpoint-3 holds ``state`` as its trainer state (its manifest updated)."""
    shutil.copytree(run, copy)
    torch.save(state, copy / "checkpoint-3" / STATE_FILE)
    manifest = json.loads((copy / "checkpoint-3" / MANIFEST_FILE).read_text())
    manifest["files"][STATE_FILE] = _file_entry(copy / "checkpoint-3" / STATE_FILE)
    (copy / "checkpoint-3" / MANIFEST_FILE).write_text(json.dumps(manifest))
