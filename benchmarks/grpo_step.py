"""Time one GRPO step of `tina train` and of TRL's GRPOTrainer on the same model, prompts, rewards and sizes.

tina is measured through its own command line, as a user runs it: the benchmark writes the task's training problems
to a .jsonl file and a plain recipe (model, LoRA, the file with the tokenizer's chat template, G, the token budget,
beta 0, batch size, steps, learning rate, rewards) and runs ``python -m tina train RECIPE --output-dir RUN`` in a
subprocess.  Everything the recipe does not say is tina's default -- the start-up engine check, the probe at the
checkpoint, the checkpoint write, the grader worker, the loss pass size -- so the benchmark cannot drift from what
users run; ``--tina-set KEY=VALUE`` adds a ``--set`` (e.g. ``train.max_tokens_per_pass=1024``) to see what a
setting buys.  s/step comes from the run's metrics.jsonl (``step_seconds``), the phases from its ledger.json.

TRL runs its GRPOTrainer (generation with transformers ``generate``, one micro-batch of all completions, no
checkpoint) on the same rows of the same .jsonl file, the same LoRA (rank, alpha, targets), rewards (tina's accuracy
+ boxed_number for the real model, accuracy + format on the tiny one), sizes, learning rate, beta 0, GRPO loss with
group-scaled advantages, no gradient checkpointing, sdpa attention, float32.

Both run in their own subprocess and are measured the same way from outside: peak memory is the largest process's
maximum RSS (exact: ``wait4``'s ``ru_maxrss``, what ``/usr/bin/time -v`` reports), and the process tree's (the
trainer + its grader worker) RSS summed and sampled every 50 ms; with ``--device cuda`` also the GPU memory
nvidia-smi reports for the tree.

    python benchmarks/grpo_step.py                                            # tiny model: 2 x 4 x 32, r=8
    python benchmarks/grpo_step.py --model builtin:smollm2-135m-instruct      # real model: 8 x 4 x 48, r=8, fp32
    python benchmarks/grpo_step.py --model builtin:smollm2-135m-instruct --engines tina --tina-dtype bfloat16
    python benchmarks/grpo_step.py --model builtin:smollm2-135m-instruct --engines tina \\
        --tina-set train.max_tokens_per_pass=1024

Prints a table: median and mean seconds per step (first step excluded), first step, peak memory, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTINGS = {  # model -> (prompts, generations, new tokens, task source, rewards)
    "builtin:tiny-random": (2, 4, 32, "builtin:arith", ("accuracy", "format")),
    "builtin:smollm2-135m-instruct": (8, 4, 48, "builtin:addition", ("accuracy", "boxed_number")),
}
LEARNING_RATE = 1e-4


# ------------------------------------------------------------------------------------------------------- inputs
def write_problems(model: str, path: Path) -> Path:
    """The task's training rows as the .jsonl file a user would bring: one ``{"problem", "answer"}`` per line."""
    from tina.problems import BUILTIN_TASKS

    rows, _ = BUILTIN_TASKS[SETTINGS[model][3]]().split()
    path.write_text("".join(json.dumps({"problem": r["problem"], "answer": r["answer"]}) + "\n" for r in rows))
    return path


def tina_recipe(a, data: Path) -> dict:
    """The plain recipe: only what the comparison fixes; everything else is tina's default."""
    prompts, gens, tokens, _, rewards = SETTINGS[a.model]
    return {
        "model": {"name_or_path": a.model, "dtype": a.tina_dtype},
        "lora": {"r": a.rank, "alpha": 2 * a.rank, "dropout": 0.0, "target_modules": TARGETS},
        "data": {"source": str(data), "template": "tokenizer"},
        "rollout": {"num_generations": gens, "max_new_tokens": tokens, "temperature": 1.0},
        "algorithm": {"objective": "grpo", "beta": 0.0, "scale_rewards": "group"},
        "rewards": {name: {"weight": 1.0} for name in rewards},
        "train": {
            "max_steps": a.steps,
            "batch_size": prompts * gens,
            "learning_rate": LEARNING_RATE,
            "lr_scheduler": "constant",
            "device": "cpu" if a.device == "cpu" else "auto",
        },
    }


# ------------------------------------------------------------------------------------------------ measurement
def measure(cmd: list[str], folder: Path, name: str) -> dict:
    """Run ``cmd`` to the end; its exit code, output, wall time and memory, measured from outside.

    ``peak_mb``: the largest process's maximum RSS (exact, from wait4); ``tree_peak_mb``: the RSS of the process and
    all its descendants summed, sampled every 50 ms (a short spike between samples can be missed); ``gpu_peak_mb``:
    the tree's GPU memory per nvidia-smi (sampled, when there is one)."""
    peaks = {"tree": 0.0, "gpu": None}
    done = threading.Event()
    with open(folder / f"{name}.stdout", "w+") as out, open(folder / f"{name}.stderr", "w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        sampler = threading.Thread(target=sample_tree, args=(proc.pid, peaks, done), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    return {
        "rc": proc.returncode,
        "stdout": stdout,
        "stderr": stderr,
        "wall_s": wall,
        "peak_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "tree_peak_mb": peaks["tree"] / 2**20 or None,
        "gpu_peak_mb": peaks["gpu"],
    }


