"""Time one GRPO step of tina's loop and of TRL's GRPOTrainer on the same model, prompts, rewards and sizes.

Both run LoRA (same rank, alpha, targets) on the same base model, the same prompts (rendered once with the model's
chat template and given to both as text), the same rewards (tina's accuracy + boxed_number for the real model; the
accuracy + format rewards on the tiny model), the same sizes (prompts x generations x new tokens per step), the same
learning rate, beta 0, GRPO loss with group-scaled advantages, no gradient checkpointing.  Each engine runs in its
own subprocess, so peak memory (max RSS, or CUDA max allocated) is its own.

    python benchmarks/grpo_step.py                                            # tiny model: 2 x 4 x 32, r=8
    python benchmarks/grpo_step.py --model builtin:smollm2-135m-instruct      # real model: 8 x 4 x 48, r=8, fp32
    python benchmarks/grpo_step.py --model builtin:smollm2-135m-instruct --tina-dtype bfloat16

Prints a table: median and mean seconds per step (first step excluded), first step, peak memory, and the ratios.
tina is run as a user would run it: `tina train` on a recipe (its lean defaults: one generation call per step,
finished rows leave the decode batch, prompts run once per group in the loss pass, the loss in pieces of
--tina-tokens-per-pass tokens).  TRL runs as its GRPOTrainer is configured here (generation with transformers
`generate`, one micro-batch of all completions).
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

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTINGS = {  # model -> (prompts, generations, new tokens, task source, rewards)
    "builtin:tiny-random": (2, 4, 32, "builtin:arith", ("accuracy", "format")),
    "builtin:smollm2-135m-instruct": (8, 4, 48, "builtin:addition", ("accuracy", "boxed_number")),
}


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_tina(a) -> dict:
    from tina.config import load_config
    from tina.train import train

    prompts, gens, tokens, source, rewards = SETTINGS[a.model]
    overrides = [
        f"model.name_or_path={a.model}", f"model.dtype={a.tina_dtype}", "model.attn_implementation=sdpa",
        f"lora.r={a.rank}", f"lora.alpha={2 * a.rank}", f"data.source={source}", "data.template=tokenizer",
        f"rollout.num_generations={gens}", f"rollout.max_new_tokens={tokens}", "rollout.temperature=1.0",
        f"train.batch_size={prompts * gens}", "train.gradient_accumulation_steps=1",
        f"train.max_steps={a.steps}", f"train.save_steps={a.steps}", "train.learning_rate=1e-4",
        "train.lr_scheduler=constant", "train.probe_prompt=''", "algorithm.objective=grpo", "algorithm.beta=0.0",
        "algorithm.scale_rewards=group",
        "rollout.check_engine=false", f"train.max_tokens_per_pass={a.tina_tokens_per_pass or 'null'}",
        "train.device=cpu" if a.device == "cpu" else "train.device=auto",
    ]
    raw = {"rewards": {name: {"weight": 1.0} for name in rewards}}
    recipe = "demo" if a.model == "builtin:tiny-random" else "demo-smollm2"  # the task's own held-out split
    cfg = load_config({**load_config_dict(recipe), **raw}, overrides)
    with tempfile.TemporaryDirectory() as out:
        result = train(cfg, out, progress=False)
        ledger = json.load(open(os.path.join(out, "ledger.json")))
    return {"engine": f"tina ({a.tina_dtype})", "times": [m["step_seconds"] for m in result.metrics],
            "peak_mb": peak_memory_mb(), "phases": ledger["phases"], "steps": len(result.metrics)}


def load_config_dict(name: str) -> dict:
    from tina.config import load_config, to_dict

    d = to_dict(load_config(name))
    d.pop("rewards")
    return d


def run_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tina.models import resolve_model_path
    from tina.problems import BUILTIN_TASKS
    from tina.rewards import RewardBatch, RewardSpec, grade_batch, score

    prompts, gens, tokens, source, rewards = SETTINGS[a.model]
    path = resolve_model_path(a.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    rows, _ = BUILTIN_TASKS[source]().split()
    texts = [tok.apply_chat_template([{"role": "user", "content": r["problem"]}], tokenize=False,
                                     add_generation_prompt=True) for r in rows]
    data = Dataset.from_list([{"prompt": t, "answer": r["answer"]} for t, r in zip(texts, rows)])

    def make_reward(name):
        def reward(completions, answer, prompts=None, **_):
            texts_ = [c[0]["content"] if isinstance(c, list) else c for c in completions]
            batch = grade_batch(RewardBatch(texts_, list(answer), list(prompts or [""] * len(texts_)),
                                            [0] * len(texts_), 1))
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
            output_dir=out, max_steps=a.steps, per_device_train_batch_size=prompts * gens,
            gradient_accumulation_steps=1, num_generations=gens, max_completion_length=tokens,
            temperature=1.0, learning_rate=1e-4, beta=0.0, loss_type="grpo", scale_rewards="group", use_vllm=False,
            use_cpu=a.device == "cpu", bf16=False, gradient_checkpointing=False, logging_steps=1,
            save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0, lr_scheduler_type="constant",
        )
        peft_config = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules=TARGETS,
                                 task_type="CAUSAL_LM")
        trainer = GRPOTrainer(model=model, reward_funcs=[make_reward(r) for r in rewards], args=args,
                              train_dataset=data, processing_class=tok, peft_config=peft_config, callbacks=[timer])
        trainer.train()
    return {"engine": "trl (float32)", "times": timer.times, "peak_mb": peak_memory_mb(), "steps": len(timer.times)}


def summarise(res: dict) -> dict:
    steady = res["times"][1:] or res["times"]
    return {**res, "mean": statistics.mean(steady), "median": statistics.median(steady), "first": res["times"][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-random", choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=None, help="steps per engine (default 15 tiny, 4 real model)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--tina-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tina-tokens-per-pass", type=int, default=None,
                        help="tina's train.max_tokens_per_pass (default: 1024 for the real model, none for tiny)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--engines", default="tina,trl", help="comma-separated: tina, trl")
    parser.add_argument("--engine", choices=["tina", "trl"], help=argparse.SUPPRESS)  # internal: one engine
    a = parser.parse_args()
    a.steps = a.steps or (15 if a.model == "builtin:tiny-random" else 4)
    if a.tina_tokens_per_pass is None and a.model != "builtin:tiny-random":
        a.tina_tokens_per_pass = 1024
    if a.engine:
        result = run_tina(a) if a.engine == "tina" else run_trl(a)
        print("RESULT " + json.dumps(result))
        return
    engines = [e for e in a.engines.split(",") if e]
    if "trl" in engines:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("trl is not installed: timing tina only (pip install -e '.[bench]' to compare)")
            engines.remove("trl")
    rows = []
    for engine in engines:
        cmd = [sys.executable, __file__, "--engine", engine, "--model", a.model, "--steps", str(a.steps),
               "--rank", str(a.rank), "--tina-dtype", a.tina_dtype, "--device", a.device]
        if a.tina_tokens_per_pass:
            cmd += ["--tina-tokens-per-pass", str(a.tina_tokens_per_pass)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(f"{engine} failed:\n{proc.stderr[-3000:]}")
            continue
        rows.append(summarise(json.loads(line[len("RESULT "):])))
    prompts, gens, tokens, _, rewards = SETTINGS[a.model]
    print(f"\nOne GRPO step on {a.model}: {prompts} prompts x {gens} generations x {tokens} new tokens, LoRA r={a.rank}, "
          f"rewards {' + '.join(rewards)}, {a.steps} steps each (first excluded from mean/median), "
          f"{os.cpu_count()} CPU threads available, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}\n")
    print("| engine | s/step (median) | s/step (mean) | first step (s) | peak memory (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['median']:.2f} | {r['mean']:.2f} | {r['first']:.2f} | {r['peak_mb']:.0f} |")
    trl_rows = [r for r in rows if r["engine"].startswith("trl")]
    for r in rows:
        if r["engine"].startswith("tina") and trl_rows:
            t = trl_rows[0]
            print(f"\n{r['engine']} / {t['engine']}: time per step {r['median'] / t['median']:.2f}x (median), "
                  f"{r['mean'] / t['mean']:.2f}x (mean); peak memory {r['peak_mb'] / t['peak_mb']:.2f}x "
                  "(below 1 = tina better)")
        if r["engine"].startswith("tina") and r.get("phases"):
            ph = r["phases"]
            per = {k: ph[k] / r["steps"] for k in ("generation", "reward", "logprob", "backward")}
            print(f"{r['engine']} seconds per step by phase: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))


if __name__ == "__main__":
    main()
