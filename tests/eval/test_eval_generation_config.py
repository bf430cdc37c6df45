"""The policy samples only what the flags say: a model folder's generation_config.json changes nothing.

Two copies of builtin:tiny-arith differ only in generation_config.json: one sets a strong repetition penalty, bigram
blocking, a top-k of 2, a minimum length and its own temperature/top-p (what transformers' ``generate`` would apply
for every field a caller leaves unset).  `tina eval` gives the very same completions for both folders, sampled
(seeded, ``--temperature 0.6``) and greedy (``--temperature 0``) -- while transformers' ``generate`` on the same two
folders does not (so the settings are strong enough to show if they leaked in).  results.json's protocol block records
the sampling settings as run.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tina.cli import main

LEAKY = {
    "do_sample": True,
    "repetition_penalty": 3.0,
    "no_repeat_ngram_size": 2,
    "top_k": 2,
    "temperature": 1.7,
    "top_p": 0.5,
    "min_new_tokens": 20,
}
FLAGS = [
    "--benchmarks",
    "arith",
    "--limit",
    "16",
    "--samples",
    "2",
    "--max-new-tokens",
    "32",
    "--dtype",
    "float32",
    "--no-progress",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tina.models import resolve_model_path

    root = tmp_path_factory.mktemp("genconfig")
    source = resolve_model_path("builtin:tiny-arith")
    plain, leaky = root / "plain", root / "leaky"
    shutil.copytree(source, plain)
    shutil.copytree(source, leaky)
    config = json.loads((leaky / "generation_config.json").read_text())
    (leaky / "generation_config.json").write_text(json.dumps({**config, **LEAKY}, indent=2))
    return plain, leaky


def completions(out):
    return {
        (r["problem_id"], r["sample"]): r["completion"]
        for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())
    }


def test_generation_config_would_change_transformers_generate(folders):
    """The control: transformers' generate applies the folder's settings, so they change greedy completions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain, leaky = folders
    tokenizer = AutoTokenizer.from_pretrained(plain)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "3+4-2"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    texts = []
    for folder in (plain, leaky):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        assert model.generation_config.repetition_penalty == (3.0 if folder == leaky else None)
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=32)  # the caller sets nothing else: the folder's config rules
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    assert texts[0] != texts[1], texts


@pytest.mark.parametrize("temperature", ["0.6", "0"])
def test_eval_ignores_generation_config(folders, tmp_path, temperature):
    plain, leaky = folders
    outs = []
    for folder in (plain, leaky):
        out = tmp_path / folder.name
        assert (
            main(["eval", "--model", str(folder), "--temperature", temperature, "--output-dir", str(out), *FLAGS]) == 0
        )
        outs.append(out)
    got_plain, got_leaky = completions(outs[0]), completions(outs[1])
    assert len(got_plain) == 16 * 2
    assert got_leaky == got_plain  # the very same completions, token for token
    if temperature == "0":
        assert all(got_plain[(p, 0)] == got_plain[(p, 1)] for p, _ in got_plain)  # greedy: samples agree
    else:
        assert sum(got_plain[(p, 0)] != got_plain[(p, 1)] for p, _ in got_plain) > 0  # really sampled
    # what the policy ran with is written down, from the flags
    for out in outs:
        entry = json.loads((out / "results.json").read_text())["results"]["base"]["arith"]
        s = entry["protocol"]["sampling"]
        assert s["temperature"] == float(temperature) and s["greedy"] == (temperature == "0")
        assert s["top_p"] == 0.95 and s["top_k"] == 0 and s["max_new_tokens"] == 32 and s["samples"] == 2
        assert s["seeds"] == [0]
        assert entry["mean"] >= 0.3  # real answers (tiny-arith: ~90% greedy, ~60% at T=0.6), not degenerate text
        assert "no repetition penalty" in s["processors"] and "not applied" in s["generation_config"]
        assert s["eos_token_ids"] == [2]  # <|im_end|>: the one thing taken from the folder
        assert "batch-invariant" in s["streams"]