def sample_tree(pid: int, peaks: dict, done: threading.Event, every: float = 0.05) -> None:
    try:
        import psutil
    except ImportError:  # the exact largest-process peak (wait4) still comes back
        return
    gpu = shutil.which("nvidia-smi")
    tick = 0
    while not done.is_set():
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            peaks["tree"] = max(peaks["tree"], rss)
            if gpu and tick % 10 == 0:  # nvidia-smi is slow: every 0.5 s
                used = gpu_memory_mb(gpu, {p.pid for p in procs})
                if used is not None:
                    peaks["gpu"] = max(peaks["gpu"] or 0.0, used)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
        tick += 1
        done.wait(every)


def gpu_memory_mb(nvidia_smi: str, pids: set[int]) -> float | None:
    try:
        text = subprocess.run(
            [nvidia_smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [
        float(m)
        for p, m in (line.split(",") for line in text.splitlines() if "," in line)
        if p.strip().isdigit() and int(p) in pids and m.strip().replace(".", "").isdigit()
    ]
    return sum(used) if used else None


# ---------------------------------------------------------------------------------------------------- engines
def run_tina(a, folder: Path, data: Path, extra: tuple[str, ...] = (), name: str = "tina") -> dict:
    """`tina train` on the plain recipe, in a subprocess; s/step from its metrics.jsonl, phases from ledger.json.
    ``extra``: more ``--set`` items after ``--tina-set``'s (the ``tina-all-rows`` engine)."""
    import yaml

    recipe, run = folder / "recipe.yaml", folder / f"{name}-run"
    recipe.write_text(yaml.safe_dump(tina_recipe(a, data), sort_keys=False))
    cmd = [sys.executable, "-m", "tina", "train", str(recipe), "--output-dir", str(run), "--no-progress"]
    settings = [*a.tina_set, *extra]
    for item in settings:
        cmd += ["--set", item]
    m = measure(cmd, folder, name)
    if m["rc"]:
        raise RuntimeError(f"tina train failed (exit {m['rc']}):\n{m['stderr'][-3000:]}")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ledger = json.loads((run / "ledger.json").read_text())
    label = f"tina train ({a.tina_dtype}{'; ' + ', '.join(settings) if settings else ''})"
    left_out = [r.get("loss/rows_left_out") or 0.0 for r in metrics]
    return {
        "engine": label,
        "times": [r["step_seconds"] for r in metrics],
        "left_out": statistics.mean(left_out) if left_out else 0.0,
        "phases": ledger["phases"],
        "steps": len(metrics),
        **{k: m[k] for k in ("peak_mb", "tree_peak_mb", "gpu_peak_mb", "wall_s")},
    }


def run_trl_subprocess(a, folder: Path, data: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--engine",
        "trl",
        "--model",
        a.model,
        "--steps",
        str(a.steps),
        "--rank",
        str(a.rank),
        "--device",
        a.device,
        "--data",
        str(data),
    ]
    m = measure(cmd, folder, "trl")
    line = next((x for x in m["stdout"].splitlines() if x.startswith("RESULT ")), None)
    if m["rc"] or line is None:
        raise RuntimeError(f"trl failed (exit {m['rc']}):\n{m['stderr'][-3000:]}")
    res = json.loads(line[len("RESULT ") :])
    return {**res, **{k: m[k] for k in ("peak_mb", "tree_peak_mb", "gpu_peak_mb", "wall_s")}}


def run_trl(a) -> dict:
    """TRL's GRPOTrainer, in this (sub)process; prints its step times (memory is measured by the parent)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tina.models import resolve_model_path
    from tina.rewards import RewardBatch, RewardSpec, grade_batch, score

    prompts, gens, tokens, _, rewards = SETTINGS[a.model]
    path = resolve_model_path(a.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines() if line.strip()]
    texts = [
        tok.apply_chat_template([{"role": "user", "content": r["problem"]}], tokenize=False, add_generation_prompt=True)
        for r in rows
    ]
    data = Dataset.from_list([{"prompt": t, "answer": r["answer"]} for t, r in zip(texts, rows, strict=True)])

    def make_reward(name):
        def reward(completions, answer, prompts=None, **_):
            texts_ = [c[0]["content"] if isinstance(c, list) else c for c in completions]
            batch = grade_batch(
                RewardBatch(texts_, list(answer), list(prompts or [""] * len(texts_)), [0] * len(texts_), 1)
            )
            _, comps = score(batch, [RewardSpec(name, 1.0)])
            return comps[name]

        reward.__name__ = name
        return reward

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            max_steps=a.steps,
            per_device_train_batch_size=prompts * gens,
            gradient_accumulation_steps=1,
            num_generations=gens,
            max_completion_length=tokens,
            temperature=1.0,
            learning_rate=LEARNING_RATE,
            beta=0.0,
            loss_type="grpo",
            scale_rewards="group",
            use_vllm=False,
            use_cpu=a.device == "cpu",
            bf16=False,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
            dataloader_num_workers=0,
            lr_scheduler_type="constant",
        )
        peft_config = LoraConfig(
            r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[make_reward(r) for r in rewards],
            args=args,
            train_dataset=data,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[timer],
        )
        trainer.train()
    return {"engine": "trl (float32)", "times": timer.times, "steps": len(timer.times)}


# ------------------------------------------------------------------------------------------------------ report
def summarise(res: dict) -> dict:
    steady = res["times"][1:] or res["times"]
    return {**res, "mean": statistics.mean(steady), "median": statistics.median(steady), "first": res["times"][0]}


def mb(x) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-random", choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=None, help="steps per engine (default 15 tiny, 4 real model)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--tina-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--tina-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="an extra `tina train --set` (repeatable); without any, the recipe runs on tina's defaults",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--engines",
        default="tina,trl",
        help="comma-separated: tina, tina-all-rows (groups without signal not left out of the loss pass), trl",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the recipe, data, run folder and logs here")
    parser.add_argument("--engine", choices=["trl"], help=argparse.SUPPRESS)  # internal: the TRL worker
    parser.add_argument("--data", help=argparse.SUPPRESS)  # internal: the .jsonl the TRL worker reads
    a = parser.parse_args()
    a.steps = a.steps or (15 if a.model == "builtin:tiny-random" else 4)
    if a.engine:
        print("RESULT " + json.dumps(run_trl(a)))
        return
    engines = [e for e in a.engines.split(",") if e]
    unknown = sorted(set(engines) - {"tina", "tina-all-rows", "trl"})
    if unknown:
        parser.error(f"--engines: unknown {', '.join(unknown)}; choose from tina, tina-all-rows, trl")
    if "trl" in engines:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("trl is not installed: timing tina only (pip install -e '.[bench]' to compare)")
            engines.remove("trl")
    folder = Path(tempfile.mkdtemp(prefix="grpo_step-")) if a.keep is None else a.keep
    folder.mkdir(parents=True, exist_ok=True)
    data = write_problems(a.model, folder / "problems.jsonl")
    rows = []
    try:
        for engine in engines:
            try:
                if engine == "tina":
                    res = run_tina(a, folder, data)
                elif engine == "tina-all-rows":  # every completion through the loss pass, as TRL does
                    res = run_tina(a, folder, data, ("train.skip_zero_advantage=false",), "tina-all-rows")
                else:
                    res = run_trl_subprocess(a, folder, data)
            except RuntimeError as exc:
                print(f"{engine}: {exc}")
                continue
            rows.append(summarise(res))
    finally:
        if a.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    prompts, gens, tokens, _, rewards = SETTINGS[a.model]
    print(
        f"\nOne GRPO step on {a.model}: {prompts} prompts x {gens} generations x {tokens} new tokens, LoRA r={a.rank}, "
        f"rewards {' + '.join(rewards)}, {a.steps} steps each (first excluded from mean/median), "
        f"{os.cpu_count()} CPU threads available, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}\n"
    )
    gpu = any(r.get("gpu_peak_mb") is not None for r in rows)
    print(
        "| engine | s/step (median) | s/step (mean) | first step (s) | peak RSS, largest process (MB) "
        f"| peak RSS, process tree (MB) |{' peak GPU (MB) |' if gpu else ''}"
    )
    print("|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    for r in rows:
        print(
            f"| {r['engine']} | {r['median']:.2f} | {r['mean']:.2f} | {r['first']:.2f} | {mb(r['peak_mb'])} "
            f"| {mb(r.get('tree_peak_mb'))} |" + (f" {mb(r.get('gpu_peak_mb'))} |" if gpu else "")
        )
    trl_rows = [r for r in rows if r["engine"].startswith("trl")]
    for r in rows:
        if r["engine"].startswith("tina") and trl_rows:
            t = trl_rows[0]
            print(
                f"\n{r['engine']} / {t['engine']}: time per step {r['median'] / t['median']:.2f}x (median), "
                f"{r['mean'] / t['mean']:.2f}x (mean); peak memory {r['peak_mb'] / t['peak_mb']:.2f}x "
                "(largest process; below 1 = tina better)"
            )
        if r["engine"].startswith("tina") and r.get("phases"):
            ph = r["phases"]
            per = {k: ph[k] / r["steps"] for k in ("generation", "reward", "logprob", "backward", "checkpoint")}
            print(
                f"{r['engine']} seconds per step by phase: "
                + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
                + f"; setup {ph['setup']:.2f} s once, whole command {r['wall_s']:.1f} s; "
                f"{100 * r.get('left_out', 0.0):.0f} % of the rows left out of the loss pass (no signal)"
            )
    if a.keep is not None:
        print(f"\nrecipe, data, run folder and logs kept in {folder}")


if __name__ == "__main__":
    main()
