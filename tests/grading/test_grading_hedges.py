"""Hedged answers are never correct: several candidates for one answer, doubt words, several letters for one choice.

And what must stay correct: wrapper text around ONE answer, equation form, lists when the gold is a list, thousands
separators, fractions, ``\\pm`` when the gold has it, one value written in two forms.
"""

from __future__ import annotations

import random

import pytest

from tina.grading import Verdict, grade, grade_many

# (completion, gold): each one hedges, and most of them were graded correct before the rule.
HEDGED_MATH = [
    # doubt words and parentheticals inside the box
    (r"\boxed{7\text{ (or maybe 8)}}", "7"),
    (r"\boxed{8 \text{ (or 7)}}", "8"),
    (r"\boxed{7 \text{ maybe}}", "7"),
    (r"\boxed{\text{probably } 7}", "7"),
    (r"\boxed{7 \text{ (not sure)}}", "7"),
    (r"\boxed{7?}", "7"),
    # several candidates for one value
    (r"\boxed{7 \text{ or } 8}", "7"),
    (r"\boxed{7 or 8}", "8"),
    (r"\boxed{7, 8}", "7"),
    (r"\boxed{8; 7}", "8"),
    (r"\boxed{7 \text{ and } 8}", "8"),
    (r"\boxed{7 \pm 1}", "8"),
    (r"\boxed{8 \lor 9}", "8"),
    (r"\boxed{8 \vee 9}", "9"),
    (r"\boxed{x = 7 \text{ or } x = 8}", "8"),
    (r"\boxed{\text{either } 7 \text{ or } 8}", "7"),
    (r"\boxed{(7 \text{ or } 8)}", "7"),  # an "or" inside brackets cannot be split off: hedged
    (r"\boxed{\text{Evelyn or Bob}}", r"\text{Evelyn}"),
    # several boxes written next to each other, different values
    (r"\boxed{7} \boxed{8}", "8"),
    (r"so the answer is \boxed{7} or \boxed{8}.", "8"),
    (r"$\boxed{7}$, $\boxed{8}$", "8"),
    (r"\boxed{7} \text{ or } \boxed{8}", "7"),
    (r"\boxed{7}. Or maybe \boxed{8}", "8"),
    # a candidate or a doubt right after (or before) the box
    (r"\boxed{7} (or maybe 8)", "7"),
    (r"\boxed{8}, or 7.", "8"),
    (r"\boxed{8} or $9$", "8"),
    (r"\boxed{8}, probably", "8"),
    (r"The answer is probably \boxed{8}.", "8"),
    # lenient fallbacks
    ("The answer is probably $7$.", "7"),
    ("The answer is $7$ (or maybe $8$).", "7"),
    ("The answer is 7 or 8.", "7"),
    ("The answer is maybe 7.", "7"),
    ("Answer: 7, 8", "8"),
    ("so $x = 7$, or maybe $x = 8$", "8"),
    # after a closed think block
    ("<think>\nhm\n</think>\n" + r"\boxed{7\text{ (or maybe 8)}}", "7"),
]


@pytest.mark.parametrize(("completion", "gold"), HEDGED_MATH)
def test_hedged_math_answers_are_not_correct(completion, gold):
    verdict = grade(completion, gold)
    assert verdict.correct is False and verdict.reason == "hedged", verdict
    assert grade(completion, gold, extraction="boxed").correct is not True


HEDGED_GPQA = [
    ("Answer: C or D", "C"),
    ("Answer: D or C", "D"),
    ("Answer: C/D", "C"),
    ("Answer: C, D", "D"),
    ("Answer: C & D", "C"),
    ("Answer: C and D", "C"),
    ("Answer: (C) and (D)", "C"),
    ("Answer: C (or maybe D)", "C"),
    ("Answer: C. Or D.", "C"),
    ("Answer: C. Maybe (D)?", "C"),
    ("The answer is **C** or **D**", "C"),
    (r"\boxed{C,D}", "C"),
    (r"\boxed{C/D}", "D"),
    (r"\boxed{C \text{ or } D}", "C"),
    (r"\boxed{\text{(C) or (D)}}", "C"),
    ("Both fit: (C) or (D)", "D"),
    ("(C), (D)", "C"),
    ("Answer: C, though it could also be D.", "C"),
    ("Answer: C -- or, thinking about the spin states again, possibly (D).", "C"),
    ("The answer is B, maybe A", "B"),
]


