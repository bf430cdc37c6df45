"""No reward credits a truncated, unfinished or hedged completion; the accuracy reward's extraction mode.

`RewardBatch.truncated` comes from the rollout (hit the token limit without EOS). `grade_batch` passes it on to the
grader, which calls those completions "unfinished"; every reward that reads verdicts scores them as wrong (0.0 for
accuracy, not None: None would drop them from the advantage instead of teaching the policy to avoid them).
"""

from __future__ import annotations

import pytest

from tina.errors import ConfigError
from tina.rewards import (
    RewardBatch,
    RewardSpec,
    accuracy,
    check_params,
    cosine,
    format_reward,
    grade_batch,
    length,
    length_l1_exact,
    length_l1_max,
    reasoning_steps,
    repetition_penalty,
    run_reward,
    score,
    tag_count,
)

R1_PROMPT = "<｜User｜>What is 2+2?<｜Assistant｜><think>\n"  # the R1-distill template opens the think block

# One group of a real step: (completion, truncated, grader reason, accuracy with boxed / lenient extraction)
STEP = [
    ("2+2 = 4.\n</think>\n\\boxed{4}", False, "ok", 1.0, 1.0),
    ("2+2 = 4.\n</think>\n\\boxed{4}", True, "unfinished", 0.0, 0.0),  # same text, but it hit the token limit
    ("2+2... so $y = 4$. Hmm, wait", False, "unfinished", 0.0, 0.0),  # never closed the think block
    ("2+2 = 4.\n</think>\n\\boxed{4 \\text{ (or maybe 5)}}", False, "hedged", 0.0, 0.0),
    ("2+2 = 4.\n</think>\n\\boxed{4} or \\boxed{5}", False, "hedged", 0.0, 0.0),
    ("2+2 = 4.\n</think>\nThe answer is $4$.", False, "ok", 0.0, 1.0),  # no box: boxed extraction gives nothing
    ("I think \\boxed{4}\n</think>\nNot sure.", False, "no_answer", 0.0, 0.0),  # the box is in the thought
    ("2+2 = 5.\n</think>\n\\boxed{5}", False, "ok", 0.0, 0.0),
]


def step_batch() -> RewardBatch:
    n = len(STEP)
    return RewardBatch(
        completions=[row[0] for row in STEP],
        answers=["4"] * n,
        prompts=[R1_PROMPT] * n,
        completion_lengths=[100] * n,
        group_size=n,
        truncated=[row[1] for row in STEP],
    )


def test_grade_batch_passes_truncation_and_prompts_to_the_grader():
    graded = grade_batch(step_batch())
    assert [v.reason for v in graded.verdicts] == [row[2] for row in STEP]
    assert graded.truncated == [row[1] for row in STEP]


def test_accuracy_gives_no_credit_to_unfinished_or_hedged_completions():
    graded = grade_batch(step_batch())
    assert accuracy(graded) == [row[3] for row in STEP]  # default extraction: boxed (Tina's reward)
    assert accuracy(graded, extraction="lenient") == [row[4] for row in STEP]
    assert run_reward("accuracy", graded, {"extraction": "lenient"}) == [row[4] for row in STEP]


def test_recipe_chooses_the_extraction():
    graded = grade_batch(step_batch())
    totals, components = score(graded, [RewardSpec("accuracy", 2.0, {"extraction": "lenient"}), RewardSpec("format")])
    assert components["accuracy"] == [row[4] for row in STEP]
    assert components["format"] == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # the truncated one gets no format credit
    assert totals[0] == 3.0 and totals[1] == 0.0 and totals[2] == 0.0


def test_extraction_parameter_is_validated():
    for name in ("accuracy", "cosine", "length", "length_l1_exact", "length_l1_max"):
        check_params(name, {"extraction": "boxed"})
        check_params(name, {"extraction": "lenient"})
        with pytest.raises(ConfigError, match="did you mean 'boxed'"):
            check_params(name, {"extraction": "boxd"})
    graded = grade_batch(step_batch())
    with pytest.raises(ConfigError, match="extraction"):
        run_reward("accuracy", graded, {"extraction": "anything"})
    with pytest.raises(ConfigError, match="extraction"):
        accuracy(graded, extraction="anything")


