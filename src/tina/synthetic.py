"""Random-weight model folders with a real architecture's exact shape, and problems of an exact prompt length, built
offline -- for timing and memory benchmarks (``benchmarks/gpu_step.py``) where the hub is unreachable.

A timing does not depend on what the weights are, only on their shape (and on how many tokens are generated, which a
random model decides by sampling an EOS or not; see :func:`build_model_folder`).  ``SHAPES`` holds:

``qwen2-1.5b``  DeepSeek-R1-Distill-Qwen-1.5B's ``config.json`` shape (Tina's base model): Qwen2, hidden 1536,
                28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936, untied embeddings
                (``tie_word_embeddings: false``: 1.78B parameters, 3.55 GB in bfloat16, as the real checkpoint),
                rope_theta 10000, max_position_embeddings 131072.
``tiny``        the same architecture, tiny (CPU plumbing checks): hidden 128, 2 layers, vocab 1024.

The tokenizer is tina's builtin tiny byte-level BPE (:func:`tina.tiny.build_tokenizer`: Qwen2's exact pre-tokeniser,
ChatML template, ~320 ids).  The model's vocabulary is larger (151936 for ``qwen2-1.5b``): the ids above the
tokenizer's are never in a prompt, but the model samples them -- as the real model can sample its 271 ids above its
tokenizer's 151665.  Decoding skips them (the Rust tokenizer drops unknown ids), so completions decode to short text.
Each digit is one token for this tokenizer, which is how :func:`write_problems` hits an exact prompt length.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch

BUILD_VERSION = 1  # bump when the files written here change

_QWEN2 = dict(
    architectures=["Qwen2ForCausalLM"],
    model_type="qwen2",
    hidden_act="silu",
    rms_norm_eps=1e-6,
    attention_dropout=0.0,
    initializer_range=0.02,
    use_cache=True,
    use_sliding_window=False,
)
SHAPES: dict[str, dict] = {
    "qwen2-1.5b": dict(
        _QWEN2,
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
        max_position_embeddings=131072,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        sliding_window=4096,
        max_window_layers=21,
        dtype="bfloat16",
    ),
    "tiny": dict(
        _QWEN2,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=384,
        vocab_size=1024,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        sliding_window=2048,
        max_window_layers=2,
        dtype="float32",
    ),
}


def shape_key(shape: str, seed: int = 0) -> str:
    blob = json.dumps({"shape": SHAPES[shape], "seed": seed, "v": BUILD_VERSION}, sort_keys=True)
    return f"{shape}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def model_folder(shape: str, *, seed: int = 0, root: str | Path | None = None) -> Path:
    """The folder of a synthetic model of ``shape`` (built once, then reused): ``$TINA_CACHE_DIR/synthetic/...``."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    from tina.cache import build_atomic, cache_dir

    folder = Path(root) if root is not None else cache_dir() / "synthetic"
    return build_atomic(folder / shape_key(shape, seed), lambda tmp: build_model_folder(tmp, shape, seed=seed))


def build_model_folder(folder: str | Path, shape: str, *, seed: int = 0) -> Path:
    """Write config.json, generation_config.json, model.safetensors (random weights) and the tokenizer to ``folder``.

    Weights are drawn as a freshly initialised Qwen2 would be: every matrix and embedding N(0, 0.02), biases 0, norms 1.
    Such a model's next-token distribution is close to uniform over the whole vocabulary, so it samples its EOS about
    once in ``vocab_size`` tokens: nearly every completion runs to the token budget (the worst case for time).
    """
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from tina.tiny import build_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = dict(SHAPES[shape])
    tok = build_tokenizer(folder)
    if len(tok) > arch["vocab_size"]:
        raise ValueError(f"shape {shape}: vocab_size {arch['vocab_size']} is below the tokenizer's {len(tok)} ids")
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    tok_config = folder / "tokenizer_config.json"  # the tiny tokenizer says 256; this model reads much further
    data = json.loads(tok_config.read_text())
    data["model_max_length"] = arch["max_position_embeddings"]
    tok_config.write_text(json.dumps(data, indent=2))
    dtype = arch.pop("dtype")
    arch.pop("architectures"), arch.pop("model_type")
    config = Qwen2Config(bos_token_id=None, eos_token_id=eos, pad_token_id=pad, **arch)
    config.architectures = ["Qwen2ForCausalLM"]
    config.dtype = dtype
    config.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "pad_token_id": pad}, indent=2))
    # model_type qwen2 makes transformers rebuild the tokenizer with Qwen2's pipeline: the ids must not change.
    sample = "<|im_start|>user\n3+4-2 0123456789<|im_end|>\n<|im_start|>assistant\n"
    if (
        AutoTokenizer.from_pretrained(folder)(sample)["input_ids"]
        != Tokenizer.from_file(str(folder / "tokenizer.json")).encode(sample).ids
    ):
        raise RuntimeError("synthetic tokenizer ids changed on reload; the pre-tokenizer does not match Qwen2's")
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    names = dict(meta.named_parameters(remove_duplicate=True))  # tied weights appear once
    g = torch.Generator().manual_seed(seed)
    std = float(arch["initializer_range"])
    state = {}
    for name, p in names.items():
        if name.endswith("norm.weight"):
            t = torch.ones(p.shape)
        elif name.endswith(".bias"):
            t = torch.zeros(p.shape)
        else:
            t = torch.randn(p.shape, generator=g) * std
        state[name] = t.to(getattr(torch, dtype)).contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "tina_synthetic.json").write_text(
        json.dumps(
            {
                "shape": shape,
                "seed": seed,
                "parameters": sum(t.numel() for t in state.values()),
                "version": BUILD_VERSION,
                "note": "random weights with a real architecture's shape: for timing and memory only",
            },
            indent=2,
        )
    )
    return folder


def prompt_length(tokenizer, problem: str, *, template: str = "tokenizer", system_prompt: str | None = None) -> int:
    """Tokens of ``problem`` rendered as a training prompt (as :func:`tina.problems.render_prompts` does)."""
    from tina.prompts import render_prompt

    text = render_prompt(tokenizer, problem, system_prompt=system_prompt, template=template)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def write_problems(
    path: str | Path,
    tokenizer,
    *,
    n: int,
    prompt_tokens: int,
    template: str = "tokenizer",
    system_prompt: str | None = None,
    seed: int = 0,
) -> Path:
    """A JSONL file of ``n`` problems (random digits; answer "0") whose rendered prompts are exactly
    ``prompt_tokens`` tokens long with ``tokenizer`` (the synthetic one: one token per digit)."""
    rng = random.Random(seed)
    base = prompt_length(tokenizer, "", template=template, system_prompt=system_prompt)
    if prompt_tokens <= base:
        raise ValueError(f"prompt_tokens={prompt_tokens}: the template alone is {base} tokens")
    rows = []
    for i in range(n):
        digits = [str(rng.randrange(10)) for _ in range(prompt_tokens - base)]
        for _ in range(8):  # normally exact at once; adjust if a merge ever joins tokens
            got = prompt_length(tokenizer, "".join(digits), template=template, system_prompt=system_prompt)
            if got == prompt_tokens:
                break
            if got > prompt_tokens:
                del digits[prompt_tokens - got :]
            else:
                digits += [str(rng.randrange(10)) for _ in range(prompt_tokens - got)]
        else:
            raise RuntimeError(f"cannot build a prompt of exactly {prompt_tokens} tokens with this tokenizer")
        rows.append({"id": f"synthetic-{i}", "problem": "".join(digits), "answer": "0"})
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
