"""Many checkpoints, one base model: adapter swapping, paired comparisons, selection without test leakage."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch
import transformers
from eval_util import probe_answer

import tina.rollout
from tina.cli import main
from tina.rollout import HFEngine

FAST = [
    "--benchmarks",
    "arith",
    "--limit",
    "6",
    "--samples",
    "2",
    "--max-new-tokens",
    "12",
    "--temperature",
    "1.0",
    "--dtype",
    "float32",
    "--no-progress",
]


def _samples(out):
    by_model = defaultdict(list)
    for line in (out / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_model[(row["model"], row["phase"])].append(row["completion"])
    return by_model


@pytest.fixture
def count_base_loads(monkeypatch):
    calls = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", staticmethod(counting))
    return calls


@pytest.mark.parametrize("mode", ["--merge-adapters", "--no-merge-adapters"])
def test_run_loads_the_base_once_and_swaps_adapters(tiny_run, tmp_path, count_base_loads, mode):
    ledger_before = json.loads((tiny_run / "ledger.json").read_text())
    out = tmp_path / "eval"
    assert main(["eval", "--run", str(tiny_run), "--output-dir", str(out), mode, *FAST]) == 0
    assert len(count_base_loads) == 1  # one base model for the base and three checkpoints

    results = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in results["models"]] == ["base", "checkpoint-1", "checkpoint-2", "checkpoint-3"]
    shas = [m["adapter_sha256"] for m in results["models"]]
    assert shas[0] is None and len(set(shas[1:])) == 3
    samples = _samples(out)
    base, c1, c2, c3 = (samples[(m, "test")] for m in ("base", "checkpoint-1", "checkpoint-2", "checkpoint-3"))
    assert len(base) == 6 * 2
    assert c1 == base  # a zero LoRA update samples exactly the base model's completions (same seeded streams)
    assert c2 != base and c3 != base and c2 != c3  # each swap really changed the live model
    entry = results["results"]["checkpoint-2"]["arith"]
    assert entry["vs_base"]["baseline"] == "base" and entry["vs_previous"]["baseline"] == "checkpoint-1"
    assert results["results"]["checkpoint-1"]["arith"]["vs_base"]["diff"] == 0.0
    assert (out / "accuracy_by_checkpoint.png").stat().st_size > 1000
    assert "Paired difference vs base" in (out / "results.md").read_text()

    ledger = json.loads((tiny_run / "ledger.json").read_text())  # the evaluation was booked in the run's ledger
    booked = ledger["phases"]["evaluation"] - ledger_before["phases"]["evaluation"]
    runs_before = ledger_before.get("evaluation", {}).get("runs", 0)
    assert booked > 0 and ledger["evaluation"]["runs"] == runs_before + 4  # one entry per model and benchmark
    entries = [json.loads(x) for x in (tiny_run / "eval_costs.jsonl").read_text().splitlines()][-4:]
    assert [e["label"] for e in entries] == [
        f"tina eval: {m} on arith" for m in ("base", "checkpoint-1", "checkpoint-2", "checkpoint-3")
    ]
    assert all(e["tokens"] > 0 and e["tokens_per_second"] > 0 and e["engine"].startswith("hf") for e in entries)
    assert ledger["usd"] == pytest.approx(ledger["device_hours"] * 2.0, abs=1e-5)  # sums of rounded parts

    # the same adapter evaluated alone (no swapping, its own process state) gives the same completions
    alone = tmp_path / "alone"
    assert main(["eval", "--adapter", str(tiny_run / "checkpoint-3"), "--output-dir", str(alone), mode, *FAST]) == 0
    only = _samples(alone)
    assert list(only) == [("checkpoint-3", "test")]  # --adapter: no base unless asked
    assert only[("checkpoint-3", "test")] == c3
    assert json.loads((alone / "results.json").read_text())["models"][0]["adapter_sha256"] == shas[3]


class ProbeBackend(HFEngine):
    """Generates for real with the live model, then answers with a function of the live weights (`probe_answer`).

    So an answer is right only if the checkpoint the runner *says* is active really is the one in the model.
    """

    def generate(self, prompts, sampling, keys=None):
        rollout = super().generate(prompts, sampling, keys)
        answer = probe_answer(self.model)
        rollout.texts = [f"\\boxed{{{answer}}}"] * len(rollout.texts)
        rollout.truncated = torch.zeros_like(rollout.truncated)  # a finished answer (unfinished ones never count)
        return rollout


def test_select_on_holdout_picks_the_best_checkpoint_and_reports_only_it(tiny_run, tiny_base, tmp_path, monkeypatch):
    import copy

    from peft import PeftModel

    base, _ = tiny_base
    answers = {
        s: probe_answer(PeftModel.from_pretrained(copy.deepcopy(base), str(tiny_run / f"checkpoint-{s}")))
        for s in (1, 2, 3)
    }
    assert len({answers[1], answers[2], answers[3]}) == 3
    # validation problems whose answer only checkpoint-2 gives; a copy of checkpoint-2 at step 4 ties with it
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "checkpoint-1", "checkpoint-2", "checkpoint-3"):
        (run / name).symlink_to(tiny_run / name)
    (run / "checkpoint-4").symlink_to(tiny_run / "checkpoint-2")
    holdout = run / "holdout.jsonl"
    holdout.write_text(
        "".join(json.dumps({"id": f"h{i}", "problem": f"{i}+1-1", "answer": answers[2]}) + "\n" for i in range(4))
    )
    monkeypatch.setattr(tina.rollout, "HFEngine", ProbeBackend)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--run",
                str(run),
                "--select-on",
                str(holdout),
                "--select-prompt",
                "train",
                "--output-dir",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    sel = results["selection"]
    assert sel["chosen"] == "checkpoint-2" and sel["chosen_step"] == 2  # best, and earliest of the tie with step 4
    scores = {row["model"]: row["mean"] for row in sel["scores"]}
    assert scores == {"base": 0.0, "checkpoint-1": 0.0, "checkpoint-2": 1.0, "checkpoint-3": 0.0, "checkpoint-4": 1.0}
    assert sel["source"] == f"file:{holdout}" and sel["prompt"] == "train"
    assert [m["label"] for m in results["models"]] == ["base", "checkpoint-2"]  # only the chosen one is tested
    assert set(results["results"]) == {"base", "checkpoint-2"}
    phases = {(x["model"], x["phase"]) for x in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}
    assert ("checkpoint-3", "test") not in phases and ("checkpoint-3", "selection") in phases
    md = (out / "results.md").read_text()
    assert "Checkpoint selection: **checkpoint-2**" in md and "validation:holdout" in md
    assert (out / "accuracy_by_checkpoint.png").is_file()


def test_select_on_a_test_benchmark_is_refused(tiny_run, tmp_path, capsys):
    assert main(["eval", "--run", str(tiny_run), "--select-on", "arith", "--output-dir", str(tmp_path), *FAST]) == 2
    assert "leaks" in capsys.readouterr().err
    overlap = tmp_path / "val.jsonl"
    from tina.tasks import arith

    _, heldout = arith.split(n_eval=256, seed=0)
    overlap.write_text(json.dumps(heldout[0]) + "\n")
    assert (
        main(["eval", "--run", str(tiny_run), "--select-on", str(overlap), "--output-dir", str(tmp_path), *FAST]) == 2
    )
    assert "shares 1 problem(s) with the test benchmarks" in capsys.readouterr().err


def test_a_broken_adapter_is_a_one_line_error(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    blob = (run / "checkpoint-2" / "adapter_model.safetensors").read_bytes()
    (run / "checkpoint-2" / "adapter_model.safetensors").write_bytes(blob[:200])  # a truncated copy
    assert main(["eval", "--run", str(run), "--output-dir", str(tmp_path / "eval"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot load adapter" in err and "checkpoint-2" in err
