"""``tina train`` under accelerate's FSDP2 on CPU processes (see accelerate_on_cpu.py), with the ``hf`` engine handing
its adapter over through a folder, as the ``vllm`` engine does: every publish writes ``RUN/.engine/rank<r>/v<version>/``
from the gathered FSDP shards, so a test can check what a vLLM engine would be handed.  The hf engine itself still
generates with the live model.

    python -m accelerate.commands.launch --config_file src/tina/accelerate_configs/fsdp.yaml --num_processes 2 \\
        --mixed_precision no tests/fsdp_handover_worker.py train demo -o RUN ...
"""

import sys
from pathlib import Path

import accelerate_on_cpu  # noqa: F401 - marks the CPU process group as FSDP (its module docstring says how)
import tina.rollout.engines
from tina.rollout.adapters import AdapterHandover

_make_engine = tina.rollout.engines.make_engine


def _with_folder(cfg, model, tokenizer, *, run_dir, rank=0):
    engine, _ = _make_engine(cfg, model, tokenizer, run_dir=run_dir, rank=rank)
    return engine, AdapterHandover(Path(run_dir) / ".engine" / f"rank{rank}")


tina.rollout.engines.make_engine = _with_folder

if __name__ == "__main__":
    from tina.cli import main

    sys.exit(main(sys.argv[1:]))
