"""Checkpoints: a standard PEFT adapter plus everything needed to resume, written atomically.

``RUN/checkpoint-<step>/`` holds ``adapter_config.json`` + ``adapter_model.safetensors`` (loadable with
``PeftModel.from_pretrained``) and ``trainer_state.pt`` (optimizer, scheduler, RNG states, data position; loaded with
``weights_only=True``).  A checkpoint is written into a temporary folder and renamed into place, and
``trainer_state.pt`` is written last, so a crash mid-write never leaves a folder that looks complete.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import torch

STATE_FILE = "trainer_state.pt"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(run_dir: Path, step: int, model, trainer_state: dict) -> Path:
    final = Path(run_dir) / f"checkpoint-{step}"
    tmp = Path(run_dir) / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    torch.save(trainer_state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    found = []
    for p in Path(run_dir).glob("checkpoint-*"):
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / "adapter_model.safetensors").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(run_dir: Path, keep: int | None) -> None:
    if not keep:
        return
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_trainer_state(path: Path) -> dict:
    return torch.load(Path(path) / STATE_FILE, weights_only=True, map_location="cpu")
