"""The PNG plots of `tina report`: a metric per step with the phase transition marked, cost, accuracy by checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tina.transitions import Transition, moving_average, series


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
    curves = {label: series(metrics, key) for key, label in keys.items()}
    curves = {k: v for k, v in curves.items() if v[0]}
    if not curves:
        return None
    fig, ax = _figure(title, "optimizer step", ylabel)
    n = max(len(v[0]) for v in curves.values())
    w = max(1, (n // 15) | 1) if smooth else 1
    for i, (label, (x, y)) in enumerate(curves.items()):
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
    x, usd = series(metrics, "usd")
    _, hours = series(metrics, "device_hours")
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
        bx.set_title(f"Where the time went ({fmt_seconds(total)} in all)")
        bx.grid(alpha=0.3, axis="x")
    else:
        bx.axis("off")
    return _save(fig, path)


def plot_accuracy(
    path: Path, evals: dict | None, transition: Transition | None, usd_at: dict[int, float]
) -> Path | None:
    """Accuracy by checkpoint from ``tina eval`` results (``Run.eval``), the transition and the cost marked."""
    if not evals:
        return None
    priced = any(usd_at.values())
    title = "Accuracy per checkpoint (95% CI bars)" + ("; training $ to reach each along the bottom" if priced else "")
    fig, ax = _figure(title, "checkpoint step (0 = base model)", "accuracy (%)")
    for i, (name, rows) in enumerate(evals["curves"].items()):
        xs = [r[0] for r in rows]
        ys = [100 * r[1] for r in rows]
        err = None
        if all(r[2] is not None for r in rows):
            err = [[100 * (r[1] - r[2]) for r in rows], [100 * (r[3] - r[1]) for r in rows]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, linewidth=1.2, label=name, color=f"C{i}")
    steps = sorted({r[0] for rows in evals["curves"].values() for r in rows})
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
    best = evals.get("best")
    _mark(ax, transition, best[0] if best else None)
    _legend(ax)
    return _save(fig, path)


def fmt_seconds(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s")
