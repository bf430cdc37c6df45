"""What does evaluating many checkpoints by swapping LoRA adapters on one base model cost?

Builds a tiny run (5 LoRA checkpoints, r=16 on all linear layers, on builtin:tiny-random unless --model) and times the
same evaluation work -- the demo's held-out arithmetic problems, S samples each, seeded sampling, graded -- three ways:

  swap    what `tina eval --run` does: one base model, PEFT load_adapter / set_adapter / delete_adapter per checkpoint
  kept    the same adapter kept loaded for all 5 generations (no swapping): the generation cost with LoRA layers
  merged  5 merged models preloaded in memory (merging not timed): generation with no LoRA compute at all

    python benchmarks/eval_swap.py                       # 64 problems x 4 samples x 32 tokens, 3 repeats
    python benchmarks/eval_swap.py --problems 128 --repeats 5 --device cuda

Prints wall seconds per mode (best and median of the repeats; the modes are interleaved so load from other processes
hits them alike) and process CPU seconds (best; far less sensitive to other processes on a shared machine, most so
with --threads 1), the ratios swap/kept and swap/merged, the time of one adapter swap alone, and checks that swapping
gives exactly the completions of the adapter kept loaded.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_run(base, folder: Path, n: int, rank: int) -> list[Path]:
    """n checkpoints with random LoRA updates (B ~ N(0, 0.02)), saved like train.py saves them."""
    import torch
    from peft import LoraConfig, get_peft_model

    paths = []
    for i in range(n):
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                                                               task_type="CAUSAL_LM"))
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        path = folder / f"checkpoint-{(i + 1) * 10}"
        model.save_pretrained(path)
        paths.append(path)
    return paths


def evaluate(session, candidates, bench) -> tuple[float, float, list]:
    """(wall seconds, process CPU seconds) for `session` (a tina.eval.runner.Session) to evaluate every candidate,
    and their completions."""
    wall, cpu = time.perf_counter(), time.process_time()
    outs = []
    for cand in candidates:
        session.evaluate(cand, bench)
        outs.append(session.last_completions)
    return time.perf_counter() - wall, time.process_time() - cpu, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:tiny-random")
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    import torch
    from peft import PeftModel
    from tqdm import tqdm

    from tina.eval.benchmarks import load_benchmark
    from tina.eval.runner import BASE, Candidate, EvalOptions, Session
    from tina.models import load_model_and_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    base, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device)
    bench = load_benchmark("arith", limit=args.problems)
    opts = EvalOptions(samples=args.samples, seeds=[0], temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                       batch_size=args.problems * args.samples, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_run(base, Path(tmp), args.checkpoints, args.rank)
        merged = [PeftModel.from_pretrained(copy.deepcopy(base), str(p)).merge_and_unload().eval() for p in paths]
        sink = open(os.devnull, "w")
        bar = tqdm(disable=True)

        class Recording(Session):
            def _write_samples(self, cand, bench, seed, items, graded, phase):
                self.last_completions = graded.completions

        swap = Recording(base, tokenizer, opts, sink, bar)  # the base model, adapters swapped in place
        swap_cands = [Candidate(p.name, p, i) for i, p in enumerate(paths)]
        kept_cands = [Candidate(paths[0].name, paths[0], 0)] * len(paths)
        # "kept" needs its own copy of the base: PEFT injects the adapter layers into the model it wraps
        kept = Recording(copy.deepcopy(base), tokenizer, opts, sink, bar)
        merged_sessions = [Recording(m, tokenizer, opts, sink, bar) for m in merged]

        def run_merged():
            wall, cpu = time.perf_counter(), time.process_time()
            for s in merged_sessions:
                s.evaluate(BASE, bench)
            return time.perf_counter() - wall, time.process_time() - cpu, None

        swap_seconds = []  # the adapter swap alone: PEFT load_adapter + set_adapter + delete_adapter
        original_swap = swap.switcher._swap

        def timed_swap(adapter):
            start = time.perf_counter()
            original_swap(adapter)
            swap_seconds.append(time.perf_counter() - start)

        swap.switcher._swap = timed_swap
        modes = {"swap": lambda: evaluate(swap, swap_cands, bench),
                 "kept": lambda: evaluate(kept, kept_cands, bench),
                 "merged": run_merged}
        for fn in modes.values():  # warm-up: kernels, grader worker, first adapter load
            fn()
        walls = {m: [] for m in modes}
        cpus = {m: [] for m in modes}
        outputs = {}
        for _ in range(args.repeats):
            for name, fn in modes.items():
                wall, cpu, outs = fn()
                walls[name].append(wall)
                cpus[name].append(cpu)
                outputs[name] = outs
        same = outputs["swap"][0] == outputs["kept"][0]

    best = {m: min(t) for m, t in walls.items()}
    med = {m: statistics.median(t) for m, t in walls.items()}
    cpu = {m: min(t) for m, t in cpus.items()}
    work = f"{args.checkpoints} checkpoints x {args.problems} problems x {args.samples} samples x " \
           f"{args.max_new_tokens} tokens"
    print(f"\neval_swap: {args.model} on {args.device} ({args.dtype}, {torch.get_num_threads()} threads), LoRA "
          f"r={args.rank} on all linear layers; {work}; {args.repeats} repeats\n")
    print("| mode | wall best s | wall median s | CPU best s | wall vs kept | CPU vs kept | CPU vs merged |")
    print("|---|---|---|---|---|---|---|")
    for m in walls:
        print(f"| {m} | {best[m]:.2f} | {med[m]:.2f} | {cpu[m]:.2f} | {best[m] / best['kept']:.2f}x | "
              f"{cpu[m] / cpu['kept']:.2f}x | {cpu[m] / cpu['merged']:.2f}x |")
    per_swap = statistics.median(swap_seconds)
    print(f"\nswap overhead, swap / kept: wall {best['swap'] / best['kept']:.3f}x, "
          f"CPU {cpu['swap'] / cpu['kept']:.3f}x "
          f"(target <= 1.3x); swap / merged: wall {best['swap'] / best['merged']:.3f}x, "
          f"CPU {cpu['swap'] / cpu['merged']:.3f}x")
    print(f"one adapter swap (load + set + delete): median {1000 * per_swap:.1f} ms over {len(swap_seconds)} swaps, "
          f"= {100 * per_swap * args.checkpoints / best['kept']:.1f}% of the kept-adapter generation time")
    print(f"swapped adapter gives the same completions as the adapter kept loaded: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
