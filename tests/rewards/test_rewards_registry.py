"""Registry: names, import paths, parameters, and the errors a user sees for mistakes."""

from __future__ import annotations

import inspect
import sys
import textwrap

import pytest

from tina.errors import ConfigError, RewardError
from tina.rewards import REWARDS, RewardSpec, accuracy, check_params, get_reward, reward_params, run_reward, score

CUSTOM_MODULE = "tina_test_custom_rewards"
CUSTOM_SOURCE = textwrap.dedent(
    '''
    import math

    def bonus(batch, *, scale=2.0):
        """scale * number of characters"""
        return [scale * len(c) for c in batch.completions]

    def ints(batch):
        return [len(c) for c in batch.completions]  # ints are accepted and turned into floats

    def boom_on_marker(batch):
        return [1.0 / (0 if "boom" in c else 1) for c in batch.completions]

    def fails_on_whole_batch(batch):
        if len(batch) > 1:
            raise RuntimeError("group-level bug")
        return [0.0]

    def too_few(batch):
        return [0.0] * (len(batch) - 1)

    def strings(batch):
        return ["1.0"] * len(batch)

    def bools(batch):
        return [True] * len(batch)

    def nans(batch):
        return [math.nan] * len(batch)

    def a_dict(batch):
        return {"x": 1.0}

    def needs_target(batch, *, target):
        return [float(target)] * len(batch)

    def anything(batch, **kwargs):
        return [float(len(kwargs))] * len(batch)

    NOT_CALLABLE = 3
    '''
)


@pytest.fixture(scope="module", autouse=True)
def custom_module(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom_rewards")
    (root / f"{CUSTOM_MODULE}.py").write_text(CUSTOM_SOURCE)
    sys.path.insert(0, str(root))
    yield
    sys.path.remove(str(root))
    sys.modules.pop(CUSTOM_MODULE, None)


def path(fn_name: str) -> str:
    return f"{CUSTOM_MODULE}:{fn_name}"


# ---------------------------------------------------------------- names


def test_registry_has_the_eleven_rewards():
    assert set(REWARDS) == {
        "accuracy",
        "format",
        "boxed_number",
        "tag_count",
        "reasoning_steps",
        "cosine",
        "repetition_penalty",
        "length",
        "length_l1_exact",
        "length_l1_max",
        "overlong",
    }
    assert get_reward("accuracy") is accuracy


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'accuracy'"):
        get_reward("acuracy")
    with pytest.raises(ConfigError, match="did you mean 'repetition_penalty'"):
        get_reward("repetition_penalt")


def test_unknown_name_lists_builtins():
    with pytest.raises(ConfigError) as info:
        get_reward("zzz_nothing_like_it")
    assert "unknown reward 'zzz_nothing_like_it'" in str(info.value)
    assert "cosine" in str(info.value) and "package.module:function" in str(info.value)


# ---------------------------------------------------------------- parameters


def test_reward_params_defaults():
    assert reward_params("format") == {}
    assert reward_params("accuracy") == {"extraction": "boxed", "ungradable": "exclude"}
    assert reward_params("repetition_penalty") == {"ngram_size": 3, "max_penalty": -1.0}
    assert reward_params("reasoning_steps") == {"multiline": True}
    assert reward_params("cosine") == {
        "min_value_wrong": 0.0,
        "max_value_wrong": -0.5,
        "min_value_correct": 0.5,
        "max_value_correct": 1.0,
        "max_len": 1000,
        "extraction": "boxed",
        "clip": True,
        "ungradable": "exclude",
    }
    assert reward_params("length") == {"extraction": "boxed", "ungradable": "exclude"}
    assert reward_params("length_l1_exact") == {
        "alpha": 0.0003,
        "extraction": "boxed",
        "unit": "tokens",
        "ungradable": "exclude",
    }
    assert reward_params("length_l1_max") == {
        "alpha": 0.0003,
        "delta": 0.5,
        "extraction": "boxed",
        "unit": "tokens",
        "ungradable": "exclude",
    }


def test_check_params_rejects_unknown_with_suggestion():
    check_params("cosine", {"max_len": 3584})
    with pytest.raises(ConfigError, match="did you mean 'max_len'"):
        check_params("cosine", {"max_length": 3584})
    with pytest.raises(ConfigError, match="accepts: none"):
        check_params("format", {"strict": True})


def test_check_params_required_and_var_keyword():
    assert reward_params(path("needs_target")) == {"target": inspect.Parameter.empty}
    with pytest.raises(ConfigError, match="needs parameter"):
        check_params(path("needs_target"), {})
    check_params(path("needs_target"), {"target": 5})
    check_params(path("anything"), {"whatever": 1, "else": 2})  # **kwargs accepts any key


# ---------------------------------------------------------------- custom rewards by import path


def test_custom_reward_by_import_path(batch_of):
    batch = batch_of(["ab", "abcd"])
    assert get_reward(path("bonus"))(batch) == [4.0, 8.0]
    assert reward_params(path("bonus")) == {"scale": 2.0}
    assert run_reward(path("bonus"), batch, {"scale": 0.5}) == [1.0, 2.0]
    assert run_reward(path("ints"), batch) == [2.0, 4.0]
    totals, components = score(batch, [RewardSpec(path("bonus"), 0.5, {"scale": 1.0}), RewardSpec("format", 1.0)])
    assert totals == [1.0, 2.0]
    assert components == {path("bonus"): [2.0, 4.0], "format": [0.0, 0.0]}


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        (f"{CUSTOM_MODULE}:bonsu", "did you mean 'bonus'"),
        (f"{CUSTOM_MODULE}:NOT_CALLABLE", "not a function"),
        (f"{CUSTOM_MODULE}:", "package.module:function"),
    ],
)
def test_custom_reward_path_errors(name, fragment):
    with pytest.raises(ConfigError, match=fragment):
        get_reward(name)


# ---------------------------------------------------------------- a reward that misbehaves


def test_raising_reward_names_reward_and_sample(batch_of):
    batch = batch_of(["fine", "also fine", "this one goes boom here", "fine"])
    with pytest.raises(RewardError) as info:
        run_reward(path("boom_on_marker"), batch)
    message = str(info.value)
    assert path("boom_on_marker") in message
    assert "sample 2" in message
    assert "goes boom" in message  # excerpt of the completion
    assert "ZeroDivisionError" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_raising_reward_excerpt_is_short(batch_of):
    batch = batch_of(["boom " + "x" * 5000])
    with pytest.raises(RewardError) as info:
        run_reward(path("boom_on_marker"), batch)
    assert len(str(info.value)) < 300


def test_reward_failing_only_on_the_whole_batch(batch_of):
    with pytest.raises(RewardError, match="no single one alone.*group-level bug"):
        run_reward(path("fails_on_whole_batch"), batch_of(["a", "b"]))


@pytest.mark.parametrize(
    ("fn_name", "fragment"),
    [
        ("too_few", "returned 1 values for 2 completions"),
        ("strings", r"returned '1.0' \(str\) for sample 0"),
        ("bools", r"returned True \(bool\) for sample 0"),
        ("nans", "returned nan for sample 0"),
        ("a_dict", "returned a dict"),
    ],
)
def test_invalid_reward_output_is_a_reward_error(batch_of, fn_name, fragment):
    with pytest.raises(RewardError, match=fragment):
        run_reward(path(fn_name), batch_of(["a", "b"]))
