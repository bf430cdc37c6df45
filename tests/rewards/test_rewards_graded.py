"""accuracy, cosine, length (Kimi-1.5), L1 exact/max: verdicts built by hand, values computed by hand."""

from __future__ import annotations

import math

import pytest

from tina.errors import ConfigError, RewardError
from tina.rewards import (
    accuracy,
    cosine,
    length,
    length_l1_exact,
    length_l1_max,
    run_reward,
    target_tokens,
)

# ---------------------------------------------------------------- accuracy


def test_accuracy_from_verdicts(batch_of):
    batch = batch_of(["\\boxed{4}", "\\boxed{5}", "\\boxed{4}"], correct=[True, False, None])
    assert accuracy(batch) == [1.0, 0.0, None]  # ungradable (gold unparseable / timeout) is None, never 1.0


def test_accuracy_on_ungraded_batch_is_a_caller_bug(batch_of):
    batch = batch_of(["\\boxed{4}"])
    with pytest.raises(ValueError, match="grade_batch"):
        accuracy(batch)
    with pytest.raises(ValueError, match="grade_batch"):
        run_reward("accuracy", batch)


# ---------------------------------------------------------------- cosine (length in characters, max_len 1000)


@pytest.mark.parametrize(
    ("n_chars", "correct", "expected"),
    [
        (0, True, 1.0),  # shortest correct: max_value_correct
        (500, True, 0.75),  # half way: cos(pi/2) = 0 -> midpoint
        (1000, True, 0.5),  # at max_len: min_value_correct
        (5000, True, 0.5),  # past max_len: clipped (open-r1's cosine would swing back up)
        (0, False, 0.0),  # wrong, short: min_value_wrong (open-r1 names, swapped for wrong answers)
        (500, False, -0.25),
        (1000, False, -0.5),  # wrong, long: max_value_wrong
        (2000, False, -0.5),
    ],
)
def test_cosine_defaults(batch_of, n_chars, correct, expected):
    (value,) = cosine(batch_of(["x" * n_chars], correct=[correct]))
    assert value == pytest.approx(expected, abs=1e-12)


def test_cosine_ungradable_is_none(batch_of):
    assert cosine(batch_of(["x" * 10], correct=[None])) == [None]


def test_cosine_custom_params(batch_of):
    # progress 25/100 -> cos(pi/4) = sqrt(2)/2; value = 0 + 0.5 * (2 - 0) * (1 + sqrt(2)/2)
    (value,) = cosine(batch_of(["x" * 25], correct=[True]), min_value_correct=0.0, max_value_correct=2.0, max_len=100)
    assert value == pytest.approx(1 + math.sqrt(2) / 2)
    # wrong answers with the Yeo et al. direction (longer wrong answers penalised less): -1 at length 0, 0 at max_len
    batch = batch_of(["", "x" * 100], correct=[False, False])
    values = cosine(batch, min_value_wrong=-1.0, max_value_wrong=0.0, max_len=100)
    assert values == [pytest.approx(-1.0), pytest.approx(0.0)]


def test_cosine_bad_max_len(batch_of):
    with pytest.raises(ConfigError, match="max_len"):
        run_reward("cosine", batch_of(["x"], correct=[True]), {"max_len": 0})


# ---------------------------------------------------------------- length (Kimi-1.5, group-relative, characters)


def test_length_reward_per_group(batch_of):
    texts = [
        # group 0: lengths 10, 20, 30; correct, correct, wrong
        "a" * 10,
        "a" * 20,
        "a" * 30,
        # group 1: lengths 10, 20, 30; the SHORT one is wrong -> lambda 0.5 clipped to 0
        "b" * 10,
        "b" * 20,
        "b" * 30,
        # group 2: all equal lengths -> all 0, whatever the correctness
        "c" * 7,
        "d" * 7,
        "e" * 7,
        # group 3: lengths 1000, 1100, 1050 -> min/max from this group only
        "f" * 1000,
        "f" * 1100,
        "f" * 1050,
    ]
    correct = [True, True, False, False, True, True, True, False, True, True, True, False]
    values = length(batch_of(texts, correct=correct, group_size=3))
    assert values == pytest.approx(
        [
            0.5,
            0.0,
            -0.5,
            0.0,
            0.0,
            -0.5,
            0.0,
            0.0,
            0.0,
            0.5,
            -0.5,
            0.0,  # wrong at lambda 0.0 -> min(0, 0.0) = 0
        ]
    )


