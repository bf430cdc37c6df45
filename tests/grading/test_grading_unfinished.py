"""Unfinished completions earn nothing, and the two extraction modes (training "boxed", evaluation "lenient").

Unfinished: a think block opened (by the completion or by the prompt) and never closed, a completion that hit the
token limit (``finished=False``), a last box that never closes. None of them has a final answer, whatever the
fallbacks could pick out of the thought.
"""

from __future__ import annotations

import pytest

from tina.grading import REASONS, Verdict, grade, grade_many

R1_PROMPT = (
    "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"  # R1-distill's generation prompt ends
)
# inside an open think block
UNFINISHED = Verdict(False, None, "unfinished")

UNCLOSED_THINK = [
    "<think> 2+2... then $y = 4$. Hmm, wait",
    "<think>\nThe answer is 4, but let me double check",
    "<think>\nSo the result is \\boxed{4}, hmm, is it?",
    "<think>\nAnswer: 4\nWait",
    "<think>\nfirst try\n</think>\n\\boxed{4}\n<think>\nreconsider: \\boxed{4}",  # a new block, never closed
]


@pytest.mark.parametrize("completion", UNCLOSED_THINK)
def test_unclosed_think_block_has_no_answer(completion):
    assert grade(completion, "4") == UNFINISHED
    assert grade(completion, "4", extraction="boxed") == UNFINISHED


@pytest.mark.parametrize(
    "completion",
    ["Let me compute: 2+2 = $4$. Hmm, wait", "The answer is $4$. Hmm, wait", "so \\boxed{4} but"],
)
def test_think_block_opened_by_the_prompt_must_be_closed(completion):
    assert grade(completion, "4", prompt=R1_PROMPT) == UNFINISHED
    assert grade(completion, "4", prompt="<|im_start|>assistant\n").correct is True  # no think block: all answer


def test_closed_think_block_is_graded_after_the_tag():
    done = "Let me compute 2+2 = 4.\n</think>\n\nThe sum is $\\boxed{4}$."
    assert grade(done, "4", prompt=R1_PROMPT) == Verdict(True, "4", "ok", "boxed")
    # the fallbacks never read the thought: the final part has no answer
    assert grade("<think>\nthe answer is 4\n</think>\nI cannot tell.", "4") == Verdict(False, None, "no_answer")
    assert grade("the answer is 4\n</think>\nI cannot tell.", "4", prompt=R1_PROMPT).reason == "no_answer"
    # a box in the thought does not count either
    assert grade("<think>\n\\boxed{4}\n</think>\nSo it is 5.", "4").correct is not True


def test_a_prompt_that_only_mentions_the_tags_opens_nothing():
    open_rs = "...enclosed within <think> </think> and <answer> </answer> tags<｜Assistant｜>"
    assert grade("\\boxed{4}", "4", prompt=open_rs).correct is True


@pytest.mark.parametrize(
    "completion",
    ["<think>\n2+2=4\n</think>\n\\boxed{4}", "\\boxed{4}", "The answer is $4$.", "Answer: 4"],
)
def test_a_completion_that_hit_the_token_limit_is_unfinished(completion):
    assert grade(completion, "4", finished=False) == UNFINISHED
    assert grade(completion, "4", finished=True).correct is True


def test_unclosed_last_box_is_unfinished():
    assert grade(r"so the answer is \boxed{\frac{1}{", "0.5") == UNFINISHED
    assert grade(r"Answer: 4, wait \boxed{5", "4") == UNFINISHED  # no fallback to the earlier phrase


def test_finished_flags_in_a_batch():
    completions = ["\\boxed{4}"] * 3 + ["<think>\nso $4$"]
    verdicts = grade_many(completions, ["4"] * 4, finished=[True, False, True, True])
    assert [v.reason for v in verdicts] == ["ok", "unfinished", "ok", "unfinished"]
    assert [v.correct for v in verdicts] == [True, False, True, False]  # a real failure, not ungradable (None)
    with pytest.raises(ValueError, match="finished"):
        grade_many(["a"], ["1"], finished=[True, False])
    with pytest.raises(ValueError, match="prompts"):
        grade_many(["a"], ["1"], prompts=[])


