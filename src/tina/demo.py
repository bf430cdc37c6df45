"""`tina demo`: watch LoRA-GRPO instil a skill in a tiny model, on a laptop CPU, offline, in a few minutes.

1. Build (first run only, then cached) the builtin tiny Qwen2 model, warm-started on *noisy* worked solutions of
   ``a+b-c``: it knows the two-step procedure but often samples a wrong intermediate result.
2. Evaluate it on held-out problems that training never sees: accuracy of sampled completions (T=1, several per
   problem) and of greedy ones, graded by the project's grader.
3. Train only a LoRA adapter with GRPO (the bundled ``demo`` recipe: accuracy + format rewards).
4. Evaluate again, report the gain with a paired bootstrap 95 % interval over problems, plot the reward curve, and
   check that the base weights are bit-identical (only LoRA changed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tina import config as cfgmod
from tina.errors import TinaError


def held_out_prompts(tokenizer, cfg) -> tuple[list[str], list[str]]:
    from tina.prompts import render_prompt
    from tina.tasks import arith

    _, heldout = arith.split(n_eval=cfg.eval.num_problems, seed=0)
    prompts = [render_prompt(tokenizer, r["problem"], template=cfg.data.template) for r in heldout]
    return prompts, [r["answer"] for r in heldout]


def evaluate_arith(model, tokenizer, cfg, *, seed: int) -> dict:
    """Sampled (cfg.eval.samples per problem at cfg.eval.temperature) and greedy accuracy on the held-out split."""
    from tina.eval.generate import generate_and_grade
    from tina.rollout import HFEngine, Sampling

    prompts, golds = held_out_prompts(tokenizer, cfg)
    backend = HFEngine(model, tokenizer)
    e = cfg.eval
    sampled = generate_and_grade(  # seeded: each problem's samples are the same whatever the batching
        backend, prompts, golds,
        Sampling(n=e.samples, max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=seed),
        batch_problems=max(1, e.batch_size // e.samples),
    )
    greedy = generate_and_grade(
        backend, prompts, golds, Sampling(n=1, max_new_tokens=e.max_new_tokens, greedy=True),
        batch_problems=e.batch_size,
    )
    return {"sampled": sampled.correct, "greedy": greedy.correct, "example": sampled.completions[0][0]}


def plot_rewards(metrics: list[dict], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, [m["reward"] for m in metrics], label="total reward", color="tab:blue", linewidth=1.5)
    if metrics and metrics[0].get("reward/accuracy") is not None:
        ax.plot(steps, [m["reward/accuracy"] for m in metrics], label="accuracy reward", color="tab:green",
                linewidth=1, alpha=0.8)
    if metrics and metrics[0].get("reward/format") is not None:
        ax.plot(steps, [m["reward/format"] for m in metrics], label="format reward", color="tab:orange",
                linewidth=1, alpha=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward per completion")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(output_dir: str | Path, *, seed: int = 0, overrides: list[str] | None = None,
             progress: bool = True, echo=print) -> dict:
    from tina.eval.stats import bootstrap_ci, mean_at_n, paired_bootstrap_ci
    from tina.models import load_model_and_tokenizer, resolve_model_path
    from tina.train import train

    start = time.perf_counter()
    out = Path(output_dir)
    run_dir = out / "run"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise TinaError(f"{out} already holds a demo run; choose another --output-dir or delete it")
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfgmod.load_config("demo", [f"train.seed={seed}", *(overrides or [])])

    echo("tina demo — LoRA-GRPO on a tiny Qwen2 model, CPU only, offline")
    echo(f"  task: a+b-c with single digits, two written steps, answer in \\boxed{{}}; "
         f"{cfg.eval.num_problems} held-out problems never trained on")
    from tina.tiny import _warmstart_key, cache_dir

    cached = (cache_dir() / "builtin" / f"tiny-arith-{_warmstart_key()}" / "model.safetensors").is_file()
    if not cached:
        echo("  building the base model: random init + a short noisy warm-start (first run only, ~1-2 min; cached)")
    t0 = time.perf_counter()
    resolve_model_path(cfg.model.name_or_path)
    build_seconds = time.perf_counter() - t0

    echo("  evaluating the base model ...")
    base, tokenizer = load_model_and_tokenizer(cfg.model.name_or_path, dtype=cfg.model.dtype,
                                               attn_implementation=cfg.model.attn_implementation, device="cpu")
    t0 = time.perf_counter()
    before = evaluate_arith(base, tokenizer, cfg, seed=seed + 1)
    eval_seconds = time.perf_counter() - t0
    del base

    echo(f"  training a LoRA adapter with GRPO for {cfg.last_step} steps ({cfg.prompts_per_step} prompts x "
         f"{cfg.rollout.num_generations} completions per step) ...")
    result = train(cfg, run_dir, progress=progress, keep_model=True)
    if result.stopped_early:
        raise TinaError(f"demo interrupted; the partial run is in {run_dir}")

    echo("  evaluating the tuned model ...")
    t0 = time.perf_counter()
    after = evaluate_arith(result.model, result.tokenizer, cfg, seed=seed + 1)
    eval_seconds += time.perf_counter() - t0

    gain, low, high = paired_bootstrap_ci(before["sampled"], after["sampled"], seed=seed)
    g_gain, g_low, g_high = paired_bootstrap_ci(before["greedy"], after["greedy"], seed=seed)
    plot_path = out / "reward_curve.png"
    plot_rewards(result.metrics, plot_path, title=f"tina demo: GRPO reward per step (seed {seed})")
    summary = {
        "base_accuracy": mean_at_n(before["sampled"]),
        "tuned_accuracy": mean_at_n(after["sampled"]),
        "gain": gain,
        "gain_ci95": [low, high],
        "base_accuracy_ci95": list(bootstrap_ci(before["sampled"], seed=seed)),
        "tuned_accuracy_ci95": list(bootstrap_ci(after["sampled"], seed=seed)),
        "base_greedy_accuracy": mean_at_n(before["greedy"]),
        "tuned_greedy_accuracy": mean_at_n(after["greedy"]),
        "greedy_gain": g_gain,
        "greedy_gain_ci95": [g_low, g_high],
        "n_eval": int(before["sampled"].shape[0]),
        "samples_per_problem": int(before["sampled"].shape[1]),
        "eval_temperature": cfg.eval.temperature,
        "train_steps": result.steps,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
        "seconds_base_model_build": round(build_seconds, 1),
        "seconds_training": result.metrics[-1]["seconds"] if result.metrics else 0.0,
        "seconds_evaluation": round(eval_seconds, 1),
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "base_weights_unchanged": result.base_digest_before == result.base_digest_after,
        "base_weights_sha256": result.base_digest_after,
        "run_dir": str(run_dir),
        "reward_plot": str(plot_path),
        "example_before": before["example"],
        "example_after": after["example"],
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    echo(format_summary(summary, out))
    return summary


def format_summary(s: dict, out: Path) -> str:
    def pct(x):
        return f"{100 * x:5.1f}%"

    lines = [
        "",
        f"Held-out accuracy on {s['n_eval']} problems never seen in training "
        f"({s['samples_per_problem']} samples each at T={s['eval_temperature']:g}, and greedy):",
        "",
        "  | model                   | sampled | greedy |",
        "  |-------------------------|---------|--------|",
        f"  | base (warm-started)     | {pct(s['base_accuracy'])}  | {pct(s['base_greedy_accuracy'])} |",
        f"  | + LoRA-GRPO ({s['train_steps']} steps) | {pct(s['tuned_accuracy'])}  | {pct(s['tuned_greedy_accuracy'])} |",
        "",
        f"  gain (sampled): {100 * s['gain']:+.1f} points, 95% CI [{100 * s['gain_ci95'][0]:+.1f}, "
        f"{100 * s['gain_ci95'][1]:+.1f}] (paired bootstrap over problems)",
        f"  gain (greedy):  {100 * s['greedy_gain']:+.1f} points, 95% CI [{100 * s['greedy_gain_ci95'][0]:+.1f}, "
        f"{100 * s['greedy_gain_ci95'][1]:+.1f}]",
        f"  trained {s['trainable_params']:,} LoRA parameters of {s['total_params']:,}; base weights unchanged: "
        f"{'yes' if s['base_weights_unchanged'] else 'NO'}",
        f"  wall time: {s['seconds']:.0f} s (training {s['seconds_training']:.0f} s, evaluation "
        f"{s['seconds_evaluation']:.0f} s, base model build {s['seconds_base_model_build']:.0f} s)",
        "",
        f"  summary:      {out / 'demo_summary.json'}",
        f"  reward curve: {s['reward_plot']}",
        f"  run:          {s['run_dir']}  (config.yaml, metrics.jsonl, ledger.json, checkpoint-*/)",
        "",
        "  a completion after training:",
        *("    " + line for line in s["example_after"].splitlines()),
    ]
    return "\n".join(lines)