def test_length_reward_ungradable_is_none_but_its_length_counts(batch_of):
    # lengths 10 (ungradable), 20, 30: min is 10, so the correct length-20 one gets 0.5 - 10/20 = 0
    values = length(batch_of(["a" * 10, "a" * 20, "a" * 30], correct=[None, True, True], group_size=3))
    assert values == [None, 0.0, -0.5]


def test_length_reward_incorrect_never_positive(batch_of):
    values = length(batch_of(["a", "aaaa", "aaaaaaa"], correct=[False, False, False], group_size=3))
    assert values == [0.0, 0.0, -0.5]  # lambdas 0.5, 0, -0.5 -> min(0, .)


# ---------------------------------------------------------------- L1 (target tokens in the prompt, lengths in tokens)


@pytest.mark.parametrize(
    ("prompt", "target"),
    [
        ("Solve x + 1 = 2.\n\nThink for 512 tokens.", 512),
        ("Solve it. Think for maximum 3600 tokens.", 3600),
        ("solve it. think for maximum 4,096 tokens", 4096),
        ("Think for at most 300 tokens.", 300),
        ("Think for 100 tokens. Actually, think for 200 tokens.", 200),  # the last one wins
        ("Think carefully about the tokens.", None),
        ("", None),
    ],
)
def test_target_tokens(prompt, target):
    assert target_tokens(prompt) == target


def test_l1_exact_hand_values(batch_of):
    prompt = "What is 2+2? Think for 1000 tokens."
    batch = batch_of(
        ["a"] * 6,
        correct=[True, True, True, False, False, None],
        lengths=[1000, 1500, 500, 1000, 2000, 1000],
        prompts=[prompt] * 6,
    )
    values = length_l1_exact(batch)
    assert values[:5] == pytest.approx([1.0, 0.85, 0.85, 0.0, -0.3])
    assert values[5] is None
    # alpha is a parameter: 1 - 0.001 * 500
    assert length_l1_exact(batch, alpha=0.001)[1] == pytest.approx(0.5)


def test_l1_max_hand_values(batch_of):
    prompt = "What is 2+2? Think for maximum 1000 tokens."
    batch = batch_of(
        ["a"] * 7,
        correct=[True, True, True, True, False, True, None],
        lengths=[1000, 0, 2000, 3000, 500, 500, 500],
        prompts=[prompt] * 7,
    )
    values = length_l1_max(batch)
    # 0.5 at the budget; 0.3 + 0.5; -0.3 + 0.5; clip(-0.1) = 0; wrong -> 0; 0.15 + 0.5
    assert values[:6] == pytest.approx([0.5, 0.8, 0.2, 0.0, 0.0, 0.65])
    assert values[6] is None
    assert length_l1_max(batch, delta=1.0)[5] == 1.0  # clip(1.15) = 1


def test_l1_uses_completion_lengths_not_characters(batch_of):
    batch = batch_of(["x" * 5000], correct=[True], lengths=[1000], prompts=["Think for 1000 tokens."])
    assert length_l1_exact(batch) == [1.0]


@pytest.mark.parametrize("name", ["length_l1_exact", "length_l1_max"])
def test_l1_missing_target_is_a_clear_reward_error(batch_of, name):
    batch = batch_of(["a", "b"], correct=[True, True], prompts=["Think for 100 tokens.", "What is 2+2?"])
    with pytest.raises(RewardError) as info:
        run_reward(name, batch)
    message = str(info.value)
    assert name in message and "prompt 1" in message and "Think for N tokens" in message
