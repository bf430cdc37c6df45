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

    python benchmarks/async_step.py                                       # SmolLM2-135M, 8 x 4 x 48, 8 steps
    python benchmarks/async_step.py --model builtin:tiny-random --steps 6  # a quick look
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--skip", type=int, default=2, help="steps left out of the means (start-up)")
    p.add_argument("--threads", type=int, default=2, help="threads of the in-process reference run")
    p.add_argument("--no-reference", action="store_true", help="skip the in-process reference run")
    a = p.parse_args()
    workers = ["rollout.devices=[cpu]", "rollout.worker_threads=1"]
    with tempfile.TemporaryDirectory(prefix="tina-async-") as tmp:
        folder = Path(tmp)
        rows = [
            run(a, folder, "sync", [*workers, "rollout.max_staleness=0"], 1),
            run(a, folder, "async", [*workers, "rollout.max_staleness=1"], 1),
        ]
        if not a.no_reference:
            rows.append(run(a, folder, "in-process", [], a.threads))
    base = rows[0]["mean"]
    print(f"\n{a.model}, {a.steps} steps (means over steps {a.skip + 1}..{a.steps}), float32, CPU")
    print("| run | s/step median | s/step mean | vs sync | trainer waits | worker busy | staleness |")
    print("|---|---|---|---|---|---|---|")
    labels = {
        "sync": "workers, max_staleness 0 (1 + 1 threads)",
        "async": "workers, max_staleness 1 (1 + 1 threads)",
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
