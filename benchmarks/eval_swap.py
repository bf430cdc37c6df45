"""Evaluating a base model and its checkpoints with `tina eval`: throughput per engine, adapter-swap overhead, and the
decode slots a static batch would waste.

Builds a run of C LoRA checkpoints (rank r on all linear layers; seeded A and B, B scaled so that every adapted matrix
changes by ``--update`` of its norm -- small, as training leaves it, so the checkpoints still answer and completions
end at different lengths) on ``--model`` (default builtin:tiny-arith), then evaluates the base + the C checkpoints on
the demo's held-out ``arith`` problems (P problems x S samples, at most T new tokens, Tina's T=0.6 / top-p 0.95,
seeded) through `tina.eval.runner.Session` and `tina.eval.serving.open_server` -- the code `tina eval` runs -- with
every engine present: ``hf`` always, ``vllm`` when it is importable (``--engines`` to choose).

Measured, per engine (best of ``--repeats`` passes; modes interleaved within an engine so load from other processes
hits them alike):

1. **tokens/s per model**: completion tokens generated / seconds of that model's evaluation (generation + grading, as
   results.json and the ledger report it), for the base and each checkpoint, in ``swap`` mode (below).
2. **adapter-swap overhead**: wall seconds of the whole pass (base + C checkpoints) in

   * ``swap``: as `tina eval` runs: every checkpoint served in turn (hf: PEFT load_adapter / set_adapter /
     delete_adapter on the one base; vllm: a new LoRARequest per checkpoint);
   * ``kept``: the no-swap reference: the base, then checkpoint 1 evaluated C times (the adapter stays loaded);
   * hf, float32 only: ``swap-merged`` / ``kept-merged``, the same with ``--merge-adapters`` (each adapter folded
     into the weights after the logit check, the base restored exactly between adapters);

   and the median time of one switch alone (hf: the AdapterSwitcher call; vllm: load_adapter, whose LoRA weights
   are read by the next generate, so the swap/kept ratio is the full cost).  Switching must not change completions:
   checkpoint 1's completions in ``swap`` and ``kept`` are compared.
3. **static-batch waste** (hf): transformers' ``generate`` keeps every row of a batch decoding until the batch's
   longest completion ends; tina's loop drops a row (and its KV cache) the step it ends.  From the engine's counters
   (`tina.rollout.hf.DecodeStats`) over the ``swap`` pass: *before* = 1 - tokens / static_slots, the fraction of a
   static batch's decode slots (rows x steps of each batch of ``--batch-size`` rows) spent on finished rows; *after*
   = decode_slots / tokens (1.00: one slot per generated token, no waste by construction).

    python benchmarks/eval_swap.py --threads 1          # CPU: builtin:tiny-arith, 5 checkpoints, 64 x 4 x 32
    python benchmarks/eval_swap.py --device cuda --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --dtype bfloat16 \\
        --problems 128 --max-new-tokens 1024 --engines hf,vllm
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_run(base, folder: Path, n: int, rank: int, update: float) -> list[Path]:
    """n checkpoints, RUN/checkpoint-10 ... : seeded LoRA updates of relative size ``update`` (Frobenius)."""
    import torch
    from peft import LoraConfig, get_peft_model

    paths = []
    for i in range(n):
        model = get_peft_model(
            copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, task_type="CAUSAL_LM")
        )
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for module in model.modules():
                if not (hasattr(module, "lora_B") and "default" in module.lora_B):
                    continue
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                a.copy_(torch.randn(a.shape, generator=gen) / a.shape[1] ** 0.5)
                b.copy_(torch.randn(b.shape, generator=gen))
                b.mul_(update * module.base_layer.weight.float().norm() / module.get_delta_weight("default").norm())
        path = folder / f"checkpoint-{(i + 1) * 10}"
        model.save_pretrained(path)
        paths.append(path)
    return paths


class Probe:
    """Wraps a Server: times adapter switches and collects the hf engines' decode counters."""

    def __init__(self, server):
        self.server = server
        self.switches: list[float] = []
        self.stats = []  # DecodeStats of every hf engine served
        if server.backend == "hf":
            switcher = server.switcher
            for method in ("_swap", "_merge_in"):
                original = getattr(switcher, method)

                def timed(adapter, original=original):
                    start = time.perf_counter()
                    original(adapter)
                    self.switches.append(time.perf_counter() - start)

                setattr(switcher, method, timed)
        else:
            engine = server.engine
            original = engine.load_adapter

            def timed_load(adapter, original=original):
                start = time.perf_counter()
                changed = adapter != engine.adapter
                original(adapter)
                if changed and adapter is not None:
                    self.switches.append(time.perf_counter() - start)

            engine.load_adapter = timed_load
        serve = server.serve

        @contextmanager
        def recording(cand):
            with serve(cand) as engine:
                yield engine
            if hasattr(engine, "stats"):
                self.stats.append(engine.stats)

        server.serve = recording