def test_truncated_flag_wins_over_a_hand_made_verdict(batch_of):
    batch = batch_of(["\\boxed{4}"] * 3, correct=[True, True, None])
    batch.truncated = [False, True, True]
    assert accuracy(batch) == [1.0, 0.0, 0.0]  # truncated: a real failure, not ungradable


def test_every_correctness_reward_scores_a_truncated_answer_as_wrong(batch_of):
    prompt = "What is 2+2? Think for maximum 100 tokens."
    batch = batch_of(["x" * 10, "x" * 10], correct=[True, True], prompts=[prompt] * 2, lengths=[100, 100], group_size=2)
    batch.truncated = [False, True]
    wrong = batch_of(
        ["x" * 10, "x" * 10], correct=[True, False], prompts=[prompt] * 2, lengths=[100, 100], group_size=2
    )
    assert cosine(batch) == cosine(wrong)
    assert length(batch) == length(wrong)
    assert length_l1_exact(batch) == length_l1_exact(wrong)
    assert length_l1_max(batch) == length_l1_max(wrong) == [0.5, 0.0]


# ---------------------------------------------------------------- RewardBatch.truncated


def test_batch_truncated_is_checked_and_selected():
    batch = RewardBatch(["a", "b"], ["1", "1"], ["p", "p"], [1, 2], 1, truncated=[False, True])
    assert batch.select([1]).truncated == [True]
    assert batch.is_truncated(1) and not batch.is_truncated(0)
    assert not RewardBatch(["a"], ["1"], ["p"], [1], 1).is_truncated(0)  # no flags: none truncated
    with pytest.raises(ValueError, match="truncated"):
        RewardBatch(["a", "b"], ["1", "1"], ["p", "p"], [1, 2], 1, truncated=[True])


def test_batch_truncated_accepts_array_bools():
    np = pytest.importorskip("numpy")
    batch = RewardBatch(["a", "b"], ["1", "1"], ["p", "p"], [1, 2], 1, truncated=np.array([False, True]))
    assert batch.truncated == [False, True] and all(type(t) is bool for t in batch.truncated)


# ---------------------------------------------------------------- text rewards on unfinished completions


def test_text_rewards_give_no_credit_to_a_truncated_completion():
    text = "<think>\nStep 1: add.\nStep 2: carry.\nStep 3: done.\n</think>\n\\boxed{4}"
    batch = RewardBatch([text, text], ["4"] * 2, ["p"] * 2, [50, 50], 1, truncated=[False, True])
    assert format_reward(batch) == [1.0, 0.0]
    assert tag_count(batch) == [1.0, 0.0]
    assert reasoning_steps(batch) == [1.0, 0.0]


def test_text_rewards_give_no_credit_to_a_think_block_left_open():
    steps = "Step 1: add.\nStep 2: carry.\nStep 3: done."
    batch = RewardBatch(
        ["<think>\n" + steps, steps, steps + "\n</think>\n\\boxed{4}", "<think>\nx\n</think>\ny\n<think>\n" + steps],
        ["4"] * 4,
        ["p", R1_PROMPT, R1_PROMPT, "p"],
        [50] * 4,
        1,
    )
    assert tag_count(batch) == [0.0, 0.0, 0.5, 0.0]
    assert reasoning_steps(batch) == [0.0, 0.0, 1.0, 0.0]
    assert format_reward(batch) == [0.0, 0.0, 1.0, 0.0]


def test_repetition_penalty_still_penalises_truncated_text():
    batch = RewardBatch(["a b c a b c"] * 2, ["1"] * 2, ["p"] * 2, [6, 6], 1, truncated=[False, True])
    assert repetition_penalty(batch) == [-0.25, -0.25]  # lifting a penalty would reward the truncation
