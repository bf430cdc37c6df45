"""Load a base model and tokenizer (hub id, local folder or builtin), attach / load / merge LoRA adapters with PEFT."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from tina.console import quiet_transformers
from tina.errors import ConfigError, TinaError

# PEFT still calls transformers' deprecated gradient-checkpointing names; the warning is not actionable for users.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA GPU is visible; use train.device=cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (AVX512-BF16 / AMX), where bf16 is faster than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name == "float16" and device.type == "cpu":
        raise ConfigError("model.dtype: float16 is not supported on CPU; use float32 or bfloat16")
    return _DTYPES[name]


def resolve_model_path(name_or_path: str) -> str:
    """The folder or hub id to load: builtins are built (once), a ``.gguf`` file is converted (once, see tina.gguf)."""
    if name_or_path.startswith("builtin:"):
        from tina.tiny import resolve_builtin

        return str(resolve_builtin(name_or_path))
    from tina.gguf import is_gguf, resolve_gguf

    if is_gguf(name_or_path):
        return str(resolve_gguf(name_or_path))
    return name_or_path


def load_tokenizer(path: str, *, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise TinaError(_load_error("tokenizer", path, exc)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # masks come from lengths, so pad == eos is safe
    tok.padding_side = "left"
    return tok


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    revision: str | None = None,
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    device: str = "auto",
):
    """Load (model, tokenizer).  A missing path or an unreachable hub gives one clear line, never a traceback."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    if attn_implementation == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise ConfigError(
                "model.attn_implementation: flash_attention_2 needs the flash-attn package and a CUDA GPU;"
                " use sdpa or eager"
            ) from None
        if dev.type != "cuda":
            raise ConfigError("model.attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa or eager")
    path = resolve_model_path(name_or_path)
    if path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().exists():
        raise TinaError(
            f"model folder not found: {path} — give an existing folder or a hub id such as "
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
        )
    _check_weights(path)
    tokenizer = load_tokenizer(path, revision=revision, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            revision=revision,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise TinaError(_load_error("model", path, exc)) from None
    model.to(dev)
    return model, tokenizer


def _check_weights(path: str) -> None:
    """A local folder without weights fails here, in one line, before the tokenizer gives a confusing error."""
    folder = Path(path).expanduser()
    if (
        not folder.is_dir()
        or any(folder.glob("*.safetensors"))
        or any(folder.glob("*.bin"))
        or any(folder.glob("*.index.json"))
    ):
        return
    ggufs = sorted(folder.glob("*.gguf"))
    fix = (
        f"it holds a GGUF file: pass the file itself, e.g. {ggufs[0]}"
        if ggufs
        else "give a folder with a full Hugging Face checkpoint (config.json, model.safetensors, tokenizer files)"
    )
    raise TinaError(f"model folder {path} has no weights (no model.safetensors or pytorch_model.bin) — {fix}")


def _load_error(what: str, path: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(path).exists() or path.startswith((".", "/", "~")):
        hint = "check the folder holds a Hugging Face checkpoint (config.json, weights, tokenizer files)"
    else:
        hint = "check the hub id, or download it first and pass the local folder (the hub may be unreachable)"
    return f"cannot load {what} '{path}': {first[:200]} — {hint}"


def attach_lora(
    model,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str],
    bias: str = "none",
    init_adapter: str | None = None,
):
    """Wrap ``model`` with a trainable LoRA adapter; every base weight is frozen."""
    from peft import LoraConfig, PeftModel, get_peft_model

    available = linear_module_names(model)
    missing = [m for m in target_modules if m not in available and m != "all-linear"]
    if missing:
        raise ConfigError(
            f"lora.target_modules: {', '.join(missing)} not found in the model; its linear layers are: "
            f"{', '.join(sorted(available))}"
        )
    if init_adapter:
        if not Path(init_adapter, "adapter_config.json").is_file():
            raise ConfigError(f"lora.init_adapter: no adapter_config.json in '{init_adapter}'")
        return PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if target_modules != ["all-linear"] else "all-linear",
        bias=bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def linear_module_names(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)} - {
        "lm_head"
    }


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def base_weights_digest(model) -> str:
    """SHA-256 over every non-LoRA parameter and buffer, byte for byte (to prove training left the base unchanged).

    FSDP shards are gathered tensor by tensor (a collective: every process calls this, in the same sorted order)."""
    from tina.distributed import full_tensor

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        tensor = full_tensor(tensor)
        h.update(name.removeprefix("base_model.model.").replace(".base_layer", "").encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
