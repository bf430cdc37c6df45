"""The run folder on disk before the first step: create it or choose the checkpoint to resume from (with the keys a
resume may change), the exact resume command, and the logs cut back to the resume point."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tina import config as cfgmod
from tina.checkpoint import clean_partial, latest_valid_checkpoint, list_checkpoints
from tina.config import Config
from tina.console import say
from tina.errors import TinaError
from tina.files import atomic_write_text, read_jsonl

# Keys that may differ when a run is resumed: none of them changes which prompts, samples or updates a step sees.
RESUMABLE_CHANGES = (
    "train.stop_step",
    "train.save_steps",
    "train.save_total_limit",
    "train.logging_steps",
    "train.report_to",
    "train.max_bad_steps",
    "train.probe_prompt",
    "train.probe_max_new_tokens",
    "train.logprob_memory_mb",
    "train.max_tokens_per_pass",
    "rollout.check_engine",
    "rollout.canary_tolerance",
    "rollout.max_logp_diff",
    "rollout.gpu_memory_utilization",
    "rollout.vllm_sleep",
    "rollout.servers",  # another address for the same servers (a restarted node); the start-up canary checks them
    "rollout.worker_threads",
    "cost.",
    "eval.",
)


def resume_command(run_dir: Path) -> str:
    """The exact command that continues this run (its own resolved config.yaml always matches)."""
    return (
        f"tina train {shlex.quote(str(Path(run_dir) / 'config.yaml'))} --output-dir "
        f"{shlex.quote(str(run_dir))} --resume"
    )


def prepare_run_dir(run_dir: Path, cfg: Config, *, resume: bool) -> tuple[int, Path] | None:
    """Create RUN/, check a resume is possible, write config.yaml.  Returns the checkpoint to resume from, if any.

    Without ``resume`` an existing run is never overwritten.  With it, the config must match the run's own
    config.yaml except for :data:`RESUMABLE_CHANGES`; the newest intact checkpoint is chosen (damaged ones are moved
    aside with a warning); with none, the run starts fresh.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(run_dir)
    if not resume and (list_checkpoints(run_dir) or (run_dir / "metrics.jsonl").exists()):
        raise TinaError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output-dir")
    if resume and (run_dir / "config.yaml").exists():
        changed = config_changes(cfgmod.load_config(run_dir / "config.yaml"), cfg)
        blocking = [k for k in changed if not k.startswith(RESUMABLE_CHANGES)]
        if blocking:
            raise TinaError(
                f"--resume with a different config than {run_dir}/config.yaml (changed: "
                f"{', '.join(blocking)}); resume with the run's own config.yaml"
            )
        if changed:
            say(f"resuming with changed {', '.join(changed)} (these do not alter the training trajectory)")
    point = latest_valid_checkpoint(run_dir, warn=say) if resume else None
    if resume:
        say(
            f"resuming {run_dir} from {point[1].name}"
            if point
            else f"no complete checkpoint in {run_dir}; starting fresh"
        )
    atomic_write_text(run_dir / "config.yaml", cfgmod.to_yaml(cfg))
    return point


def config_changes(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ (``rewards`` compared as a whole)."""
    a, b = cfgmod.to_dict(old), cfgmod.to_dict(new)
    out = []
    for section in b:
        if section == "rewards" or not isinstance(b[section], dict):
            if a.get(section) != b[section]:
                out.append(section)
            continue
        out += [f"{section}.{k}" for k in b[section] if a.get(section, {}).get(k) != b[section][k]]
    return out


def start_logs(run_dir: Path, history: list[dict], holdout: list[dict], start_step: int) -> None:
    """metrics.jsonl and probes.jsonl cut back to the resume point; holdout.jsonl written."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    probes = run_dir / "probes.jsonl"
    if probes.exists():
        kept = [p for p in read_jsonl(probes) if p.get("step", 0) <= start_step]
        atomic_write_text(probes, "".join(json.dumps(p) + "\n" for p in kept))
    if holdout:
        atomic_write_text(
            run_dir / "holdout.jsonl",
            "".join(json.dumps({k: r[k] for k in ("id", "problem", "answer")}) + "\n" for r in holdout),
        )
