"""format, tag_count, reasoning_steps, repetition_penalty: hand-written completions, hand-computed values."""

from __future__ import annotations

import pytest

from tina.errors import ConfigError
from tina.rewards import format_reward, reasoning_steps, repetition_penalty, run_reward, tag_count
from tina.rewards.text import boxed_number

MULTILINE_GOOD = (
    "Okay, let me think.\nWe need 2 + 2.\n\nAdding gives 4.\n</think>\n\nThe answer is $\\boxed{4}$.\nDone."
)


# ---------------------------------------------------------------- format (Tina: exactly one "\n</think>\n")


def test_format_multiline_text_with_one_closing_tag_scores_one(batch_of):
    # The DOTALL trap: a regex like ^<think>.*?</think>$ without re.DOTALL scores 0 here.
    assert format_reward(batch_of([MULTILINE_GOOD])) == [1.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nreasoning\n</think>\n42", 1.0),  # the open tag does not matter
        ("a\n</think>\nb\n</think>\nc", 0.0),  # two closing tags
        ("just an answer \\boxed{4}", 0.0),  # no tag
        ("reasoning</think>\n4", 0.0),  # no newline before the tag
        ("reasoning\n</think>", 0.0),  # tag at the very end, no newline after
        ("reasoning\n</think>\n", 1.0),  # newline after, nothing else
        ("", 0.0),
    ],
)
def test_format_cases(batch_of, text, expected):
    assert format_reward(batch_of([text])) == [expected]


# ---------------------------------------------------------------- boxed_number (the SmolLM2 demo's format reward)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"2 + 3 = \boxed{5}", 1.0),
        (r"\boxed{-3.5}", 1.0),
        (r"\boxed{\frac{1}{2}}", 1.0),
        (r"\boxed{2 + 3}", 0.0),  # the question copied into the box: the hack the demo found before this rule
        (r"\boxed{x}", 0.0),
        (r"\boxed{5} or \boxed{6}", 0.0),
        ("5", 0.0),
    ],
)
def test_boxed_number_cases(batch_of, text, expected):
    assert boxed_number(batch_of([text])) == [expected]


# ---------------------------------------------------------------- tag_count (Tina: 0.5 + 0.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nx\n</think>\ny", 1.0),
        ("x\n</think>\ny", 0.5),  # typical R1-distill completion: "<think>\n" was pre-filled in the prompt
        ("<think>\nx", 0.0),  # think block never closed: unfinished, no credit (Tina gave 0.5 for the open tag)
        ("<think>\n<think>\nx\n</think>\n", 0.5),  # two open tags: no credit for the open tag
        ("<think>\nx\n</think>\n\n</think>\n", 0.5),  # two closing tags
        ("<answer>\n4\n</answer>", 0.0),  # open-r1's answer tags earn nothing in Tina's version
        ("", 0.0),
    ],
)
def test_tag_count_cases(batch_of, text, expected):
    assert tag_count(batch_of([text])) == [expected]


# ---------------------------------------------------------------- reasoning_steps: min(1, markers / 3)


@pytest.mark.parametrize(
    ("text", "markers"),
    [
        ("Step 1: add\nStep 2: carry\nStep 3: done", 3),
        ("First, add. Next, carry.", 2),
        ("1. add\n2. carry", 2),  # numbered list at line starts (re.MULTILINE; open-r1 counts only the first)
        ("- a\n- b\n- c", 2),  # "\n-": the first bullet has no newline before it
        ("intro\n* a\n* b", 2),
        ("Step 1: x\n* y\nFinally, z\nSecond, w", 4),  # capped at 1.0
        ("Step 12: big numbers count once", 1),
        ("no markers at all, just 3.14 inside", 0),
        ("", 0),
    ],
)
def test_reasoning_steps_cases(batch_of, text, markers):
    assert reasoning_steps(batch_of([text])) == [pytest.approx(min(1.0, markers / 3))]


def test_reasoning_steps_multiline_completion(batch_of):
    text = "Let me see.\nFirst, expand.\n1. square\n2. add\nSo 4.\n</think>\n\\boxed{4}"
    assert reasoning_steps(batch_of([text])) == [1.0]  # First, + 1. + 2. = 3 markers


# ---------------------------------------------------------------- repetition_penalty: (1 - unique/total) * max_penalty


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the cat sat on the mat", 0.0),  # 4 trigrams, all unique
        ("a b c a b c", -0.25),  # abc bca cab abc: 4 total, 3 unique
        ("a a a a a", -2 / 3),  # 3 trigrams, 1 unique
        ("Hello hello HELLO hello", -0.5),  # lower-cased: 2 trigrams, 1 unique
        ("a b c\na b c", -0.25),  # split on any whitespace, newlines included
        ("two words", 0.0),  # shorter than n words: no n-grams, no penalty
        ("", 0.0),
    ],
)
def test_repetition_penalty_default_trigrams(batch_of, text, expected):
    (value,) = repetition_penalty(batch_of([text]))
    assert value == pytest.approx(expected)


def test_repetition_penalty_no_repeats_is_plain_zero(batch_of):
    (value,) = repetition_penalty(batch_of(["one two three four"]))
    assert str(value) == "0.0"  # not "-0.0" in logs


def test_repetition_penalty_custom_params(batch_of):
    # bigrams of "a b a b": ab ba ab -> 3 total, 2 unique -> (1/3) * -0.5
    (value,) = repetition_penalty(batch_of(["a b a b"]), ngram_size=2, max_penalty=-0.5)
    assert value == pytest.approx(-1 / 6)


def test_repetition_penalty_positive_max_penalty_is_a_config_error(batch_of):
    with pytest.raises(ConfigError, match="max_penalty"):
        run_reward("repetition_penalty", batch_of(["a b c"]), {"max_penalty": 0.5})


def test_overlong_is_dapos_soft_punishment_on_the_rollout_budget():
    from tina.errors import ConfigError
    from tina.rewards.batch import RewardBatch
    from tina.rewards.text import overlong

    b = RewardBatch(["x"] * 5, ["1"] * 5, ["p"] * 5, [3000, 3072, 3328, 3584, 3584], 1, max_new_tokens=3584)
    assert overlong(b, cache=512) == [0.0, 0.0, -0.5, -1.0, -1.0]  # by hand: (3072 - n) / 512 past 3072
    assert overlong(b, cache=512, max_len=4096) == [0.0] * 5  # a larger budget: nothing is near its end
    with pytest.raises(ConfigError, match="needs max_len"):
        overlong(RewardBatch(["x"], ["1"], ["p"], [5], 1))
