"""Fixtures for the evaluation tests: a fake training run with LoRA checkpoints on builtin:tiny-random.

The builtin model cache and HF_HUB_OFFLINE come from tests/conftest.py (one cache per checkout, reused across runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_util import save_adapter


@pytest.fixture(scope="session")
def tiny_base():
    from tina.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("builtin:tiny-random", dtype="float32", device="cpu")
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_base) -> Path:
    """RUN/ with config.yaml (demo recipe on builtin:tiny-random), ledger.json and three checkpoints:

    checkpoint-1: LoRA B = 0 (exactly the base model); checkpoint-2 and checkpoint-3: different random updates.
    """
    from tina.config import load_config, to_yaml

    run = tmp_path_factory.mktemp("run")
    cfg = load_config("demo", ["model.name_or_path=builtin:tiny-random"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "ledger.json").write_text(
        json.dumps(
            {
                "wall_seconds": 100.0,
                "phases": {"generation": 60.0, "backward": 40.0, "evaluation": 0.0},
                "num_devices": 1,
                "device_hours": 100.0 / 3600,
                "usd_per_device_hour": 2.0,
                "usd": 2.0 * 100.0 / 3600,
            }
        )
    )
    base, _ = tiny_base
    save_adapter(base, run / "checkpoint-1", scale=0.0, seed=1)
    save_adapter(base, run / "checkpoint-2", scale=0.5, seed=2)
    save_adapter(base, run / "checkpoint-3", scale=0.5, seed=3)
    return run
