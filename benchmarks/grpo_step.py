"""Time one GRPO step of tina's loop on the tiny model; compare with TRL's GRPOTrainer when `trl` is installed.

Same model (builtin:tiny-random, a 0.8M-parameter Qwen2), same prompts (the demo's arithmetic problems), same
rewards (tina's accuracy + format), same settings: 2 prompts x 4 generations x 32 new tokens, LoRA r=8 (alpha 16) on
all linear layers, lr 1e-4, beta 0, GRPO loss, fp32, no gradient checkpointing.  Each engine runs in its own
subprocess so peak memory (max RSS, or CUDA max allocated) is its own.

    python benchmarks/grpo_step.py                 # tina, plus TRL if installed
    python benchmarks/grpo_step.py --steps 30      # more steps for a steadier mean

Prints a table: mean seconds per step (first step excluded), median, first step, peak memory, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS, GENERATIONS, NEW_TOKENS, RANK = 2, 4, 32, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_tina(steps: int) -> dict:
    from tina.config import load_config
    from tina.train import train

    cfg = load_config("demo", [
        "model.name_or_path=builtin:tiny-random", "model.attn_implementation=sdpa",
        f"lora.r={RANK}", f"lora.alpha={2 * RANK}", f"rollout.num_generations={GENERATIONS}",
        f"rollout.max_new_tokens={NEW_TOKENS}", f"train.batch_size={PROMPTS * GENERATIONS}",
        f"train.max_steps={steps}", f"train.save_steps={steps}", "train.learning_rate=1e-4",
        "train.lr_scheduler=constant", "rewards.format.weight=1.0",
    ])
    with tempfile.TemporaryDirectory() as out:
        result = train(cfg, out, progress=False)
    times = [m["step_seconds"] for m in result.metrics]
    return {"engine": "tina", "times": times, "peak_mb": peak_memory_mb()}


def run_trl(steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tina.rewards import RewardBatch, RewardSpec, grade_batch, score
    from tina.tasks import arith
    from tina.tiny import resolve_builtin

    path = str(resolve_builtin("builtin:tiny-random"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    rows, _ = arith.split()
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["problem"]}], "answer": r["answer"]}
                              for r in rows])

    def make_reward(name):
        def reward(completions, answer, **_):
            texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
            batch = grade_batch(RewardBatch(texts, list(answer), [""] * len(texts), [0] * len(texts), 1))
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
            output_dir=out, max_steps=steps, per_device_train_batch_size=PROMPTS * GENERATIONS,
            gradient_accumulation_steps=1, num_generations=GENERATIONS, max_completion_length=NEW_TOKENS,
            temperature=1.0, learning_rate=1e-4, beta=0.0, loss_type="grpo", scale_rewards="group", use_vllm=False,
            use_cpu=not torch.cuda.is_available(), bf16=False, gradient_checkpointing=False, logging_steps=1,
            save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0, lr_scheduler_type="constant",
        )
        peft_config = LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=TARGETS,
                                 task_type="CAUSAL_LM")
        trainer = GRPOTrainer(model=model, reward_funcs=[make_reward("accuracy"), make_reward("format")],
                              args=args, train_dataset=data, processing_class=tok, peft_config=peft_config,
                              callbacks=[timer])
        trainer.train()
    return {"engine": "trl", "times": timer.times, "peak_mb": peak_memory_mb()}


def summarise(res: dict) -> dict:
    steady = res["times"][1:] or res["times"]
    return {"engine": res["engine"], "mean": statistics.mean(steady), "median": statistics.median(steady),
            "first": res["times"][0], "peak_mb": res["peak_mb"], "steps": len(res["times"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--engine", choices=["tina", "trl"], help=argparse.SUPPRESS)  # internal: one engine
    args = parser.parse_args()
    if args.engine:
        result = run_tina(args.steps) if args.engine == "tina" else run_trl(args.steps)
        print("RESULT " + json.dumps(result))
        return
    engines = ["tina"]
    try:
        import trl  # noqa: F401

        engines.append("trl")
    except ImportError:
        print("trl is not installed: timing tina only (pip install trl to compare)")
    rows = []
    for engine in engines:
        proc = subprocess.run([sys.executable, __file__, "--engine", engine, "--steps", str(args.steps)],
                              capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(f"{engine} failed:\n{proc.stderr[-3000:]}")
            continue
        rows.append(summarise(json.loads(line[len("RESULT "):])))
    print(f"\nOne GRPO step: {PROMPTS} prompts x {GENERATIONS} generations x {NEW_TOKENS} new tokens, LoRA r={RANK}, "
          f"tiny Qwen2 (builtin:tiny-random), {args.steps} steps, first step excluded from mean/median\n")
    print(f"| engine | s/step (mean) | s/step (median) | first step (s) | peak memory (MB) |")
    print(f"|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['mean']:.3f} | {r['median']:.3f} | {r['first']:.2f} | {r['peak_mb']:.0f} |")
    if len(rows) == 2:
        print(f"\ntina / trl time per step: {rows[0]['mean'] / rows[1]['mean']:.2f}x (mean), "
              f"{rows[0]['median'] / rows[1]['median']:.2f}x (median)  (below 1 = tina faster); "
              f"peak memory ratio {rows[0]['peak_mb'] / rows[1]['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
