"""Subcommands ``tina eval``, ``tina grade`` and ``tina merge`` (registered through tina.cli.COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tina.errors import TinaError


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(sub) -> None:
    from tina.eval.benchmarks import NAMES, TINA_SIX
    from tina.prompts import TEMPLATE_NAMES

    p = sub.add_parser(
        "eval",
        help="evaluate a model and its LoRA checkpoints on the Tina benchmarks, with CIs",
        description="Sample completions for benchmark problems, grade them with the project's grader and report "
        "mean@n, unbiased pass@k and 95% bootstrap CIs over problems, plus paired differences vs the "
        "base model. The base model is loaded once; adapters are swapped in place.",
        epilog="examples:\n"
        "  tina eval --run runs/demo --benchmarks arith --samples 4\n"
        "  tina eval --run RUN --select-on RUN/holdout.jsonl --benchmarks aime24,math500 --seeds 0,1,2\n"
        "  tina eval --model builtin:tiny-random --data-dir shared/data/benchmarks --benchmarks aime24 "
        "--limit 10 --max-new-tokens 64",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="base model: hub id, folder or builtin:... (default: from --run or the adapters)")
    p.add_argument(
        "--adapter",
        dest="adapters",
        action="append",
        default=[],
        metavar="PATH",
        help="a PEFT adapter folder to evaluate (repeatable)",
    )
    p.add_argument("--run", metavar="RUN_DIR", help="evaluate every RUN/checkpoint-<step>/ (and the base)")
    p.add_argument(
        "--benchmarks",
        type=_name_list,
        default=list(TINA_SIX),
        metavar="A,B,...",
        help=f"comma-separated, from: {', '.join(NAMES)} (default: the Tina six)",
    )
    p.add_argument("--samples", type=int, default=1, help="completions per problem and seed (default 1)")
    p.add_argument("--seeds", type=_int_list, default=[0], metavar="0,1,...", help="sampling seeds (default 0)")
    p.add_argument("--temperature", type=float, default=0.6, help="default 0.6 (Tina); 0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95, help="default 0.95 (Tina)")
    p.add_argument("--max-new-tokens", type=int, default=32768, help="default 32768 (Tina)")
    p.add_argument("--limit", type=int, help="only the first N problems of each benchmark and the validation set")
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="sequences decoded at once (default 64): hf rows per decode batch; vllm max_num_seqs "
        "(continuous batching). The completions do not depend on it",
    )
    p.add_argument(
        "--backend",
        default="hf",
        choices=["hf", "vllm"],
        help="rollout engine: hf (transformers, everywhere) or vllm (pip install 'tina[vllm]'): the base "
        "loaded once, every checkpoint served as its own LoRA request, all problems submitted at once",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted evaluation in --output-dir: finished problems are read back from its "
        "samples.jsonl and not generated again",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the expected token volume and time (from a measured throughput); generate nothing",
    )
    p.add_argument(
        "--data-parallel",
        type=int,
        default=1,
        metavar="N",
        help="N processes (one per GPU), each on a shard of the problems; results merged (same numbers)",
    )
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm: share of the GPU (default 0.9)")
    p.add_argument("--max-model-len", type=int, help="vllm: prompt + completion tokens (default: the model's)")
    p.add_argument("--output-dir", "-o", help="where to write (default: RUN/eval with --run, else ./tina-eval)")
    p.add_argument("--data-dir", help="read DIR/<benchmark>.jsonl instead of the hub (see tina.eval.benchmarks)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument(
        "--template",
        default="tokenizer",
        choices=TEMPLATE_NAMES,
        help="chat template around the prompt (default: the tokenizer's own, as Tina)",
    )
    p.add_argument(
        "--include-base",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also evaluate the base model (default: on with --run, off with --adapter)",
    )
    p.add_argument(
        "--merge-adapters",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="hf, float32 only: fold each adapter into the weights while it is evaluated (checked against "
        "the unmerged model; the base is restored exactly between adapters). Default: unmerged LoRA "
        "-- a bf16 merge loses a low-learning-rate update to rounding",
    )
    p.add_argument(
        "--select-on",
        metavar="FILE_OR_NAME",
        help="choose ONE checkpoint by its score on this validation set (a JSONL such as "
        "RUN/holdout.jsonl, or a benchmark name not in --benchmarks); ties go to the earliest",
    )
    p.add_argument(
        "--select-prompt",
        choices=["eval", "train"],
        default="eval",
        help="prompt the validation set like the math benchmarks (eval) or like the run trained (train)",
    )
    p.add_argument("--grader-timeout", type=float, default=5.0, help="seconds per answer that needs sympy")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --output-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_eval)

    p = sub.add_parser(
        "grade",
        help="regrade a JSONL of completions with the project's grader",
        description="Grade each line's 'completion' against its 'gold' and write the line back "
        "with correct (true/false/null), extracted and reason; print a summary line.",
    )
    p.add_argument("file", type=Path, help="JSONL with completion and gold per line (e.g. samples.jsonl)")
    p.add_argument("--task", choices=["math", "gpqa"], help="grader task (default: each line's 'task', else math)")
    p.add_argument("--out", default="-", help="graded JSONL to write ('-' = stdout, the default; summary on stderr)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per answer that needs sympy")
    p.set_defaults(handler=_grade)

    p = sub.add_parser(
        "merge",
        help="merge a LoRA checkpoint into its base model (a plain transformers model)",
        description="Load the base model, merge the adapter (merge_and_unload) and save safetensors, "
        "tokenizer and generation config. The base is read from RUN/config.yaml next to "
        "the checkpoint or from adapter_config.json; --model overrides.",
    )
    p.add_argument("checkpoint", type=Path, help="a checkpoint-<step>/ folder (PEFT adapter)")
    p.add_argument("--output-dir", "-o", type=Path, required=True, help="new folder for the merged model")
    p.add_argument("--model", help="base model (overrides the one recorded with the checkpoint)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dtype to load, merge and save in (auto: bfloat16 on a GPU that supports it, else float32)",
    )
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(handler=_merge)


def _eval(args) -> int:
    from tina.eval.runner import EvalOptions, run_eval

    if args.samples < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1) or args.data_parallel < 1:
        raise TinaError("--samples, --batch-size, --limit and --data-parallel must be positive")
    opts = EvalOptions(
        model=args.model,
        adapters=args.adapters,
        run=args.run,
        benchmarks=args.benchmarks,
        samples=args.samples,
        seeds=args.seeds,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        batch_size=args.batch_size,
        output_dir=args.output_dir,
        data_dir=args.data_dir,
        dtype=args.dtype,
        device=args.device,
        template=args.template,
        include_base=args.include_base,
        merge_adapters=args.merge_adapters,
        select_on=args.select_on,
        select_prompt=args.select_prompt,
        grader_timeout=args.grader_timeout,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        backend=args.backend,
        resume=args.resume,
        dry_run=args.dry_run,
        data_parallel=args.data_parallel,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
    )
    run_eval(opts)
    return 0


def _grade(args) -> int:
    from tina.eval.regrade import format_summary, read_gradable, regrade, summary, write_jsonl

    rows = regrade(read_gradable(args.file, args.task), timeout=args.timeout)
    line = format_summary(summary(rows))
    if args.out == "-":
        write_jsonl(rows, sys.stdout)
        print(line, file=sys.stderr)
    else:
        try:
            with open(args.out, "w", encoding="utf-8") as fh:
                write_jsonl(rows, fh)
        except OSError as exc:
            raise TinaError(f"cannot write {args.out}: {exc.strerror}") from None
        print(line)
    return 0


def _merge(args) -> int:
    from tina.eval.merge import merge_checkpoint

    merge_checkpoint(args.checkpoint, args.output_dir, model=args.model, dtype=args.dtype, device=args.device)
    return 0


def shard_child(options: dict) -> int:
    """Entry point of one shard's process of ``tina eval --data-parallel N`` (:mod:`tina.eval.parallel`)."""
    from tina.cli import run_guarded
    from tina.eval.runner import EvalOptions, run_eval

    options["shard"] = tuple(options["shard"])
    opts = EvalOptions(**options)
    return run_guarded("eval", lambda: run_eval(opts, echo=lambda *_: None) and 0)
