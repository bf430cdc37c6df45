"""`tina report RUN`: a markdown report and PNG plots of a training run, with the phase transition marked.

Reads what a run wrote (config.yaml, metrics.jsonl, ledger.json, probes.jsonl, checkpoint-*/, and RUN/eval/results.json
from ``tina eval --run RUN --output-dir RUN/eval`` when it exists) and writes ``RUN/report.md`` and ``RUN/plots/*.png``.

Phase transition (Tina §5: format reward and completion length turn sharply while accuracy drifts smoothly; the best
checkpoint tends to lie just before or around the turn) is found with :func:`detect_phase_transition`:

1. smooth the series with a centred moving average of ``w = n // 15`` points (rounded up to odd; none for short runs);
2. for every break ``b`` leaving at least ``m = max(3, n // 10)`` points on each side, fit one straight line to the
   points before ``b`` and another to those from ``b`` on (least squares, on the smoothed series), and keep the ``b``
   with the smallest total squared error (SSE);
3. ``strength = 1 - SSE(two lines) / SSE(one line)``: the share of the smoothed series' misfit to a straight line
   that the break explains (0 = no better than one line, 1 = two lines fit perfectly);
   ``effect = max |two-line fit - one-line fit| / noise``, with ``noise`` the step-to-step noise of the smoothed series
   (robust: 1.4826 * MAD of first differences / sqrt(2), divided by sqrt(w));
4. the transition is **clear** when strength >= 0.6 and effect >= 3, **weak** when strength >= 0.4 and effect >= 2,
   otherwise there is **no clear transition** (a straight trend or flat noise gives a small strength).

On synthetic data (see tests) a kink or jump is found within a few steps; flat noise and straight trends are "none".
This is a heuristic for reading curves, not a hypothesis test.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tina.errors import TinaError
from tina.files import atomic_write_text, read_jsonl

CLEAR = (0.6, 3.0)  # (strength, effect) thresholds
WEAK = (0.4, 2.0)


# ------------------------------------------------------------------------------------------------ change point
@dataclass
class Transition:
    """Where a series turns: the first step of the second segment, and how convincing the turn is."""

    step: float | None
    strength: float  # 1 - SSE(two lines) / SSE(one line), smoothed series
    effect: float  # largest gap between the two fits, in units of the smoothed series' noise
    label: str  # "clear" | "weak" | "none"
    slope_before: float = 0.0
    slope_after: float = 0.0
    window: int = 1
    fit: tuple | None = None  # (steps, two-line fit values) for plotting
    note: str = ""  # why there is no verdict (too few steps, constant series)

    @property
    def found(self) -> bool:
        return self.label != "none"

    def describe(self, what: str, unit: str = "") -> str:
        if self.note:
            return f"{what}: no transition to look for ({self.note})"
        if not self.found:
            return (
                f"{what}: no clear transition (strength {self.strength:.2f}, effect {self.effect:.1f}; "
                f"a straight line fits about as well)"
            )
        per = f" {unit}/step" if unit else "/step"
        return (
            f"{what}: {self.label} transition at step {self.step:g} (strength {self.strength:.2f}, effect "
            f"{self.effect:.1f}); slope {self.slope_before:+.3g}{per} before, {self.slope_after:+.3g}{per} after"
        )


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at the ends (no padding bias).

    >>> moving_average(np.array([0., 0., 3., 0., 0.]), 3).tolist()
    [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    if window <= 1:
        return y.astype(float).copy()
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(y, dtype=float)])
    idx = np.arange(len(y))
    lo, hi = np.maximum(0, idx - half), np.minimum(len(y), idx + half + 1)
    return (csum[hi] - csum[lo]) / (hi - lo)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(slope, intercept, SSE) of the least-squares line."""
    a = np.vstack([x, np.ones_like(x)]).T
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    r = y - a @ coef
    return float(coef[0]), float(coef[1]), float(r @ r)


