"""`tina report RUN`: a markdown report and PNG plots of a training run, with the phase transition marked.

Reads what a run wrote (config.yaml, metrics.jsonl, ledger.json, probes.jsonl, checkpoint-*/, and RUN/eval/results.json
from ``tina eval --run RUN --output-dir RUN/eval`` when it exists) and writes ``RUN/report.md`` and ``RUN/plots/*.png``.

Phase transitions: :mod:`tina.transitions`; plots: :mod:`tina.plots`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tina.errors import TinaError
from tina.files import atomic_write_text, read_jsonl
from tina.plots import fmt_seconds, plot_accuracy, plot_cost, plot_metric
from tina.transitions import (
    FORMAT_REWARDS,
    Transition,
    detect_phase_transition,
    primary_transition,
    series,
    transitions,
)


# ------------------------------------------------------------------------------------------------------ loading
@dataclass
class Run:
    path: Path
    config: dict
    metrics: list[dict]
    ledger: dict | None
    probes: list[dict]
    checkpoints: list[int]
    eval: dict | None  # parsed by read_eval
    eval_note: str | None = None


def load_run(run_dir: str | Path, eval_path: str | Path | None = None) -> Run:
    import yaml

    from tina.checkpoint import list_checkpoints
    from tina.ledger import read_ledger

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise TinaError(f"{run_dir} is not a training run (no metrics.jsonl); give the --output-dir of `tina train`")
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if isinstance(m.get("step"), int)]
    if not metrics:
        raise TinaError(f"{run_dir}/metrics.jsonl has no steps yet; nothing to report")
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    ev, note = read_eval(Path(eval_path) if eval_path else run_dir / "eval" / "results.json")
    return Run(
        run_dir,
        config,
        metrics,
        read_ledger(run_dir),
        read_jsonl(run_dir / "probes.jsonl"),
        [s for s, _ in list_checkpoints(run_dir)],
        ev,
        note,
    )


def _step_of(label: str, step) -> int | None:
    if isinstance(step, (int, float)) and not isinstance(step, bool):
        return int(step)
    if label == "base":
        return 0
    m = re.search(r"checkpoint-(\d+)", str(label))
    return int(m.group(1)) if m else None


def _point(entry) -> tuple[float, float | None, float | None] | None:
    """(mean, low, high) from an entry like {"mean": .5, "ci95": [.4, .6]} (CI optional)."""
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return float(entry), None, None
    if not isinstance(entry, dict):
        return None
    mean = next((entry[k] for k in ("mean", "accuracy", "score") if isinstance(entry.get(k), (int, float))), None)
    if mean is None:
        return None
    ci = entry.get("ci95") or entry.get("ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        return float(mean), float(ci[0]), float(ci[1])
    return float(mean), None, None


def read_eval(path: Path) -> tuple[dict | None, str | None]:
    """Per-checkpoint accuracy curves from `tina eval` results, read defensively.

    Returns ({"curves": {name: [(step, mean, low, high, label), ...]}, "best": (step, label, how) | None}, note).
    Understands ``results[label][benchmark] = {"mean", "ci95"}`` with ``models[i] = {"label", "step"}``, the
    ``selection.scores`` list (validation accuracy per checkpoint, and ``selection.chosen``), and a plain list of
    ``{"step" | "checkpoint", "mean", "ci95"}`` rows.
    """
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"could not read {path}: {exc}"
    curves: dict[str, list] = {}
    best = None
    try:
        if isinstance(data, dict) and isinstance(data.get("results"), dict):
            steps = {
                m.get("label"): _step_of(m.get("label"), m.get("step"))
                for m in data.get("models", [])
                if isinstance(m, dict)
            }
            for label, benches in data["results"].items():
                step = steps.get(label, _step_of(label, None))
                if step is None or not isinstance(benches, dict):
                    continue
                for bench, entry in benches.items():
                    p = _point(entry)
                    if p is not None:
                        curves.setdefault(f"{bench} (test)", []).append((step, *p, label))
            avgs = data.get("averages") or {}
            if len(curves) > 1 and isinstance(avgs, dict):
                for label, v in avgs.items():
                    step = steps.get(label, _step_of(label, None))
                    if step is not None and isinstance(v, (int, float)):
                        curves.setdefault("average (test)", []).append((step, float(v), None, None, label))
            sel = data.get("selection")
            if isinstance(sel, dict):
                name = f"{sel.get('name', 'validation')} (validation)"
                for row in sel.get("scores", []):
                    step = _step_of(row.get("model", ""), row.get("step"))
                    p = _point(row)
                    if step is not None and p is not None:
                        curves.setdefault(name, []).append((step, *p, row.get("model", "")))
                if sel.get("chosen"):
                    best = (
                        _step_of(sel["chosen"], sel.get("chosen_step")),
                        sel["chosen"],
                        f"chosen on {sel.get('name', 'a validation set')} (held out)",
                    )
            if best is None:
                ranking = curves.get("average (test)") or next(iter(curves.values()), [])
                adapters = [r for r in ranking if r[4] != "base" and r[0] > 0]
                if adapters:
                    top = max(r[1] for r in adapters)
                    step, _, _, _, label = min((r for r in adapters if r[1] == top), key=lambda r: r[0])
                    best = (step, label, "highest test accuracy (chosen on the test set itself: optimistic)")
        elif isinstance(data, (list, dict)):
            rows = data if isinstance(data, list) else data.get("checkpoints", [])
            for row in rows:
                label = str(row.get("checkpoint", row.get("label", "")))
                step = _step_of(label, row.get("step"))
                p = _point(row)
                if step is not None and p is not None:
                    curves.setdefault("accuracy", []).append((step, *p, label))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return None, f"could not understand {path} ({type(exc).__name__}: {exc})"
    if not curves:
        return None, f"{path} has no per-checkpoint accuracy this report understands"
    for rows in curves.values():
        rows.sort(key=lambda r: r[0])
    return {"curves": curves, "best": best, "path": str(path)}, None


# -------------------------------------------------------------------------------------------------------- plots


# ------------------------------------------------------------------------------------------------------ report


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


def write_report(
    run_dir: str | Path, *, eval_path: str | Path | None = None, max_probe_chars: int = 2000
) -> tuple[Path, list[Path]]:
    """Write RUN/report.md and RUN/plots/*.png; return (report path, plot paths)."""
    run = load_run(run_dir, eval_path)
    plots_dir = run.path / "plots"
    plots_dir.mkdir(exist_ok=True)
    found = transitions(run.metrics)
    tkey, tr = primary_transition(found)
    twhat = {"completion_length": "completion length"}.get(
        tkey or "", (tkey or "").split("/", 1)[-1].replace("_", " ") + " reward" if tkey else ""
    )
    best = run.eval.get("best") if run.eval else None
    best_step = best[0] if best else None
    usd_at = {m["step"]: m.get("usd") or 0.0 for m in run.metrics}
    name = run.path.name
    rewards = {
        k: ("total reward" if k == "reward" else k.split("/", 1)[1] + " reward")
        for k in ["reward", *sorted(k for k in run.metrics[-1] if k.startswith("reward/"))]
    }
    specs = [
        ("reward.png", rewards, "Reward per step: total and per component", "mean reward per completion", None),
        (
            "format_reward.png",
            {"reward/format": "format reward"},
            "Format reward per step",
            "mean format reward (0-1)",
            "reward/format",
        ),
        (
            "completion_length.png",
            {"completion_length": "completion length"},
            "Completion length per step",
            "mean completion length (tokens)",
            "completion_length",
        ),
        (
            "kl.png",
            {"kl": "KL to the base model"},
            "KL divergence to the base model (k3 estimate)",
            "mean KL per token (nats)",
            None,
        ),
        ("clip_ratio.png", {"clip_ratio": "clipped tokens"}, "Clip ratio per step", "fraction of tokens clipped", None),
        (
            "entropy.png",
            {"entropy": "policy entropy"},
            "Policy entropy per step (estimated from sampled tokens)",
            "entropy (nats per token)",
            None,
        ),
        ("learning_rate.png", {"learning_rate": "learning rate"}, "Learning rate schedule", "learning rate", None),
    ]
    plots: list[Path] = []
    for fname, keys, title, ylabel, fit_key in specs:
        p = plot_metric(
            plots_dir / fname,
            run.metrics,
            keys,
            title=f"{title} — {name}",
            ylabel=ylabel,
            transition=tr,
            best_step=best_step,
            what=twhat,
            show_fit=found.get(fit_key) if fit_key else None,
            smooth=fname != "learning_rate.png",
        )
        if p:
            plots.append(p)
    for p in (
        plot_cost(plots_dir / "cost.png", run.metrics, run.ledger),
        plot_accuracy(plots_dir / "accuracy.png", run.eval, tr, usd_at),
    ):
        if p:
            plots.append(p)
    text = markdown(run, found, (tkey, tr), plots, usd_at, max_probe_chars)

    report = run.path / "report.md"
    atomic_write_text(report, text)
    return report, plots


def markdown(
    run: Run, found: dict[str, Transition], primary, plots: list[Path], usd_at: dict[int, float], max_probe_chars: int
) -> str:
    cfg, last = run.config, run.metrics[-1]
    tr_cfg = cfg.get("train", {})
    planned = tr_cfg.get("stop_step") or tr_cfg.get("max_steps")
    rewards = ", ".join(
        f"{k} x{v.get('weight', 1) if isinstance(v, dict) else v}" for k, v in (cfg.get("rewards") or {}).items()
    )
    lines = [f"# Run report: `{run.path.name}`", ""]
    lines += [
        f"- model: `{cfg.get('model', {}).get('name_or_path', '?')}` + LoRA r={cfg.get('lora', {}).get('r', '?')}, "
        f"alpha={cfg.get('lora', {}).get('alpha', '?')}",
        f"- data: `{cfg.get('data', {}).get('source', '?')}`; "
        f"objective `{cfg.get('algorithm', {}).get('objective', '?')}`"
        f"; rewards: {rewards or '?'}",
        f"- steps: {last['step']} of {planned or '?'} (learning-rate schedule over {tr_cfg.get('max_steps', '?')}); "
        f"checkpoints: {', '.join(map(str, run.checkpoints)) or 'none'}",
        f"- last step: reward {_num(last.get('reward'))}, completion length {_num(last.get('completion_length'), 1)}"
        f" tokens",
        "",
    ]
    lines += _cost_section(run)
    lines += _transition_section(run, found, primary)
    lines += _eval_section(run, primary[1], usd_at)
    lines += ["## Curves", ""]
    for p in plots:
        lines += [f"![{p.stem}](plots/{p.name})", ""]
    names = {p.name for p in plots}
    if "kl.png" not in names:
        lines += ["No KL curve: the run logged no KL (algorithm.beta = 0 trains without a reference model).", ""]
    lines += [
        "Entropy is estimated from the sampled tokens: the mean of -log pi(token) over completion tokens (at the "
        "rollout temperature), an unbiased estimate of the policy's per-token entropy that needs no full "
        "softmax.",
        "",
    ]
    lines += _probe_section(run, max_probe_chars)
    return "\n".join(lines)


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _cost_section(run: Run) -> list[str]:
    led = run.ledger
    if not led:
        return ["## Cost", "", "No ledger.json in this run.", ""]
    wall = led.get("wall_seconds", 0.0) or 0.0
    out = [
        "## Cost",
        "",
        f"{fmt_seconds(wall)} of wall time on {led.get('num_devices', 1)} x {led.get('device_name', '?')} = "
        f"**{led.get('device_hours', 0):.4f} device-hours**, **${led.get('usd', 0):.4f}** at "
        f"${led.get('usd_per_device_hour', 0):g}/device-hour"
        + (
            f" (training ${led['training']['usd']:.4f}, evaluation ${led['evaluation']['usd']:.4f})"
            if led.get("training") and led.get("evaluation")
            else ""
        )
        + ".",
        f"Tokens: {led.get('tokens_generated', 0):,} generated ({led.get('generation_tokens_per_second') or 0:,.0f}"
        f"/s), {led.get('tokens_trained', 0):,} trained ({led.get('train_tokens_per_second') or 0:,.0f}/s).",
        "",
        "| phase | wall time | share |",
        "|---|---|---|",
    ]
    for k, v in (led.get("phases") or {}).items():
        out.append(f"| {k} | {fmt_seconds(v)} | {100 * v / wall if wall else 0:.1f}% |")
    return out + [""]


def _transition_section(run: Run, found: dict[str, Transition], primary) -> list[str]:
    key, tr = primary
    out = ["## Phase transition", ""]
    units = {k: (k.split("/", 1)[1].replace("_", " ") + " reward", "") for k in FORMAT_REWARDS}
    units["completion_length"] = ("completion length", "tokens")
    for k, t in found.items():
        out.append(f"- {t.describe(*units[k])}")
    if not found:
        out.append("- no format reward or completion length in metrics.jsonl")
    x, y = series(run.metrics, "reward/accuracy")
    if x:
        out.append(f"- for comparison, {detect_phase_transition(x, y).describe('accuracy reward')}")
    out.append("")
    if tr is None:
        out.append("**No clear transition** in the format reward or the completion length.")
    else:
        out.append(f"**Phase transition at step {tr.step:g}** (from the {units[key][0]}, {tr.label}).")
    out += [
        "",
        "Method: centred moving average, then the two-segment least-squares line fit whose break minimises the "
        "squared error (at least max(3, n/10) points per side); strength = 1 - SSE(two lines)/SSE(one line); "
        "effect = largest gap between the fits in noise units; clear if strength >= 0.6 and effect >= 3 "
        "(weak: 0.4 and 2). See `tina.report.detect_phase_transition`.",
        "",
    ]
    return out


def _eval_section(run: Run, tr: Transition | None, usd_at: dict[int, float]) -> list[str]:
    out = ["## Accuracy per checkpoint", ""]
    if run.eval is None:
        out.append(
            run.eval_note
            or f"No evaluation results yet: run `tina eval --run {run.path} --output-dir "
            f"{run.path / 'eval'}` and then `tina report {run.path}` again."
        )
        return out + [""]
    led = run.ledger or {}
    ev = led.get("evaluation") or {}
    models = {r[4] for rows in run.eval["curves"].values() for r in rows}
    per_eval = (ev.get("usd", 0.0) / len(models)) if ev.get("runs") and models else None
    out += [
        f"From `{run.eval['path']}`."
        + (
            f" Evaluation cost so far ${ev.get('usd', 0):.4f} (about ${per_eval:.4f} per model evaluated)."
            if per_eval
            else ""
        ),
        "",
    ]
    for name, rows in run.eval["curves"].items():
        out += [
            f"**{name}**",
            "",
            "| model | step | accuracy % [95% CI] | training $ to reach | vs transition |",
            "|---|---|---|---|---|",
        ]
        for step, mean, low, high, label in rows:
            ci = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None else ""
            rel = "" if tr is None or step == 0 else _relative(step, tr.step)
            out.append(f"| {label} | {step} | {100 * mean:.1f}{ci} | ${usd_at.get(step, 0.0):.4f} | {rel} |")
        out.append("")
    best = run.eval.get("best")
    if best and best[0] is not None:
        where = (
            f"{_relative(best[0], tr.step)} the phase transition (step {tr.step:g})"
            if tr
            else "(no clear phase transition to compare with)"
        )
        out.append(
            f"**Best checkpoint: {best[1]}** (step {best[0]}, {best[2]}): {where}; training to it cost "
            f"${usd_at.get(best[0], 0.0):.4f}."
        )
        out.append("")
    return out


def _relative(step: float, transition_step: float) -> str:
    d = step - transition_step
    if d == 0:
        return "at"
    return f"{abs(d):g} steps {'before' if d < 0 else 'after'}"


def _probe_section(run: Run, max_chars: int) -> list[str]:
    if not run.probes:
        return []
    prompt = run.probes[-1].get("prompt", "")
    out = ["## Probe completions (greedy, at each checkpoint)", "", "Prompt:", "", _fence(prompt), ""]
    for p in run.probes:
        text = p.get("completion", "")
        cut = text if len(text) <= max_chars else text[:max_chars] + f"\n[... {len(text) - max_chars} more characters]"
        note = f"{p.get('tokens', '?')} tokens" + (", hit the token limit" if p.get("truncated") else "")
        out += [f"### Step {p.get('step')} ({note})", "", _fence(cut), ""]
    return out


# ---------------------------------------------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write RUN/report.md and RUN/plots/*.png for a training run",
        description="Summarise a training run: cost ledger, reward/format/length/KL/clip/entropy/LR curves, the phase "
        "transition (format reward and completion length), accuracy per checkpoint from RUN/eval/ "
        "(tina eval --run RUN --output-dir RUN/eval) and the probe completions.",
    )
    p.add_argument("run", type=Path, help="the run directory (tina train --output-dir)")
    p.add_argument(
        "--eval",
        dest="eval_path",
        type=Path,
        default=None,
        help="a tina eval results.json (default: RUN/eval/results.json)",
    )
    p.set_defaults(handler=run)


def run(args) -> int:
    report, plots = write_report(args.run, eval_path=args.eval_path)
    print(f"wrote {report} and {len(plots)} plots in {report.parent / 'plots'}")
    return 0
