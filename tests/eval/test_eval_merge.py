"""`tina merge`: the merged model reloads with AutoModelForCausalLM and gives the logits of base + adapter."""

from __future__ import annotations

import copy
import json

import torch

from tina.cli import main


def test_merge_round_trip(tiny_run, tiny_base, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = tiny_run / "checkpoint-2"
    out = tmp_path / "merged"
    assert main(["merge", str(ckpt), "--output-dir", str(out), "--dtype", "float32"]) == 0
    assert "builtin:tiny-random" in capsys.readouterr().out  # the base came from RUN/config.yaml
    for name in (
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "tina_merge.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("adapter_*"))
    provenance = json.loads((out / "tina_merge.json").read_text())
    assert provenance["base_model"] == "builtin:tiny-random" and len(provenance["adapter_sha256"]) == 64

    base, tokenizer = tiny_base
    reference = PeftModel.from_pretrained(copy.deepcopy(base), str(ckpt)).eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tokenizer(["3+4-2 and then 9+9-1", "\\boxed{5}"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = reference(**ids).logits  # [B, T, V]
        got = merged(**ids).logits
        plain = base(**ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(plain, want, atol=1e-3)  # the adapter matters, so the comparison means something
    assert AutoTokenizer.from_pretrained(out)("3+4-2")["input_ids"] == tokenizer("3+4-2")["input_ids"]


def test_merge_errors_are_one_line(tiny_run, tmp_path, capsys):
    assert main(["merge", str(tmp_path), "--output-dir", str(tmp_path / "m")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert main(["merge", str(tiny_run / "checkpoint-1"), "--output-dir", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err