def one_pass(probe: Probe, opts, candidates, bench, folder: Path) -> tuple[float, dict, dict]:
    """Evaluate ``candidates`` on ``bench`` as `tina eval` does; (wall s, {label: Outcome}, {label: completions})."""
    import json

    from tqdm.auto import tqdm

    from tina.eval.runner import Session
    from tina.eval.samples import SampleLog

    log = folder / "samples.jsonl"
    samples = SampleLog(log, samples=opts.samples, resume=False)
    start = time.perf_counter()
    try:
        with tqdm(total=0, disable=True) as bar:
            session = Session(probe.server, opts, samples, bar)
            outcomes = {c.label: session.evaluate(c, bench) for c in candidates}
    finally:
        samples.close()
    wall = time.perf_counter() - start
    texts: dict = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        texts.setdefault(r["model"], {})[(r["problem_id"], r["sample"])] = r["completion"]
    return wall, outcomes, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:tiny-arith")
    ap.add_argument("--engines", default="hf,vllm", help="comma-separated; vllm is skipped when not importable")
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64, help="hf: rows per decode batch; vllm: max_num_seqs")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--update", type=float, default=1e-3, help="LoRA update / weight norm of each adapted matrix")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    import importlib.util

    import torch

    from tina.eval.benchmarks import load_benchmark
    from tina.eval.candidates import BASE, Candidate
    from tina.eval.options import EvalOptions
    from tina.eval.serving import open_server
    from tina.models import load_model_and_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    engines = [e for e in args.engines.split(",") if e == "hf" or importlib.util.find_spec(e) is not None]
    skipped = [e for e in args.engines.split(",") if e not in engines]
    bench = load_benchmark("arith", limit=args.problems)
    opts = EvalOptions(
        model=args.model,
        benchmarks=["arith"],
        samples=args.samples,
        seeds=[0],
        temperature=0.6,
        top_p=0.95,
        max_new_tokens=args.max_new_tokens,
        limit=args.problems,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        progress=False,
    )
    rows: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, _ = load_model_and_tokenizer(args.model, dtype="float32", device="cpu")
        paths = make_run(base, tmp / "run", args.checkpoints, args.rank, args.update)
        del base
        cands = [Candidate(p.name, p, (i + 1) * 10) for i, p in enumerate(paths)]
        kept = [Candidate(f"{cands[0].label}#{i + 1}", cands[0].adapter, cands[0].step) for i in range(len(cands))]
        for engine in engines:  # hf first: vLLM's CPU backend binds the process's threads when it starts
            modes = {"swap": ({}, [BASE] + cands), "kept": ({}, [BASE] + kept)}
            if engine == "hf" and args.dtype == "float32":
                modes |= {
                    "swap-merged": ({"merge_adapters": True}, [BASE] + cands),
                    "kept-merged": ({"merge_adapters": True}, [BASE] + kept),
                }
            probes = {}  # one Server (one base model) per way of serving, shared by its swap and kept modes
            for extra, _ in modes.values():
                key = "merged" if extra else "plain"
                if key not in probes:
                    probes[key] = Probe(open_server(replace(opts, backend=engine, **extra), args.model, cands))
            # warm-up: kernels, the grader worker, every adapter once
            one_pass(probes["plain"], replace(opts, backend=engine), [BASE] + cands, bench, tmp)
            walls = {m: [] for m in modes}
            per_model: dict = {}
            texts: dict = {}
            switches = {m: [] for m in modes}
            stats_swap = []
            for _ in range(args.repeats):
                for mode, (extra, candidates) in modes.items():
                    probe = probes["merged" if extra else "plain"]
                    n_switch, n_stats = len(probe.switches), len(probe.stats)
                    wall, outcomes, done = one_pass(
                        probe, replace(opts, backend=engine, **extra), candidates, bench, tmp
                    )
                    walls[mode].append(wall)
                    switches[mode] += probe.switches[n_switch:]
                    texts[mode] = done
                    if mode == "swap":
                        stats_swap = probe.stats[n_stats:]
                        for label, o in outcomes.items():
                            rate = o.tokens_generated / o.seconds if o.seconds else 0.0
                            per_model[label] = max(per_model.get(label, 0.0), rate)
            same = texts["swap"][cands[0].label] == texts["kept"][kept[0].label]
            same_merged = (
                "swap-merged" not in texts
                or texts["swap-merged"][cands[0].label] == texts["kept-merged"][kept[0].label]
            )
            tokens = sum(s.tokens for s in stats_swap)
            rows[engine] = {
                "version": probes["plain"].server.engine_name,
                "per_model": per_model,
                "walls": {m: min(w) for m, w in walls.items()},
                "switch_ms": {m: 1000 * statistics.median(s) if s else None for m, s in switches.items()},
                "same": same and same_merged,
                "static": (tokens, sum(s.static_slots for s in stats_swap), sum(s.decode_slots for s in stats_swap))
                if stats_swap
                else None,
            }
            del probes

    work = (
        f"base + {args.checkpoints} checkpoints x {args.problems} arith problems x {args.samples} samples, "
        f"<= {args.max_new_tokens} new tokens, T=0.6 top-p 0.95, batch size {args.batch_size}"
    )
    print(
        f"\neval_swap: {args.model} on {args.device} ({args.dtype}, {torch.get_num_threads()} threads); LoRA "
        f"r={args.rank} on all linear layers, update {args.update:g} of each weight's norm; {work}; best of "
        f"{args.repeats} passes" + (f"; not importable, skipped: {', '.join(skipped)}" if skipped else "") + "\n"
    )
    labels = ["base"] + [c.label for c in cands]
    print("tokens/s per model (generation + grading, as results.json reports it):\n")
    print("| model | " + " | ".join(rows[e]["version"] for e in rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for label in labels:
        print(f"| {label} | " + " | ".join(f"{rows[e]['per_model'][label]:.0f}" for e in rows) + " |")
    print("\nadapter-swap overhead (wall s of the whole pass, best):\n")
    print("| engine | mode | wall s | vs no-swap reference | one switch, median ms | same completions |")
    print("|---|---|---|---|---|---|")
    for e, r in rows.items():
        for mode, wall in r["walls"].items():
            ref = "kept-merged" if mode.endswith("merged") else "kept"
            ms = r["switch_ms"][mode]
            print(
                f"| {e} | {mode} | {wall:.2f} | {wall / r['walls'][ref]:.2f}x | "
                f"{'-' if ms is None else f'{ms:.1f}'} | {'yes' if r['same'] else 'NO'} |"
            )
    if "hf" in rows and rows["hf"]["static"]:
        tokens, static, decode = rows["hf"]["static"]
        print("\nhf decode slots over the swap pass (rows x steps):\n")
        print("| | decode slots | tokens | slots / token | waste (slots on finished rows) |")
        print("|---|---|---|---|---|")
        print(
            f"| before: static batch (transformers generate) | {static} | {tokens} | {static / tokens:.2f} | "
            f"{1 - tokens / static:.1%} |"
        )
        print(
            f"| after: tina's loop (finished rows leave) | {decode} | {tokens} | {decode / tokens:.2f} | "
            f"{1 - tokens / decode:.1%} |"
        )


if __name__ == "__main__":
    main()