@pytest.mark.parametrize(("completion", "gold"), HEDGED_GPQA)
def test_hedged_gpqa_answers_are_not_correct(completion, gold):
    verdict = grade(completion, gold, task="gpqa")
    assert verdict.correct is False and verdict.reason == "hedged", verdict


# (completion, gold): one answer, written with wrappers or as a list where the gold is a list -- all correct.
STILL_CORRECT = [
    (r"\boxed{12 \text{ cm}}", "12"),
    (r"\boxed{\text{(B)}}", r"\text{(B)}"),
    (r"\boxed{x = 3}", "3"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),
    (r"\boxed{(1, 2)}", "(1,2)"),
    (r"\boxed{x = 1, 2}", "1,2"),
    (r"\boxed{x = 1 \text{ or } x = -2}", "1, -2"),
    (r"\boxed{1 \text{ or } -2}", "-2, 1"),
    (r"\boxed{1} or \boxed{-2}", "1, -2"),  # adjacent boxes against a list gold: one list
    (r"\boxed{7, 8}", "7, 8"),
    (r"\boxed{1,000}", "1000"),
    (r"\boxed{10{,}000}", "10000"),
    (r"\boxed{1,000,000}", "1000000"),
    (r"\boxed{1,000 \text{ dollars}}", "1000"),
    (r"\boxed{3.5}", "3.5"),
    (r"\boxed{7/8}", r"\frac{7}{8}"),
    (r"\boxed{\frac{7}{8}}", "7/8"),
    (r"\boxed{1 \pm \sqrt{2}}", r"1\pm\sqrt{2}"),
    (r"\boxed{\pm 2}", "2, -2"),
    (r"\boxed{\overline{OR}}", r"\overline{OR}"),  # "OR" is a segment, not a connector
    (r"\boxed{7 \text{ (approximately)}}", "7"),  # one value; not a hedge
    (r"\boxed{7} \boxed{7}", "7"),  # the same value twice
    (r"\boxed{15\frac{39}{40}},$ or $\boxed{\frac{639}{40}}$ inches.", r"\frac{639}{40}"),  # MATH-500: one value
    (r"\boxed{7}, or equivalently $\frac{14}{2}$.", "7"),
    (
        r"The required condition is \boxed{MR=SRMC}, or marginal revenue is equal to short-run marginal cost.",
        "MR=SRMC",
    ),  # Minerva: prose restating the answer is not a candidate
    (r"First I got \boxed{5}, which fails the check; redoing the sum gives \boxed{7}", "7"),  # a correction
    ("Therefore, the final answer is: $\\boxed{7}$. I hope it is correct.", "7"),
    ("The final answer is $7$. Maybe I should double-check, but it holds.", "7"),  # the doubt is a new sentence
    ("we get $x=3$, and then $y = 7$", "7"),  # prose spans are not candidates
    ("The answer is 3.5.", "3.5"),
]


@pytest.mark.parametrize(("completion", "gold"), STILL_CORRECT)
def test_one_answer_with_wrappers_or_list_golds_stay_correct(completion, gold):
    verdict = grade(completion, gold)
    assert verdict.correct is True and verdict.reason == "ok", verdict


