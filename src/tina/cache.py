"""Where tina keeps what it builds once: builtin and synthetic models, GGUF conversions (``$TINA_CACHE_DIR``, default
``~/.cache/tina``), each folder built atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("TINA_CACHE_DIR", Path.home() / ".cache" / "tina"))


def build_atomic(folder: Path, build) -> Path:
    """``folder`` (a model folder with model.safetensors), built by ``build(tmp)`` into a temporary folder first and
    renamed into place: a crash or a concurrent builder never leaves half a model behind."""
    if (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        build(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
