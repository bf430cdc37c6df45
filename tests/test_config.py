"""Recipes are strict: unknown keys, wrong types and impossible values are one-line errors with exit code 2."""

from __future__ import annotations

import pytest
import yaml

from tina import cli
from tina.config import Config, load_config, to_dict, to_yaml
from tina.errors import ConfigError


def test_demo_recipe_loads_by_name_with_required_train_keys():
    cfg = load_config("demo")
    assert isinstance(cfg, Config)
    for key in ("max_steps", "save_steps", "seed", "learning_rate"):
        assert hasattr(cfg.train, key)
    assert cfg.train.batch_size % cfg.rollout.num_generations == 0


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.max_step=3", "unknown key 'train.max_step' (did you mean 'train.max_steps'?)"),
        ("train.learning_rat=1e-4", "did you mean 'train.learning_rate'?"),
        ("algoritm.beta=0.1", "unknown recipe section 'algoritm' (did you mean 'algorithm'?)"),
        ("algorithm.scale_reward=none", "did you mean 'algorithm.scale_rewards'?"),
        ("rewards.acuracy.weight=1", "did you mean 'accuracy'?"),
        ("rewards.cosine.max_lenght=10", "did you mean 'max_len'?"),
    ],
)
def test_typos_are_errors_with_suggestions(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.max_steps=abc", "train.max_steps: expected an integer, got 'abc'"),
        ("train.max_steps=2.5", "train.max_steps: expected an integer"),
        ("train.gradient_checkpointing=maybe", "expected true or false"),
        ("train.batch_size=100", "train.batch_size: 100 completions is not divisible by rollout.num_generations (8)"),
        ("rollout.num_generations=1", "rollout.num_generations: must be >= 2"),
        ("train.learning_rate=0", "train.learning_rate: must be > 0"),
        ("train.stop_step=500", "train.stop_step: must be in 1..train.max_steps"),
        ("algorithm.objective=grpoo", "did you mean 'grpo'?"),
        ("model.dtype=float64", "model.dtype: 'float64' is not one of"),
    ],
)
def test_wrong_types_and_impossible_values(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    assert expected in str(err.value)


def test_overrides_parse_values_as_yaml():
    cfg = load_config(
        "demo",
        [
            "train.max_steps=20",
            "train.learning_rate=1e-4",
            "lora.target_modules=[q_proj, v_proj]",
            "train.gradient_checkpointing=true",
            "rewards.format.weight=0.5",
        ],
    )
    assert cfg.train.max_steps == 20 and cfg.train.learning_rate == 1e-4
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.gradient_checkpointing is True
    assert {r.name: r.weight for r in cfg.rewards}["format"] == 0.5


def test_resolved_config_is_a_recipe_that_reproduces_itself(tmp_path):
    cfg = load_config("demo", ["train.max_steps=7", "rewards.cosine.max_len=500"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert to_dict(again) == to_dict(cfg)
    assert yaml.safe_load(path.read_text())["rewards"]["cosine"] == {"weight": 1.0, "max_len": 500}


def test_unknown_recipe_name_suggests_a_bundled_one():
    with pytest.raises(ConfigError, match="did you mean 'demo'"):
        load_config("dmeo")


def test_yaml_1_1_float_strings_are_accepted(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  learning_rate: 1e-6\n")  # YAML 1.1 reads this as a string
    assert load_config(path).train.learning_rate == 1e-6


def test_cli_check_exits_2_with_one_line(capsys):
    code = cli.main(["check", "demo", "--set", "train.max_step=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "did you mean 'train.max_steps'?" in err
    assert "Traceback" not in err


def test_cli_check_prints_resolved_config(capsys):
    assert cli.main(["check", "demo", "--set", "train.max_steps=20"]) == 0
    out = capsys.readouterr().out
    body = yaml.safe_load("\n".join(line for line in out.splitlines() if not line.startswith("#")))
    assert body["train"]["max_steps"] == 20 and body["model"]["name_or_path"] == "builtin:tiny-arith"


def test_cli_recipes_lists_demo(capsys):
    assert cli.main(["recipes"]) == 0
    assert "demo" in capsys.readouterr().out


def test_data_schema_keeps_its_old_name_data_adapter(capsys):
    """``data.adapter`` (a recipe or a run's config.yaml from before "adapter" meant LoRA adapters only) still reads
    as ``data.schema``; both at once is one line naming the fix."""
    assert load_config("demo", ["data.adapter=limr"]).data.schema == "limr"
    assert load_config("demo", ["data.schema=limr"]).data.schema == "limr"
    assert "adapter" not in to_dict(load_config("demo"))["data"]  # what is written is the new name
    code = cli.main(["check", "demo", "--set", "data.adapter=limr", "--set", "data.schema=plain"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "data.schema is given twice, also under its old name data.adapter; keep data.schema only" in err
