"""Test-wide settings: never touch the Hugging Face Hub; share one cache of builtin tiny models per checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Builtin models (tiny-random, tiny-arith) are built once and reused by every test of the session (and across runs).
os.environ.setdefault("TINA_CACHE_DIR", str(REPO / ".tina_cache"))


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (or $TINA_SHARED_DATA), if present."""
    env = os.environ.get("TINA_SHARED_DATA")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (candidate / "benchmarks").is_dir():
            return candidate
    return None


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not present (set TINA_SHARED_DATA); real-data test skipped")
    return path
