"""RewardBatch, score (weighted sum + per-component values) and grade_batch with the real grader."""

from __future__ import annotations

import pytest

from tina.errors import ConfigError
from tina.rewards import RewardBatch, RewardSpec, grade_batch, score

# ---------------------------------------------------------------- RewardBatch


def test_batch_groups_and_select(batch_of):
    batch = batch_of(["a", "b", "c", "d", "e", "f"], correct=[True, False, None, True, True, False], group_size=3)
    assert batch.num_groups == 2
    assert batch.group_slices() == [range(0, 3), range(3, 6)]
    sub = batch.select([4])
    assert sub.completions == ["e"] and sub.group_size == 1 and sub.verdicts[0].correct is True


def test_batch_rejects_inconsistent_lists():
    with pytest.raises(ValueError, match="answers"):
        RewardBatch(["a", "b"], ["1"], ["p", "p"], [1, 1], 1)
    with pytest.raises(ValueError, match="groups of 2"):
        RewardBatch(["a", "b", "c"], ["1"] * 3, ["p"] * 3, [1] * 3, 2)
    with pytest.raises(ValueError, match="group_size"):
        RewardBatch(["a"], ["1"], ["p"], [1], 0)


# ---------------------------------------------------------------- score


def test_score_weighted_sum_with_hand_values(batch_of):
    completions = [
        "Step 1: add.\n</think>\n\\boxed{4}",  # correct, formatted, 1 step marker
        "no tags here \\boxed{5}",  # wrong, unformatted, no markers
        "First, guess.\n</think>\nx\n</think>\n",  # gold unparseable -> ungradable
    ]
    batch = batch_of(completions, correct=[True, False, None])
    specs = [RewardSpec("accuracy", 2.0), RewardSpec("format", 1.0), RewardSpec("reasoning_steps", 0.5)]
    totals, components = score(batch, specs)

    assert list(components) == ["accuracy", "format", "reasoning_steps"]
    assert components["accuracy"] == [1.0, 0.0, None]
    assert components["format"] == [1.0, 0.0, 0.0]
    assert components["reasoning_steps"] == pytest.approx([1 / 3, 0.0, 1 / 3])
    assert totals[0] == pytest.approx(2.0 + 1.0 + 0.5 / 3)
    assert totals[1] == 0.0
    assert totals[2] is None  # ungradable: left out of the advantage by the caller, never scored as 1.0


def test_score_open_rs3_recipe_format_plus_cosine(batch_of):
    # Open-RS3: format 1, cosine 2. Correct 500-char answer with one closing tag: 1 + 2 * 0.75.
    good = "x" * 490 + "\n</think>\n"  # 500 characters
    batch = batch_of([good, "y" * 1000], correct=[True, False])
    totals, components = score(batch, [RewardSpec("format", 1.0), RewardSpec("cosine", 2.0)])
    assert len(good) == 500
    assert components["cosine"] == [pytest.approx(0.75), pytest.approx(-0.5)]
    assert totals == [pytest.approx(2.5), pytest.approx(-1.0)]


def test_score_passes_params(batch_of):
    batch = batch_of(["x" * 50], correct=[True])
    totals, _ = score(batch, [RewardSpec("cosine", 1.0, {"max_len": 50})])
    assert totals == [pytest.approx(0.5)]


def test_score_text_only_rewards_need_no_grading(batch_of):
    totals, components = score(batch_of(["a\n</think>\nb"]), [RewardSpec("format"), RewardSpec("tag_count")])
    assert totals == [1.5] and components == {"format": [1.0], "tag_count": [0.5]}


@pytest.mark.parametrize(
    ("specs", "fragment"),
    [
        ([], "no rewards"),
        ([RewardSpec("format"), RewardSpec("format", 2.0)], "listed twice"),
        ([RewardSpec("format", "1")], "weight must be a finite number"),
        ([RewardSpec("format", float("nan"))], "weight must be a finite number"),
        ([RewardSpec("format"), RewardSpec("cosine", 1.0, {"max_length": 10})], "did you mean 'max_len'"),
        ([RewardSpec("formatt")], "did you mean 'format'"),
    ],
)
def test_score_config_errors(batch_of, specs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        score(batch_of(["a"], correct=[True]), specs)


def test_score_accuracy_on_ungraded_batch_fails_loudly(batch_of):
    with pytest.raises(ValueError, match="grade_batch"):
        score(batch_of(["\\boxed{4}"]), [RewardSpec("accuracy")])


# ---------------------------------------------------------------- grade_batch with the real grader (integration)


def test_grade_batch_with_real_grader():
    try:
        from tina.grading import grade_many  # noqa: F401
    except ImportError as e:
        pytest.skip(f"tina.grading.grade_many is not importable yet ({e}); integration test skipped")

    batch = RewardBatch(
        completions=[
            "2 + 2 = 4.\n</think>\nThe answer is $\\boxed{4}$.",
            "2 + 2 = 5.\n</think>\nThe answer is $\\boxed{5}$.",
            "Hmm.\n</think>\nThe answer is $\\boxed{4}$.",
        ],
        answers=["4", "4", ""],  # an empty gold answer cannot be parsed
        prompts=["What is 2+2?"] * 3,
        completion_lengths=[20, 20, 10],
        group_size=3,
    )
    graded = grade_batch(batch, timeout=5.0)
    assert batch.verdicts is None  # the input is not modified
    assert [v.correct for v in graded.verdicts] == [True, False, None]
    totals, components = score(graded, [RewardSpec("accuracy", 2.0), RewardSpec("format", 1.0)])
    assert components["accuracy"] == [1.0, 0.0, None]
    assert totals == [3.0, 1.0, None]
