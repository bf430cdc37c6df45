"""`tina merge`: fold a LoRA checkpoint into its base model and save a plain transformers model.

The result (safetensors + tokenizer + generation config, and ``tina_merge.json`` with its provenance) loads with
``AutoModelForCausalLM.from_pretrained`` -- e.g. for vLLM or lighteval, as Tina's merge script did -- and gives the
same logits as base + adapter (up to floating-point rounding of the merge in the chosen dtype).
"""

from __future__ import annotations

import json
from pathlib import Path

from tina.errors import TinaError


def merge_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    model: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    echo=print,
) -> Path:
    """Merge ``checkpoint`` (a PEFT adapter folder) into its base model; write it to ``output_dir``.

    The base is ``model`` if given, else ``model.name_or_path`` of RUN/config.yaml next to the checkpoint, else the
    adapter's ``base_model_name_or_path``.
    """
    from peft import PeftModel

    from tina.eval.candidates import base_model_for, sha256_files
    from tina.models import base_weights_digest, load_model_and_tokenizer

    checkpoint, out = Path(checkpoint), Path(output_dir)
    if not (checkpoint / "adapter_config.json").is_file():
        raise TinaError(f"{checkpoint}: no adapter_config.json (expected a checkpoint-<step>/ PEFT adapter folder)")
    if out.exists() and any(out.iterdir()):
        raise TinaError(f"--output-dir {out} is not empty; choose a new folder")
    base_name = model or base_model_for(checkpoint)
    if not base_name:
        raise TinaError(f"cannot tell the base model of {checkpoint}; pass --model")
    base, tokenizer = load_model_and_tokenizer(base_name, dtype=dtype, device=device)
    digest = base_weights_digest(base)
    merged = PeftModel.from_pretrained(base, str(checkpoint)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    provenance = {
        "base_model": base_name,
        "base_weights_sha256": digest,
        "adapter": str(checkpoint.resolve()),
        "adapter_sha256": sha256_files(checkpoint),
        "dtype": str(next(merged.parameters()).dtype).removeprefix("torch."),
    }
    (out / "tina_merge.json").write_text(json.dumps(provenance, indent=2) + "\n")
    echo(f"merged {checkpoint} into {base_name} -> {out} ({provenance['dtype']})")
    return out
