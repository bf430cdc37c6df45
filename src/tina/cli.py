"""Command line: ``tina train | demo | recipes | check | eval | grade | merge | report``.

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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe key, e.g. --set train.max_steps=20 (repeatable; value parsed as YAML)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tina",
        description="Tiny reasoning models via LoRA-GRPO: train LoRA adapters with RL, evaluate them honestly.",
        epilog="Start with `tina demo`: it trains a tiny model on this CPU, offline, in a few minutes.",
    )
    parser.add_argument("--version", action="version", version=f"tina {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="LoRA-GRPO training from a recipe",
                       description="Train a LoRA adapter with GRPO (or a variant) as the recipe says. Writes "
                                   "RUN/config.yaml, metrics.jsonl, ledger.json and checkpoint-<step>/ adapters.")
    _add_recipe_args(p)
    p.add_argument("--output-dir", "-o", required=True, type=Path, help="run directory (RUN)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics are still written)")

    p = sub.add_parser("demo", help="the embedded default: teach a tiny model arithmetic on CPU in minutes",
                       description="Build a tiny Qwen2 model offline, evaluate it on held-out problems, train a LoRA "
                                   "adapter with GRPO, evaluate again, and report the gain with a 95%% CI.")
    p.add_argument("--output-dir", "-o", type=Path, default=Path("tina-demo"), help="where to write (default: ./tina-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed for the RL run and the evaluation sampling (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the bundled demo recipe, e.g. --set train.max_steps=60")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("recipes", help="list the bundled recipes",
                       description="List the bundled recipes with their dataset, rewards, objective and steps.")
    p.add_argument("--paths", action="store_true", help="also print each recipe's file path")

    p = sub.add_parser("check", help="validate a recipe and print the resolved config",
                       description="Validate a recipe (strictly: unknown keys, wrong types and impossible values are "
                                   "errors) and print the resolved config, itself a valid recipe.")
    _add_recipe_args(p)

    for module in _command_modules():
        module.register(sub)
    return parser


# Subcommands that live next to their code: each module has register(subparsers) and run(args) -> int, and sets
# `command=<name>` on its parser via set_defaults(command_module=__name__).
COMMAND_MODULES: list[str] = []


def _command_modules():
    import importlib

    return [importlib.import_module(name) for name in COMMAND_MODULES]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _dispatch(args)
    except TinaError as exc:
        print(f"tina {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"tina {args.command}: interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    if getattr(args, "command_module", None):
        import importlib

        return importlib.import_module(args.command_module).run(args)
    if args.command == "check":
        from tina.config import load_config, to_yaml

        cfg = load_config(args.recipe, args.overrides)
        print(f"# {args.recipe}: valid ({cfg.prompts_per_step} prompts x {cfg.rollout.num_generations} completions "
              f"per step, {cfg.last_step} steps)")
        print(to_yaml(cfg), end="")
        return 0
    if args.command == "recipes":
        return _recipes(args)
    if args.command == "train":
        from tina.config import load_config
        from tina.train import train

        cfg = load_config(args.recipe, args.overrides)
        result = train(cfg, args.output_dir, resume=args.resume, progress=not args.no_progress)
        last = result.metrics[-1] if result.metrics else {}
        print(f"done: {result.steps} steps, last reward {last.get('reward')}, run in {args.output_dir}")
        return 0
    if args.command == "demo":
        from tina.demo import run_demo

        run_demo(args.output_dir, seed=args.seed, overrides=args.overrides, progress=not args.no_progress)
        return 0
    raise AssertionError(args.command)


def _recipes(args) -> int:
    from tina.config import bundled_recipes, load_config, resolve_recipe_path

    rows = []
    for name in bundled_recipes():
        cfg = load_config(name)
        rewards = "+".join(f"{r.name}" + (f"x{r.weight:g}" if r.weight != 1 else "") for r in cfg.rewards)
        steps = f"{cfg.last_step}/{cfg.train.max_steps}" if cfg.train.stop_step else f"{cfg.train.max_steps}"
        rows.append((name, cfg.data.source, rewards, cfg.algorithm.objective, steps, str(resolve_recipe_path(name))))
    headers = ("recipe", "dataset", "rewards", "objective", "steps")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths))
        print(line + (f"  {r[5]}" if args.paths else ""))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