@pytest.mark.parametrize(
    "completion",
    [
        "Answer: C",
        "Answer: C. (Option (A) was a trap.)",
        r"\boxed{\text{(C)}}",
        "Options (A) and (D) fail; (C) works.",
        "Answer: C and not D",
        r"$\boxed{C. 42}$",
        "Answer: C. Maybe D looked tempting, but it violates parity.",
        "Answer: C (A and B violate unitarity)",
    ],
)
def test_one_letter_stays_correct(completion):
    verdict = grade(completion, "C", task="gpqa")
    assert (verdict.correct, verdict.extracted, verdict.reason) == (True, "C", "ok"), verdict


def test_hedged_verdict_shows_the_candidates():
    verdict = grade(r"so \boxed{7} or \boxed{8}", "8")
    assert verdict == Verdict(False, "7; 8", "hedged", "boxed")


# ---------------------------------------------------------------- property style: random values, many templates

HEDGE_TEMPLATES = [
    r"\boxed{{{a} \text{{ or }} {b}}}",
    r"\boxed{{{a}, {b}}}",
    r"\boxed{{{a}; {b}}}",
    r"\boxed{{{a} \text{{ (or maybe {b})}}}}",
    r"\boxed{{{a}}} \boxed{{{b}}}",
    r"\boxed{{{a}}} or \boxed{{{b}}}",
    r"\boxed{{{a}}}, $\boxed{{{b}}}$",
    r"\boxed{{{a}}} (or {b})",
    r"The answer is ${a}$ or ${b}$.",
    r"The answer is {a} or {b}.",
    r"\boxed{{x = {a} \text{{ or }} x = {b}}}",
    r"\boxed{{{a} \text{{ and }} {b}}}",
]


def test_no_hedge_between_two_values_is_ever_correct():
    rng = random.Random(0)
    completions, golds = [], []
    for _ in range(150):
        a, b = rng.sample(range(-50, 1000), 2)
        template = rng.choice(HEDGE_TEMPLATES)
        for gold in (a, b):  # whichever candidate the gold is
            completions.append(template.format(a=a, b=b))
            golds.append(str(gold))
    verdicts = grade_many(completions, golds)
    accepted = [(c, g) for c, g, v in zip(completions, golds, verdicts, strict=True) if v.correct is not False]
    assert not accepted, accepted[:5]
    assert all(v.reason == "hedged" for v in verdicts)


ONE_ANSWER_TEMPLATES = [
    r"\boxed{{{a}}}",
    r"\boxed{{{a} \text{{ cm}}}}",
    r"\boxed{{x = {a}}}",
    r"$\boxed{{{a}}}$.",
    r"\boxed{{{a}}}, as required.",
    "The final answer is ${a}$. I hope it is correct.",
    "<think>\nlet me try {b}... no.\n</think>\n\\boxed{{{a}}}",
]


def test_one_answer_in_any_wrapper_is_correct_and_the_other_value_is_not():
    rng = random.Random(1)
    completions, golds, expected = [], [], []
    for _ in range(100):
        a, b = rng.sample(range(-50, 100_000), 2)
        completion = rng.choice(ONE_ANSWER_TEMPLATES).format(a=a, b=b)
        completions += [completion, completion]
        golds += [str(a), str(b)]
        expected += [True, False]
    verdicts = grade_many(completions, golds)
    assert [v.correct for v in verdicts] == expected, [
        (c, g, v) for c, g, v, e in zip(completions, golds, verdicts, expected, strict=True) if v.correct is not e
    ][:5]


def test_gpqa_no_pair_of_letters_is_correct():
    connectors = [" or ", "/", ", ", " and ", " & ", " (or maybe ", " or maybe "]
    for first in "ABCD":
        for second in "ABCD":
            if first == second:
                continue
            for connector in connectors:
                for shape in ("Answer: {x}{c}{y}", r"\boxed{{{x}{c}{y}}}", "Answer: ({x}){c}({y})"):
                    completion = shape.format(x=first, c=connector, y=second)
                    for gold in (first, second):
                        verdict = grade(completion, gold, task="gpqa")
                        assert verdict.correct is False and verdict.reason == "hedged", (completion, gold, verdict)
