"""Write what `tina eval` measured: results.json, results.md and (for a run) accuracy_by_checkpoint.png."""

from __future__ import annotations

import json
import math
from pathlib import Path


def clean(value):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python numbers, tuples -> lists.

    >>> clean({"a": float("nan"), "b": (1, 2.5)})
    {'a': None, 'b': [1, 2.5]}
    """
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_all(out: Path, results: dict, *, plot: bool) -> None:
    from tina.files import atomic_write_text

    out = Path(out)
    atomic_write_text(out / "results.json", json.dumps(clean(results), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "results.md", markdown(results))
    if plot:
        plot_checkpoints(results, out / "accuracy_by_checkpoint.png")


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _cell(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{_pct(entry['mean'])} [{_pct(low)}, {_pct(high)}]"


def _diff(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{100 * entry['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def markdown_table(results: dict) -> str:
    """The accuracy table: one row per model, mean@n in % with its 95% CI per benchmark, and the average.

    >>> r = {"benchmarks": ["b"], "models": [{"label": "base"}], "averages": {"base": 0.5},
    ...      "results": {"base": {"b": {"mean": 0.5, "ci95": [0.25, 0.75]}}}}
    >>> print(markdown_table(r))
    | model | b | avg |
    |---|---|---|
    | base | 50.0 [25.0, 75.0] | 50.0 |
    """
    benches = results["benchmarks"]
    lines = ["| model | " + " | ".join(benches) + " | avg |", "|---" * (len(benches) + 2) + "|"]
    for m in results["models"]:
        row = results["results"][m["label"]]
        cells = [_cell(row[b]) for b in benches]
        lines.append(f"| {m['label']} | " + " | ".join(cells) + f" | {_pct(results['averages'][m['label']])} |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    benches = results["benchmarks"]
    labels = [m["label"] for m in results["models"]]
    first = results["results"][labels[0]][benches[0]]
    p = first["protocol"]
    s = p["sampling"]
    if p.get("base_weights_sha256"):
        identity = f"base weights sha256 `{p['base_weights_sha256'][:16]}…`"
    elif p.get("base_files_sha256"):  # vllm: the engine's own copy of the base, identified by its files
        identity = f"base files sha256 `{p['base_files_sha256'][:16]}…`"
    else:
        identity = "base digest unknown"
    out = [
        "# tina eval",
        "",
        f"Model `{p['model']}` ({identity}, {p['dtype']}, {p['device']}; engine {p.get('engine', '?')}); "
        f"{s['samples']} sample(s) x seeds {s['seeds']} per problem at T={s['temperature']:g}, top-p {s['top_p']:g}, "
        f"max {s['max_new_tokens']} new tokens; chat template `{p['chat_template']}`; grader tina.grading "
        f"(source sha256 `{p['grader']['source_sha256'][:12]}…`, timeout {p['grader']['timeout_seconds']:g} s).",
        "",
        "## Accuracy: mean@n in %, [95% bootstrap CI over problems]",
        "",
        markdown_table(results),
        "",
    ]
    compared = [lab for lab in labels if "vs_base" in results["results"][lab][benches[0]]]
    if compared:
        out += [
            "## Paired difference vs base, in points [95% paired bootstrap CI]",
            "",
            "| model | " + " | ".join(benches) + " |",
            "|---" * (len(benches) + 1) + "|",
        ]
        for lab in compared:
            out.append(f"| {lab} | " + " | ".join(_diff(results["results"][lab][b]["vs_base"]) for b in benches) + " |")
        out.append("")
    ks = sorted({int(k) for lab in labels for b in benches for k in results["results"][lab][b]["pass_at_k"]})
    out += [
        "## pass@k (unbiased, %) and bookkeeping",
        "",
        "| model | benchmark | problems | samples/problem | "
        + " | ".join(f"pass@{k}" for k in ks)
        + " | ungradable | truncated | mean tokens |",
        "|---" * (len(ks) + 7) + "|",
    ]
    for lab in labels:
        for b in benches:
            e = results["results"][lab][b]
            pk = " | ".join(_pct(e["pass_at_k"].get(str(k))) if str(k) in e["pass_at_k"] else "" for k in ks)
            out.append(
                f"| {lab} | {b} | {e['n_problems']} | {e['n_samples']} | {pk} | {e['n_ungradable']} | "
                f"{_pct(e['truncated_fraction'])}% | {e['mean_completion_tokens']:.0f} |"
            )
    out.append("")
    sel = results.get("selection")
    if sel:
        out += [
            f"## Checkpoint selection: **{sel['chosen']}**",
            "",
            f"Chosen on `{sel['name']}` ({sel['source']}, {sel['n_problems']} problems, prompt: {sel['prompt']}), "
            f"by {sel['metric']}; ties go to the earliest checkpoint. Only the chosen checkpoint (and the base) "
            f"were evaluated on the test benchmarks."
            + (
                " **All checkpoints tied on the validation set: the choice carries no information.**"
                if sel.get("all_tied")
                else ""
            ),
            "",
            "| model | step | validation mean@n [95% CI] |",
            "|---|---|---|",
        ]
        for row in sel["scores"]:
            mark = " ←" if row["model"] == sel["chosen"] else ""
            out.append(f"| {row['model']}{mark} | {row['step'] if row['step'] is not None else ''} | {_cell(row)} |")
        out.append("")
    out += ["## Protocol", ""]
    for lab in labels:
        e = results["results"][lab][benches[0]]["protocol"]
        if e["adapter"]:
            out.append(f"- `{lab}`: adapter `{e['adapter']}` (sha256 `{e['adapter_sha256'][:16]}…`)")
    for b in benches:
        bp = results["results"][labels[0]][b]["protocol"]["benchmark"]
        digest = bp["data_sha256"] or bp["rows_sha256"]
        limit = f", first {bp['limit']} of {bp['n_rows']}" if bp["limit"] is not None else f", {bp['n_rows']} rows"
        out.append(f"- {b}: {bp['source']} (sha256 `{digest[:16]}…`{limit}), grader task {bp['grader_task']}")
    versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
    out += [f"- versions: {versions}", "- full protocol (prompt templates, example prompts): results.json", ""]
    return "\n".join(out)


def plot_checkpoints(results: dict, path: Path) -> None:
    """Accuracy (with 95% CI bars) per checkpoint step, one line per benchmark (the base at step 0).

    With checkpoint selection, the validation curve over all checkpoints is drawn too and the chosen one marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def step_of(m: dict) -> int:
        return 0 if m["adapter"] is None else (m["step"] if m["step"] is not None else 0)

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for b in results["benchmarks"]:
        pts = sorted((step_of(m), results["results"][m["label"]][b]) for m in results["models"])
        xs = [x for x, _ in pts]
        ys = [100 * e["mean"] for _, e in pts]
        err = [[100 * (e["mean"] - e["ci95"][0]) for _, e in pts], [100 * (e["ci95"][1] - e["mean"]) for _, e in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=b, linewidth=1.2)
    sel = results.get("selection")
    if sel:
        rows = sorted(((r["step"] or 0) if r["model"] != "base" else 0, r) for r in sel["scores"])
        ax.errorbar(
            [x for x, _ in rows],
            [100 * r["mean"] for _, r in rows],
            yerr=[
                [100 * (r["mean"] - r["ci95"][0]) for _, r in rows],
                [100 * (r["ci95"][1] - r["mean"]) for _, r in rows],
            ],
            marker="s",
            linestyle="--",
            capsize=3,
            color="gray",
            label=f"{sel['name']} (selection)",
        )
        if sel["chosen_step"] is not None:
            ax.axvline(sel["chosen_step"], color="gray", alpha=0.4)
    ax.set_xlabel("checkpoint step (0 = base model)")
    ax.set_ylabel("accuracy, mean@n (%)")
    ax.set_title("tina eval: accuracy per checkpoint, 95% CI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
