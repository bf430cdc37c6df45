"""Files every part of tina writes or checks: one hasher, atomic writes, and JSONL logs that survive a killed process.

>>> import pathlib, tempfile
>>> log = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
>>> append_jsonl(log, {"step": 1}); _ = open(log, "a").write('{"step": 2, "rew')  # killed mid-line
>>> read_jsonl(log)
[{'step': 1}]
>>> sha256_file(log)[:12] == __import__("hashlib").sha256(log.read_bytes()).hexdigest()[:12]
True
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def sha256_file(path: str | Path, *, block: int = 1 << 22) -> str:
    """The file's sha256 (hex), read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_jsonl(path: str | Path, obj: dict) -> None:
    """Append one JSON record as a line."""
    with open(path, "a") as fh:
        fh.write(json.dumps(obj) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL log (none when the file is missing); a line that does not parse -- the half-written
    last line of a killed process -- is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
