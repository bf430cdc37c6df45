"""What does evaluating many checkpoints on ONE base model cost, compared with no switching at all?

Builds a tiny run (5 LoRA checkpoints, r=16 on all linear layers, on builtin:tiny-random unless --model) and times the
same evaluation work -- the demo's held-out arithmetic problems, S samples each, seeded sampling, graded, through
`tina.eval.runner.Session` exactly as `tina eval --run` does -- four ways:

  swap-merged    `tina eval` default: each adapter merged into the weights in turn, base restored exactly between
  preloaded      5 merged models already in memory (merging not timed): the no-overhead reference for swap-merged
  swap-unmerged  `tina eval --no-merge-adapters`: PEFT load_adapter / set_adapter / delete_adapter per checkpoint
  kept           one unmerged adapter kept loaded for all 5 evaluations: the no-overhead reference for swap-unmerged

    python benchmarks/eval_swap.py --threads 1           # 64 problems x 4 samples x 32 tokens, 5 repeats
    python benchmarks/eval_swap.py --problems 128 --device cuda

Prints wall seconds per mode (best and median of the repeats; the modes are interleaved so load from other processes
hits them alike) and process CPU seconds (best; far less sensitive to other processes on a shared machine, most so
with --threads 1), the overhead ratios, the time of one switch alone, and checks that switching gives exactly the
completions of the no-switching reference.
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


def timed(jobs) -> tuple[float, float, list]:
    """Run (session, candidate) jobs against the benchmark; (wall s, process CPU s, completions of each job)."""
    wall, cpu = time.perf_counter(), time.process_time()
    outs = []
    for session, cand, bench in jobs:
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

    class Recording(Session):
        def _write_samples(self, cand, bench, seed, items, graded, phase):
            self.last_completions = graded.completions

    def session(model, merge):
        opts = EvalOptions(samples=args.samples, seeds=[0], temperature=1.0, top_p=1.0, progress=False,
                           max_new_tokens=args.max_new_tokens, batch_size=args.problems * args.samples,
                           merge_adapters=merge)
        return Recording(model, tokenizer, opts, open(os.devnull, "w"), tqdm(disable=True))

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_run(base, Path(tmp), args.checkpoints, args.rank)
        cands = [Candidate(p.name, p, i) for i, p in enumerate(paths)]
        # each way gets its own copy of the base: PEFT changes the model it is given, in place
        swap_m, swap_u, kept = session(copy.deepcopy(base), True), session(copy.deepcopy(base), False), \
            session(copy.deepcopy(base), False)
        preloaded = [session(PeftModel.from_pretrained(copy.deepcopy(base), str(p)).merge_and_unload().eval(), True)
                     for p in paths]
        switch_seconds = {"swap-merged": [], "swap-unmerged": []}
        for name, s, method in (("swap-merged", swap_m, "_merge_in"), ("swap-unmerged", swap_u, "_swap")):
            original = getattr(s.switcher, method)

            def timed_switch(adapter, original=original, log=switch_seconds[name]):
                start = time.perf_counter()
                original(adapter)
                log.append(time.perf_counter() - start)

            setattr(s.switcher, method, timed_switch)
        modes = {
            "swap-merged": [(swap_m, c, bench) for c in cands],
            "preloaded": [(s, BASE, bench) for s in preloaded],
            "swap-unmerged": [(swap_u, c, bench) for c in cands],
            "kept": [(kept, cands[0], bench)] * len(cands),
        }
        for jobs in modes.values():  # warm-up: kernels, the grader worker, the first adapter
            timed(jobs)
        walls, cpus, outputs = ({m: [] for m in modes} for _ in range(3))
        for _ in range(args.repeats):
            for name, jobs in modes.items():
                wall, cpu, outs = timed(jobs)
                walls[name].append(wall)
                cpus[name].append(cpu)
                outputs[name] = outs
        same_merged = outputs["swap-merged"] == outputs["preloaded"]
        same_unmerged = outputs["swap-unmerged"][0] == outputs["kept"][0]

    best = {m: min(t) for m, t in walls.items()}
    med = {m: statistics.median(t) for m, t in walls.items()}
    cpu = {m: min(t) for m, t in cpus.items()}
    ref = {"swap-merged": "preloaded", "preloaded": "preloaded", "swap-unmerged": "kept", "kept": "kept"}
    work = f"{args.checkpoints} checkpoints x {args.problems} problems x {args.samples} samples x " \
           f"{args.max_new_tokens} tokens"
    print(f"\neval_swap: {args.model} on {args.device} ({args.dtype}, {torch.get_num_threads()} threads), LoRA "
          f"r={args.rank} on all linear layers; {work}; {args.repeats} repeats\n")
    print("| mode | wall best s | wall median s | CPU best s | vs its reference (wall / CPU) | vs preloaded (CPU) |")
    print("|---|---|---|---|---|---|")
    for m in modes:
        r = ref[m]
        print(f"| {m} | {best[m]:.2f} | {med[m]:.2f} | {cpu[m]:.2f} | {r}: {best[m] / best[r]:.2f}x / "
              f"{cpu[m] / cpu[r]:.2f}x | {cpu[m] / cpu['preloaded']:.2f}x |")
    print()
    for name, log in switch_seconds.items():
        ms = 1000 * statistics.median(log)
        print(f"one switch, {name}: median {ms:.1f} ms over {len(log)} switches")
    print(f"tina eval default (swap-merged) vs merged models preloaded: wall {best['swap-merged'] / best['preloaded']:.3f}x,"
          f" CPU {cpu['swap-merged'] / cpu['preloaded']:.3f}x (target <= 1.3x)")
    print(f"--no-merge-adapters (swap-unmerged) vs one adapter kept loaded: wall "
          f"{best['swap-unmerged'] / best['kept']:.3f}x, CPU {cpu['swap-unmerged'] / cpu['kept']:.3f}x")
    print(f"same completions as without switching: merged {'yes' if same_merged else 'NO'}, "
          f"unmerged {'yes' if same_unmerged else 'NO'}")


if __name__ == "__main__":
    main()