def test_gpqa_unfinished():
    assert grade("<think>\nAnswer: C, I think. Wait", "C", task="gpqa") == UNFINISHED
    assert grade("Answer: C", "C", task="gpqa", finished=False) == UNFINISHED
    assert grade("Answer: C", "C", task="gpqa", prompt=R1_PROMPT) == UNFINISHED
    assert grade("hm\n</think>\nAnswer: C", "C", task="gpqa", prompt=R1_PROMPT).correct is True


def test_no_prefix_of_a_thought_is_ever_correct():
    """Cut a good completion anywhere before the think block closes: never correct (property over every cut)."""
    body = "Let me see. 2+2 = $4$, so the answer is 4, i.e. \\boxed{4}. Answer: 4"
    full = "<think>\n" + body + "\n</think>\n\\boxed{4}"
    cuts = range(1, full.index("</think>") + len("</think>") - 1)
    verdicts = grade_many([full[:k] for k in cuts], ["4"] * len(cuts))
    assert all(v.correct is not True for v in verdicts)
    assert {v.reason for v in verdicts} <= {"unfinished", "no_answer"}
    assert grade(full, "4").correct is True
    # the same with the think block opened by the prompt
    tail = body + "\n</think>\n\\boxed{4}"
    cuts = range(1, tail.index("</think>") + len("</think>") - 1)
    verdicts = grade_many([tail[:k] for k in cuts], ["4"] * len(cuts), prompts=[R1_PROMPT] * len(cuts))
    assert all(v.correct is not True for v in verdicts)


# ---------------------------------------------------------------- extraction modes


def test_boxed_extraction_reads_only_the_last_box_of_the_final_part():
    lenient_only = [
        "The answer is $4$.",
        "Answer: 4",
        "so we get $x = 4$",
        "<think>\n\\boxed{4}\n</think>\nThe answer is 4.",  # the box is in the thought
        r"empty box \boxed{} but Answer: 4",
    ]
    for completion in lenient_only:
        assert grade(completion, "4").correct is True, completion
        assert grade(completion, "4", extraction="boxed") == Verdict(False, None, "no_answer"), completion
    assert grade("<think>\nhm\n</think>\n\\boxed{4}", "4", extraction="boxed") == Verdict(True, "4", "ok", "boxed")
    with pytest.raises(ValueError, match="extraction"):
        grade("\\boxed{4}", "4", extraction="strict")


CORPUS = [
    ("\\boxed{4}", "4"),
    ("The answer is $4$.", "4"),
    ("Answer: 5", "4"),
    ("$x = 4$", "4"),
    ("nothing", "4"),
    ("<think>\n\\boxed{4}", "4"),
    ("<think>\nhm\n</think>\nAnswer: 4", "4"),
    (r"\boxed{4 \text{ or } 5}", "4"),
    ("The answer is probably $4$.", "4"),
    (r"\boxed{x}", "E_{1},E_{2}"),
    ("Answer: x", "E_{1},E_{2}"),
    (r"\boxed{\frac{1}{2", "0.5"),
    (r"\boxed{} Answer: 4", "4"),
    (r"\boxed{4} and then Answer: 5", "5"),
]


@pytest.mark.parametrize("task", ["math", "gpqa"])
def test_boxed_mode_is_the_lenient_verdict_restricted(task):
    """`restrict` (used by the training rewards on lenient verdicts) gives exactly what boxed grading gives."""
    from tina.grading import restrict

    pairs = (
        CORPUS
        if task == "math"
        else [
            ("Answer: C", "C"),
            (r"\boxed{C}", "C"),
            (r"\boxed{B} hmm, Answer: C", "C"),
            (r"Answer: C \boxed{B}", "B"),
            ("(C)", "C"),
            ("C", "C"),
            ("Answer: C or D", "C"),
            (r"\boxed{C/D}", "C"),
            ("<think>\nAnswer: C", "C"),
        ]
    )
    completions, golds = [p[0] for p in pairs], [p[1] for p in pairs]
    lenient = grade_many(completions, golds, task=task)
    boxed = grade_many(completions, golds, task=task, extraction="boxed")
    assert [restrict(v, "boxed") for v in lenient] == boxed
    assert [restrict(v, "lenient") for v in lenient] == lenient
    assert {v.reason for v in lenient + boxed} <= set(REASONS)