def detect_phase_transition(steps, values, *, window: int | None = None, min_segment: int | None = None) -> Transition:
    """Two-segment piecewise-linear change point of a series (see the module docstring for the method).

    >>> x = np.arange(1, 101); y = np.where(x < 40, 0.1 + 0.02 * x, 0.88)
    >>> t = detect_phase_transition(x, y); (t.label, abs(t.step - 40) <= 3)
    ('clear', True)
    >>> detect_phase_transition(x, 0.5 + 0.001 * x).label
    'none'
    """
    pts = [
        (float(s), float(v)) for s, v in zip(steps, values, strict=True) if v is not None and math.isfinite(float(v))
    ]
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    n = len(y)
    m = min_segment or max(3, n // 10)
    w = window or max(1, (n // 15) | 1)
    if n < 2 * m + 1:
        return Transition(None, 0.0, 0.0, "none", window=w, note=f"{n} steps; at least {2 * m + 1} are needed")
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        return Transition(None, 0.0, 0.0, "none", window=w, note="the series is constant")
    s = moving_average(y, w)
    slope1, icpt1, sse1 = _line(x, s)
    best = None
    for b in range(m, n - m + 1):
        left, right = _line(x[:b], s[:b]), _line(x[b:], s[b:])
        total = left[2] + right[2]
        if best is None or total < best[0]:
            best = (total, b, left, right)
    sse2, b, left, right = best
    strength = max(0.0, 1.0 - sse2 / sse1) if sse1 > 1e-18 else 0.0
    fit2 = np.concatenate([left[0] * x[:b] + left[1], right[0] * x[b:] + right[1]])
    gap = float(np.max(np.abs(fit2 - (slope1 * x + icpt1))))
    d = np.diff(y)
    noise = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2) / math.sqrt(w)
    effect = gap / noise if noise > 0 else (math.inf if gap > 0 else 0.0)
    if strength >= CLEAR[0] and effect >= CLEAR[1]:
        label = "clear"
    elif strength >= WEAK[0] and effect >= WEAK[1]:
        label = "weak"
    else:
        label = "none"
    return Transition(
        float(x[b]) if label != "none" else None, strength, effect, label, left[0], right[0], w, (x, fit2)
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
def _series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [
        (m["step"], m[key])
        for m in metrics
        if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool) and math.isfinite(m[key])
    ]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _figure(title: str, xlabel: str, ylabel: str, size=(8, 4.5)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=110)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _legend(ax) -> None:
    """Legend below the axes, so it never hides a curve."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            fontsize=8,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            ncol=2 if len(handles) > 2 else len(handles),
            frameon=False,
        )


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _mark(ax, transition: Transition | None, best_step: int | None, *, what: str = "") -> None:
    if transition is not None and transition.found:
        ax.axvline(
            transition.step,
            color="tab:red",
            linestyle="--",
            linewidth=1.2,
            label=f"phase transition{f' ({what})' if what else ''}: step {transition.step:g} "
            f"({transition.label}, strength {transition.strength:.2f})",
        )
    if best_step is not None:
        ax.axvline(
            best_step, color="tab:green", linestyle=":", linewidth=1.5, label=f"best checkpoint: step {best_step}"
        )


def plot_metric(
    path: Path,
    metrics: list[dict],
    keys: dict[str, str],
    *,
    title: str,
    ylabel: str,
    transition: Transition | None = None,
    best_step: int | None = None,
    what: str = "",
    show_fit: Transition | None = None,
    smooth: bool = True,
) -> Path | None:
    """One figure: each key raw (thin) and smoothed (thick) per step, transition and best checkpoint marked."""
    series = {label: _series(metrics, key) for key, label in keys.items()}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    fig, ax = _figure(title, "optimizer step", ylabel)
    n = max(len(v[0]) for v in series.values())
    w = max(1, (n // 15) | 1) if smooth else 1
    for i, (label, (x, y)) in enumerate(series.items()):
        color = f"C{i}"
        if w > 1:
            ax.plot(x, y, color=color, alpha=0.3, linewidth=0.8)
            ax.plot(x, moving_average(np.array(y), w), color=color, linewidth=1.8, label=f"{label} ({w}-step mean)")
        else:
            ax.plot(x, y, color=color, linewidth=1.5, marker="." if n < 40 else None, label=label)
    if show_fit is not None and show_fit.found and show_fit.fit is not None:
        fx, fy = show_fit.fit
        b = int(np.searchsorted(fx, show_fit.step))
        ax.plot(fx[:b], fy[:b], color="black", linewidth=1, alpha=0.7, label="two-segment fit")
        ax.plot(fx[b:], fy[b:], color="black", linewidth=1, alpha=0.7)
    _mark(ax, transition, best_step, what=what)
    _legend(ax)
    return _save(fig, path)


def plot_cost(path: Path, metrics: list[dict], ledger: dict | None) -> Path | None:
    x, usd = _series(metrics, "usd")
    _, hours = _series(metrics, "device_hours")
    priced = bool(usd) and usd[-1] > 0
    y, ylabel = (usd, "cumulative training cost (USD)") if priced else (hours, "cumulative device-hours")
    if not y:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    ax.plot(x, y, color="tab:purple", linewidth=1.8)
    led = ledger or {}
    ax.set_title(
        f"Training cost over the run ({led.get('num_devices', 1)} x {led.get('device_name', 'device')}"
        + (f" at ${led.get('usd_per_device_hour', 0):g}/device-hour)" if priced else ")")
    )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ledger and ledger.get("phases"):
        phases = {k: v for k, v in ledger["phases"].items() if v > 0}
        total = sum(phases.values()) or 1.0
        names = list(phases)[::-1]
        bx.barh(names, [phases[k] / 60 for k in names], color="tab:gray")
        for i, k in enumerate(names):
            bx.text(phases[k] / 60, i, f" {100 * phases[k] / total:.0f}%", va="center", fontsize=8)
        bx.set_xlabel("wall time (minutes)")
        bx.set_title(f"Where the time went ({_fmt_seconds(total)} in all)")
        bx.grid(alpha=0.3, axis="x")
    else:
        bx.axis("off")
    return _save(fig, path)


def plot_accuracy(path: Path, run: Run, transition: Transition | None, usd_at: dict[int, float]) -> Path | None:
    if not run.eval:
        return None
    priced = any(usd_at.values())
    title = "Accuracy per checkpoint (95% CI bars)" + ("; training $ to reach each along the bottom" if priced else "")
    fig, ax = _figure(title, "checkpoint step (0 = base model)", "accuracy (%)")
    for i, (name, rows) in enumerate(run.eval["curves"].items()):
        xs = [r[0] for r in rows]
        ys = [100 * r[1] for r in rows]
        err = None
        if all(r[2] is not None for r in rows):
            err = [[100 * (r[1] - r[2]) for r in rows], [100 * (r[3] - r[1]) for r in rows]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, linewidth=1.2, label=name, color=f"C{i}")
    steps = sorted({r[0] for rows in run.eval["curves"].values() for r in rows})
    for step in steps:
        if usd_at.get(step):
            ax.text(
                step,
                0.02,
                f"${usd_at[step]:.2f}",
                transform=ax.get_xaxis_transform(),
                ha="center",
                fontsize=7,
                color="tab:purple",
            )
    best = run.eval.get("best")
    _mark(ax, transition, best[0] if best else None)
    _legend(ax)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------------ report
def _fmt_seconds(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s")


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


FORMAT_REWARDS = ("reward/format", "reward/boxed_number", "reward/tag_count")  # the "format" of the paper's story


def transitions(metrics: list[dict]) -> dict[str, Transition]:
    """Change points of the format reward(s) the run has and of the completion length."""
    out = {}
    for key in (*FORMAT_REWARDS, "completion_length"):
        x, y = _series(metrics, key)
        if x:
            out[key] = detect_phase_transition(x, y)
    return out


def primary_transition(found: dict[str, Transition]) -> tuple[str | None, Transition | None]:
    """The strongest clear (else weak) transition among the format reward(s) and completion length."""
    ranked = sorted(((t.label == "clear", t.strength, k) for k, t in found.items() if t.found), reverse=True)
    if not ranked:
        return None, None
    key = ranked[0][2]
    return key, found[key]


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
        plot_accuracy(plots_dir / "accuracy.png", run, tr, usd_at),
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
        f"{_fmt_seconds(wall)} of wall time on {led.get('num_devices', 1)} x {led.get('device_name', '?')} = "
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
        out.append(f"| {k} | {_fmt_seconds(v)} | {100 * v / wall if wall else 0:.1f}% |")
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
    x, y = _series(run.metrics, "reward/accuracy")
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
    p.set_defaults(command_module=__name__)


def run(args) -> int:
    report, plots = write_report(args.run, eval_path=args.eval_path)
    print(f"wrote {report} and {len(plots)} plots in {report.parent / 'plots'}")
    return 0
