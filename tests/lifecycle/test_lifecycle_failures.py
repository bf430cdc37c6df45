"""Failure handling: each failure gives a one-line message and exit code 2 (or a graceful stop), never a traceback,
and never damages an earlier checkpoint."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys

import pytest
from lifecycle_util import cli_args, metrics

import tina.checkpoint
import tina.rl.losses
import tina.run
import tina.train
from tina import cli
from tina.checkpoint import list_checkpoints, load_trainer_state, verify_checkpoint


def main(run_dir, *extra, resume=False):
    return cli.main(cli_args(run_dir, *extra, resume=resume))


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("tina train: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_nan_steps_are_skipped_then_abort_after_k_in_a_row(tmp_path, monkeypatch, capsys):
    real = tina.rl.losses.LOSSES["grpo"]
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):  # one micro-batch per step: call n is step n
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] in (2, 4, 5):
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setitem(tina.rl.losses.LOSSES, "grpo", sometimes_nan)
    run_dir = tmp_path / "run"
    rc = main(run_dir, "train.max_bad_steps=2", "train.save_steps=5")
    err = capsys.readouterr().err
    assert rc == 2
    line = one_error_line(err)
    assert "2 steps in a row (up to step 5) had a non-finite loss" in line and "checkpoint-3" in line
    assert "step 2: non-finite loss or gradient; update skipped (1/2 in a row)" in err  # a single bad step is skipped
    recs = metrics(run_dir)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert [r["skipped"] for r in recs] == [False, True, False, True, True]
    assert recs[1]["loss"] is None  # NaN is written as null: metrics.jsonl stays valid JSON
    # the last good state (step 3) was checkpointed although save_steps is 5
    assert [s for s, _ in list_checkpoints(run_dir)] == [3]
    assert verify_checkpoint(run_dir / "checkpoint-3") is None
    assert load_trainer_state(run_dir / "checkpoint-3")["step"] == 3
    assert len(metrics(run_dir / "checkpoint-3")) == 3


def test_nan_from_the_first_step_aborts_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    real = tina.rl.losses.LOSSES["grpo"]

    def always_nan(*args, **kwargs):
        out = real(*args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setitem(tina.rl.losses.LOSSES, "grpo", always_nan)
    rc = main(tmp_path / "run", "train.max_bad_steps=2")
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "nothing to checkpoint" in line
    assert list_checkpoints(tmp_path / "run") == []


def test_missing_model_path(tmp_path, capsys):
    rc = main(tmp_path / "run", f"model.name_or_path={tmp_path / 'no-such-model'}")
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "model folder not found" in line and "no-such-model" in line


@pytest.mark.parametrize("content", [None, "this is not json\n"])
def test_unreadable_dataset(tmp_path, capsys, content):
    data = tmp_path / "problems.jsonl"
    if content is not None:
        data.write_text(content)
    rc = main(tmp_path / "run", f"data.source={data}")
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "problems.jsonl" in line


def test_full_disk_while_checkpointing_keeps_previous_checkpoint(tmp_path, monkeypatch, capsys):
    real = tina.checkpoint._save_state
    calls = {"n": 0}

    def disk_fills_up(obj, path):
        calls["n"] += 1
        if calls["n"] == 1:
            return real(obj, path)
        path.write_bytes(b"\0" * 1000)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(tina.checkpoint, "_save_state", disk_fills_up)
    run_dir = tmp_path / "run"
    rc = main(run_dir)
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert "cannot write checkpoint-4" in line and "the disk is full" in line and "checkpoint-2 is intact" in line
    assert "--resume" in line
    assert [s for s, _ in list_checkpoints(run_dir)] == [2]
    assert verify_checkpoint(run_dir / "checkpoint-2") is None
    assert not list(run_dir.glob(".checkpoint-*"))  # the partial checkpoint was removed
    json.loads((run_dir / "ledger.json").read_text())  # still valid

    monkeypatch.setattr(tina.checkpoint, "_save_state", real)  # space freed: the run resumes from checkpoint-2
    assert main(run_dir, resume=True) == 0
    assert "from checkpoint-2" in capsys.readouterr().err


def test_full_disk_while_writing_metrics(tmp_path, monkeypatch, capsys):
    def no_space(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tina.run, "append_jsonl", no_space)
    rc = main(tmp_path / "run")
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "cannot write metrics.jsonl" in line and "the disk is full" in line


@pytest.mark.parametrize(
    "tracker,module,install",
    [("wandb", "wandb", "pip install wandb"), ("tensorboard", "torch.utils.tensorboard", "pip install tensorboard")],
)
def test_missing_tracker_package(tmp_path, monkeypatch, capsys, tracker, module, install):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    rc = main(tmp_path / "run", f"train.report_to=[{tracker}]")
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and install in line and tracker in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # failed before any work


def _interrupt_at_step(monkeypatch, step: int, times: int):
    real = tina.train.update
    calls = {"n": 0}

    def update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the step runs
        return real(*args, **kwargs)

    monkeypatch.setattr(tina.train, "update", update)


def test_ctrl_c_finishes_the_step_and_checkpoints(tmp_path, monkeypatch, capsys):
    _interrupt_at_step(monkeypatch, 3, times=1)
    run_dir = tmp_path / "run"
    assert main(run_dir) == 0
    err = capsys.readouterr().err
    assert "stopped by SIGINT after step 3" in err and "--resume" in err
    assert [s for s, _ in list_checkpoints(run_dir)] == [2, 3]
    assert len(metrics(run_dir)) == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_second_ctrl_c_aborts_at_once(tmp_path, monkeypatch, capsys):
    _interrupt_at_step(monkeypatch, 3, times=2)
    run_dir = tmp_path / "run"
    assert main(run_dir) == 130
    err = capsys.readouterr().err
    assert "aborted; the last checkpoint is checkpoint-2" in err
    assert [s for s, _ in list_checkpoints(run_dir)] == [2]
    assert len(metrics(run_dir)) == 2
