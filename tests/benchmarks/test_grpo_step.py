"""benchmarks/grpo_step.py: tina is measured through `tina train` on a plain recipe (tina's defaults untouched), and
memory is measured from outside, the same way for every engine: the largest process exactly, the process tree
sampled."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tina.config import TrainConfig, load_config

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grpo_step.py"


def load_script():
    spec = importlib.util.spec_from_file_location("grpo_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


grpo_step = load_script()

CHILD = """
import subprocess, sys, time
if len(sys.argv) == 1:
    held = b"x" * ({parent_mb} * 2**20)  # touched pages: resident
    subprocess.run([sys.executable, __file__, "child"], check=True)
else:
    held = b"x" * ({child_mb} * 2**20)
    time.sleep(3.0)
"""


def test_measure_sees_the_largest_process_exactly_and_the_tree_summed(tmp_path):
    """A parent holding 300 MB starts a child holding 600 MB: the largest process peaks at ~600 MB (not 900: the sum
    is not a process's peak), the tree at ~900 MB (a grader worker counts).  Slack for the interpreters and for the
    forked copy of the parent that the child's peak may include (seen: +178 MB on CI)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(parent_mb=300, child_mb=600))
    m = grpo_step.measure([sys.executable, str(script)], tmp_path, "child")
    assert m["rc"] == 0
    assert 600 <= m["peak_mb"] < 850, m
    assert m["tree_peak_mb"] >= 900, m


def test_tina_recipe_leaves_tinas_defaults_alone(tmp_path):
    """The benchmark's recipe is what a user writes: the loss pass size, the engine check and the probe stay tina's
    defaults, so the benchmark measures what `tina train` does with them."""

    class A:
        model, tina_dtype, rank, steps, device = "builtin:smollm2-135m-instruct", "float32", 8, 4, "cpu"

    data = grpo_step.write_problems(A.model, tmp_path / "problems.jsonl")
    recipe = grpo_step.tina_recipe(A, data)
    assert "max_tokens_per_pass" not in recipe["train"] and "probe_prompt" not in recipe["train"]
    assert "check_engine" not in recipe["rollout"]
    import yaml

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    cfg = load_config(str(tmp_path / "recipe.yaml"))
    assert (cfg.train.batch_size, cfg.rollout.num_generations, cfg.rollout.max_new_tokens) == (32, 4, 48)
    assert cfg.train.max_tokens_per_pass == TrainConfig().max_tokens_per_pass
    assert cfg.data.source == str(data) and cfg.data.template == "tokenizer"
    assert len(data.read_text().splitlines()) == 60  # builtin:addition's 100 problems less its 40 held out


def test_tina_row_comes_from_the_tina_train_command(tmp_path, capsys, monkeypatch):
    """End to end on the tiny model: `tina train` runs in a subprocess; s/step from its metrics.jsonl, the phases from
    its ledger.json, the peak from outside."""
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "grpo_step.py",
            "--engines",
            "tina,tina-all-rows",
            "--steps",
            "2",
            "--keep",
            str(tmp_path),
            "--tina-set",
            "train.save_steps=1",
        ],
    )
    grpo_step.main()
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| tina train (float32; train.save_steps=1)"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[4].replace(",", "")) > 100  # s/step; peak RSS (MB)
    assert (tmp_path / "tina-run" / "checkpoint-1").is_dir()  # the --set reached the command line
    assert "seconds per step by phase" in out
    every = next(
        line for line in out.splitlines() if line.startswith("tina train (float32; train.save_steps=1, train.skip")
    )
    assert "train.skip_zero_advantage=false" in every and every.endswith(
        " 0 % of the rows left out of the loss pass (no signal)"
    )
    assert (tmp_path / "tina-all-rows-run" / "metrics.jsonl").is_file()
