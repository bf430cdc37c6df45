"""Data-parallel evaluation: one process (one engine, one GPU) per shard of the problems, results merged.

``tina eval ... --data-parallel N`` starts N processes; process i evaluates the problems whose index is i modulo N
(every model, benchmark and seed) into ``OUT/shards/shard-i/`` and, on a machine with N GPUs, sees only GPU i.  The
parent then concatenates the shards' samples.jsonl into ``OUT/samples.jsonl`` and computes the results from it.  As
every completion's random stream depends only on (seed, benchmark, problem, sample), the numbers are those of one
process with the same seeds.  ``--resume`` resumes every shard (a killed shard keeps what it finished).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

from tina.errors import TinaError


def run_data_parallel(opts, out: Path, *, assemble, echo=print) -> dict:
    """Run ``opts.data_parallel`` shard processes (one GPU each when there are enough), merge their samples and
    ``assemble`` the results from them (:func:`tina.eval.runner.assemble_only`, handed in: no import circle)."""
    import torch

    n = opts.data_parallel
    (out / "shards").mkdir(parents=True, exist_ok=True)
    procs = []
    gpus = torch.cuda.device_count()
    for i in range(n):
        child = replace(
            opts, data_parallel=1, shard=(i, n), output_dir=str(out / "shards" / f"shard-{i}"), progress=False
        )
        env = dict(os.environ)
        if gpus >= n:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        code = "import json, sys; from tina.eval.cli import shard_child; sys.exit(shard_child(json.loads(sys.argv[1])))"
        log = open(out / "shards" / f"shard-{i}.log", "w")
        procs.append(
            (
                i,
                subprocess.Popen(
                    [sys.executable, "-c", code, json.dumps(asdict(child))],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    echo(f"data-parallel evaluation: {n} processes" + (", one GPU each" if gpus >= n else " (no GPU per process)"))
    failed = []
    for i, proc, log in procs:
        if proc.wait() != 0:
            failed.append(i)
        log.close()
    if failed:
        tail = (out / "shards" / f"shard-{failed[0]}.log").read_text().strip().splitlines()[-1:]
        raise TinaError(
            f"data-parallel evaluation: shard(s) {', '.join(map(str, failed))} failed (see "
            f"{out / 'shards'}/shard-<i>.log: {' '.join(tail)[:300]}); what the others finished is kept "
            "-- rerun with --resume"
        )
    merge_samples([out / "shards" / f"shard-{i}" / "samples.jsonl" for i in range(n)], out / "samples.jsonl")
    first = json.loads((out / "shards" / "shard-0" / "results.json").read_text())
    merged = replace(opts, data_parallel=1, shard=None, resume=True, output_dir=str(out), data_parallel_of=n)
    return assemble(merged, first, echo=echo)


def merge_samples(parts: list[Path], target: Path) -> None:
    with open(target, "w", encoding="utf-8") as fh:
        for part in parts:
            if part.is_file():
                fh.write(part.read_text(encoding="utf-8"))
