"""Files every part of tina writes or checks: one hasher, atomic writes, JSONL logs that survive a killed process,
and the one strict reader of a user's JSONL (:func:`json_objects`: a bad line is an error naming ``file:line``).

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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tina.errors import DataError


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


def json_objects(lines: Iterable[str], shown: str, *, expect: str = "") -> list[dict]:
    """The JSON objects of a user's JSONL, one per non-blank line.  A line that is not valid JSON or not an object is
    a DataError naming ``shown:line``; ``expect`` (what a line should look like) ends that message.

    >>> json_objects(['{"a": 1}', "", '{"b": 2}'], "x.jsonl")
    [{'a': 1}, {'b': 2}]
    >>> json_objects(['{"a": 1}', "[1]"], "x.jsonl")
    Traceback (most recent call last):
    tina.errors.DataError: x.jsonl:2: expected a JSON object per line, got a list
    """
    end = f"; {expect}" if expect else ""
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{shown}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); fix or delete that line{end}"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{shown}:{lineno}: expected a JSON object per line, got a {json_type(obj)}{end}")
        rows.append(obj)
    return rows


def json_type(obj: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    return {list: "list", dict: "object", str: "string", bool: "boolean", type(None): "null"}.get(type(obj), "number")
