"""Checkpoints: a standard PEFT adapter plus everything needed to resume bit for bit, written atomically.

``RUN/checkpoint-<step>/`` holds

* ``adapter_config.json`` + ``adapter_model.safetensors`` — loadable with ``PeftModel.from_pretrained``;
* ``trainer_state.pt`` — optimizer, scheduler, RNG states (python, numpy, torch, CUDA), prompt-sampler position,
  bad-step counter and, for ``num_iterations > 1``, the rollout buffer; loaded with ``weights_only=True``;
* ``metrics.jsonl`` and ``ledger.json`` — the run's metrics up to this step and its cost ledger at this step;
* ``manifest.json`` — size and SHA-256 of every other file, written last.

A checkpoint is written into ``RUN/.checkpoint-<step>.tmp/`` (files fsynced, manifest last) and renamed into place,
so a crash or a full disk mid-write never leaves a folder that looks complete and never touches an older checkpoint.
On resume :func:`latest_valid_checkpoint` checks the manifest of the newest checkpoint (sizes, then hashes); a damaged
one (truncated file, bit rot) is moved to ``RUN/damaged/`` with a warning and the previous checkpoint is used.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from tina.files import sha256_file

STATE_FILE = "trainer_state.pt"
ADAPTER_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "manifest.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


# ------------------------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """Every random-number generator the loop draws from (generation samples with the global torch RNG)."""
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(
            (n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ------------------------------------------------------------------------------------------------------------ save
def _save_state(obj: dict, path: Path) -> None:
    """Write trainer_state.pt (a separate function so tests can make it fail like a full disk)."""
    torch.save(obj, path)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model,
    trainer_state: dict,
    extra_files: dict[str, str] | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Write ``RUN/checkpoint-<step>/`` atomically and return its path.

    ``extra_files`` maps file names to text (the metrics and ledger copies).  ``state_dict`` (full tensors keyed like
    ``model.state_dict()``) replaces reading the model, for sharded (FSDP) models.  Any error (``OSError`` from a full
    disk included) removes the partial temporary folder and propagates; existing checkpoints are never modified.
    """
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _save_state(trainer_state, tmp / STATE_FILE)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest = {"format": 1, "step": step, "files": {name: _file_entry(tmp / name) for name in files}}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        for name in [*files, MANIFEST_FILE]:
            _fsync(tmp / name)
        _fsync(tmp)
        if final.exists():  # re-saving a step (resumed after a fallback): swap, never delete first
            old = run_dir / f".checkpoint-{step}.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _file_entry(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------------------ list
def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (complete = renamed into place with its state and adapter).

    This is cheap (no hashing); :func:`verify_checkpoint` checks the content.
    """
    found = []
    for p in Path(run_dir).glob("checkpoint-*"):
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / ADAPTER_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint is intact, else what is wrong (one line).

    With a manifest: every listed file must exist with its size and SHA-256.  Without one (written by an older
    version): the adapter and trainer state must load.
    """
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{MANIFEST_FILE} is unreadable"
        for name, entry in files.items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            size = f.stat().st_size
            if size != entry["size"]:
                return f"{name} has {size} bytes, the manifest says {entry['size']}"
        for name, entry in files.items():
            if sha256_file(path / name) != entry["sha256"]:
                return f"{name} does not match its SHA-256 in the manifest"
        return None
    try:
        from safetensors.torch import load_file

        load_file(str(path / ADAPTER_FILE))
        load_trainer_state(path)
    except Exception as exc:  # noqa: BLE001 - any failure to load means "damaged"; the message says which
        return f"cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    return None


def latest_valid_checkpoint(run_dir: Path, *, warn=None) -> tuple[int, Path] | None:
    """The newest intact checkpoint; damaged newer ones are moved to ``RUN/damaged/`` with a warning."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    for step, path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return step, path
        moved = _move_damaged(Path(run_dir), path)
        warn(
            f"warning: {path.name} is damaged ({problem}); moved it to {moved} and falling back to an earlier "
            "checkpoint"
        )
    return None


def _move_damaged(run_dir: Path, path: Path) -> Path:
    target_dir = run_dir / "damaged"
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    if target.exists():
        target = target_dir / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.rename(target)
    return target


def clean_partial(run_dir: Path) -> None:
    """Tidy up after a checkpoint write that was killed: drop temporary folders, put back a swapped-out checkpoint."""
    for p in Path(run_dir).glob(".checkpoint-*.old"):
        final = p.with_name(p.name[1 : -len(".old")])
        if p.is_dir() and not final.exists():
            p.rename(final)  # killed between the two renames of a re-save: the old copy is the complete one
        else:
            shutil.rmtree(p, ignore_errors=True)
    for p in Path(run_dir).glob(".checkpoint-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep: int | None) -> None:
    """Keep only the newest ``keep`` checkpoints (all of them when ``keep`` is None)."""
    if not keep:
        return
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_trainer_state(path: Path) -> dict:
    from tina.distributed import checkpoint_safe_types

    with torch.serialization.safe_globals(checkpoint_safe_types()):  # DeepSpeed's loss scaler, ZeRO stage enum
        return torch.load(Path(path) / STATE_FILE, weights_only=True, map_location="cpu")


def load_adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / ADAPTER_FILE))
