"""What `tina eval` evaluates: the base and adapters -- a run's checkpoints, adapter folders, the base model an
adapter names, and the digest of an adapter's files."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tina.errors import TinaError

_CKPT = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class Candidate:
    """One model to evaluate: the base (adapter None) or the base with one adapter."""

    label: str
    adapter: Path | None = None
    step: int | None = None  # training step of a checkpoint-<step> folder


BASE = Candidate("base")


def run_checkpoints(run_dir: str | Path) -> list[Candidate]:
    """Every ``RUN/checkpoint-<step>/`` holding a PEFT adapter, oldest first."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        m = _CKPT.match(path.name)
        if m and (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file():
            found.append(Candidate(path.name, path, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def adapter_candidates(paths: list[str]) -> list[Candidate]:
    """Candidates for ``--adapter`` folders, labelled by folder name (``run/checkpoint-50`` if names collide)."""
    out, seen = [], Counter()
    folders = [Path(p) for p in paths]
    names = Counter(p.name for p in folders)
    for p in folders:
        if not (p / "adapter_config.json").is_file() or not any((p / w).is_file() for w in ADAPTER_WEIGHTS):
            raise TinaError(
                f"--adapter {p}: expected a PEFT adapter folder (adapter_config.json and "
                f"{' or '.join(ADAPTER_WEIGHTS)})"
            )
        label = p.name if names[p.name] == 1 else f"{p.parent.name}/{p.name}"
        seen[label] += 1
        if seen[label] > 1:
            label = f"{label}#{seen[label]}"
        m = _CKPT.match(p.name)
        out.append(Candidate(label, p, int(m.group(1)) if m else None))
    return out


def read_run_config(run_dir: str | Path) -> dict:
    """RUN/config.yaml as a plain dict ({} when absent); read loosely, only a few keys are used."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TinaError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    return data if isinstance(data, dict) else {}


def base_model_for(adapter_dir: str | Path) -> str | None:
    """The base model of an adapter: ``model.name_or_path`` of RUN/config.yaml next to it (portable: it keeps
    ``builtin:`` names and hub ids), else ``base_model_name_or_path`` of its adapter_config.json."""
    adapter_dir = Path(adapter_dir)
    name = (read_run_config(adapter_dir.parent).get("model") or {}).get("name_or_path")
    if name:
        return str(name)
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return cfg.get("base_model_name_or_path")


def sha256_files(folder: str | Path, names: tuple[str, ...] = ("adapter_config.json", *ADAPTER_WEIGHTS)) -> str:
    """sha256 over those of the named files that exist in a folder (name, then bytes, for each): the identity of an
    adapter."""
    h = hashlib.sha256()
    for name in names:
        if not (Path(folder) / name).is_file():
            continue
        h.update(name.encode())
        with open(Path(folder) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def weight_files(folder: str | Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in Path(folder).glob("*.safetensors")))


@contextmanager
def adapter_errors(adapter: Path):
    """Loading an adapter that is missing, corrupt or made for another model is a one-line TinaError."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
        raise TinaError(
            f"cannot load adapter {adapter}: {' '.join(lines[:2])[:300]} (is it a complete PEFT "
            f"adapter of this base model?)"
        ) from None
