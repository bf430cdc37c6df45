"""Answer extraction on hand-written completions (pure functions, no worker)."""

from __future__ import annotations

import time

import pytest

from tina.grading import extract_answer, extract_boxed, extract_choice


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{5}", "5"),
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}"),
        (r"\boxed{a^{b^{c}}}", "a^{b^{c}}"),
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{3}", "3"),
        (r"\fbox{42}", "42"),
        (r"\boxed{1} and \fbox{2}", "2"),
        (r"\boxed {7}", "7"),
        (r"$\boxed 5$", "5"),
        (r"\boxed{}", ""),
        (r"\boxed{\text{(C)}}", r"\text{(C)}"),
    ],
)
def test_extract_boxed_finds_last_box(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no box here",
        r"\boxed{\frac{1}{2",  # truncated
        r"\boxed{1} and then \boxed{\frac{3}{4",  # the LAST box is truncated: no fallback to the first
        r"\boxedfoo{3}",  # not a box command
        "",
    ],
)
def test_extract_boxed_none(text):
    assert extract_boxed(text) is None


def test_extract_boxed_deeply_nested_and_huge_is_fast():
    deep = r"\boxed{" + "{" * 50_000 + "x" + "}" * 50_000 + "}"
    start = time.perf_counter()
    assert extract_boxed(deep) == "{" * 50_000 + "x" + "}" * 50_000
    assert extract_boxed(r"\boxed{" + "{" * 1_000_000) is None
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"Thus the answer is \boxed{12}.", "12"),
        (r"\boxed{ 3 }", "3"),
        ("The final answer is: $25$. I hope it is correct.", "25"),
        (r"The final answer is $\frac{3}{4}$", r"\frac{3}{4}"),
        ("**Answer:** 17", "17"),
        ("Answer: 3.5.", "3.5"),
        ("so the answer is 1,000", "1,000"),
        ("we get $x=3$, then $y = 4$", "y = 4"),
        (r"hence \[ 2\sqrt{2} \]", r"2\sqrt{2}"),
        (r"hence \( 9 \) remains", "9"),
        (r"The answer is 5, and \boxed{6}", "6"),  # the box wins over a phrase
        (r"empty box \boxed{} but Answer: 8", "8"),  # an empty box falls through to the fallbacks
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    ["I do not know.", "", "   ", r"answer \boxed{\frac{1}{2", r"Answer: 4, wait \boxed{5"],
)
def test_extract_answer_none(text):
    assert extract_answer(text) is None


def test_extract_answer_on_a_megabyte_is_fast():
    junk = "lorem ipsum $x$ " * 70_000  # ~1.1 MB
    start = time.perf_counter()
    assert extract_answer(junk + r"\boxed{7}") == "7"
    assert extract_answer(junk) == "x"
    assert extract_answer("\\[ " * 500_000) is None
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: C", "C"),
        ("The answer is (B).", "B"),
        ("the correct answer is **D**", "D"),
        (r"so \boxed{A}", "A"),
        (r"\boxed{\text{(c)}}", "C"),
        (r"$\boxed{B. 42}$", "B"),
        ("Options (A) and (D) fail; (C) works.", "C"),
        ("Answer: A ... on reflection, Answer: D", "D"),  # last one wins
        (r"\boxed{B} hmm, Answer: C", "C"),
        ("Answer: C. (Option (A) was a trap.)", "C"),  # a strong signal beats a later bare (A)
        ("B", "B"),
        ("(D)", "D"),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The answer is a subtle one.",  # lowercase article, not a choice
        "Answer: E",  # only four choices
        "I cannot decide.",
        r"\boxed{42}",
    ],
)
def test_extract_choice_none(text):
    assert extract_choice(text) is None


def test_extract_choice_more_letters():
    assert extract_choice("Answer: E", n_choices=5) == "E"
    with pytest.raises(ValueError):
        extract_choice("Answer: A", n_choices=0)


def test_extract_choice_on_many_unclosed_boxes_is_fast():
    start = time.perf_counter()
    assert extract_choice(r"\boxed{" * 200_000) is None
    assert extract_choice(r"\boxed{" * 200_000 + " Answer: B") == "B"
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------- final answer part, candidates, doubt (pure)


def test_final_part_and_opens_think():
    from tina.grading.extract import final_part, opens_think

    assert final_part("<think>\nhm\n</think>\nAnswer: 4") == "\nAnswer: 4"
    assert final_part("a</think>b</think>c") == "c"  # after the LAST closing tag
    assert final_part("<think>\nhm") is None
    assert final_part("<think>a</think>b<think>c") is None  # reopened, never closed
    assert final_part("plain answer 4") == "plain answer 4"
    assert final_part("plain answer 4", think_open=True) is None
    assert final_part("hm</think>4", think_open=True) == "4"
    assert opens_think("<｜Assistant｜><think>\n") and not opens_think("<｜Assistant｜>")
    assert not opens_think("Respond as <think>\n...\n</think>\n<answer>...</answer><｜Assistant｜>")


@pytest.mark.parametrize(
    "text",
    ["<think> so $y = 4$. Hmm, wait", "<think>\nThe answer is 4", "<think>\n\\boxed{4}"],
)
def test_extract_answer_ignores_an_unfinished_thought(text):
    from tina.grading import find_answer

    assert extract_answer(text) is None
    assert find_answer(text).status == "unfinished"


@pytest.mark.parametrize(
    ("text", "candidates", "doubt"),
    [
        (r"\boxed{7}", ("7",), None),
        (r"\boxed{7} \boxed{8}", ("7", "8"), None),
        (r"\boxed{6}, \boxed{7} or \boxed{8}", ("6", "7", "8"), None),
        (r"$\boxed{7}$ \text{ or } $\boxed{8}$", ("7", "8"), None),
        (r"\boxed{7} (or 8)", ("7", "8"), None),
        (r"\boxed{7}, or equivalently $\frac{14}{2}$", ("7", r"\frac{14}{2}"), None),
        (r"\boxed{7} or maybe \boxed{8}", ("7", "8"), "maybe"),
        (r"the answer is probably \boxed{7}", ("7",), "probably"),
        (r"\boxed{7}, I'm not sure", ("7",), None),  # not joined to the box: a new clause
        (r"\boxed{7}. Maybe I should check, but no.", ("7",), None),  # a new sentence
        (r"\boxed{5} is what I first got, but after checking it is \boxed{7}", ("7",), None),
        (r"\boxed{MR=SRMC}, or marginal revenue equals short-run marginal cost.", ("MR=SRMC",), None),
        ("The answer is $7$ or $8$.", ("7", "8"), None),
        ("The answer is maybe $7$.", ("7",), "maybe"),
        ("we get $x = 7$ or $x = 8$", ("x = 8",), None),  # prose spans are not candidates
        ("we get $x = 7$, or perhaps $x = 8$", ("x = 8",), "perhaps"),
    ],
)
def test_find_answer_candidates_and_doubt(text, candidates, doubt):
    from tina.grading import find_answer

    found = find_answer(text)
    assert found.status == "ok"
    assert (found.candidates, found.doubt) == (candidates, doubt), found


def test_find_answer_sources_and_modes():
    from tina.grading import find_answer

    assert find_answer(r"so \boxed{4}").source == "boxed"
    assert find_answer("The answer is 4.").source == "phrase"
    assert find_answer("so $4$").source == "span"
    assert find_answer("The answer is 4.", extraction="boxed").status == "no_answer"
    assert find_answer("nothing").status == "no_answer"
    with pytest.raises(ValueError):
        find_answer("x", extraction="fuzzy")


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("Answer: C", "ok"),
        ("Answer: C or D", "hedged"),
        ("Answer: (C) and (D)", "hedged"),
        (r"\boxed{C,D}", "hedged"),
        ("(C) or (D)", "hedged"),
        ("Answer: C. (Option (A) was a trap.)", "ok"),
        ("The answer is a mystery.", "no_answer"),
        ("<think>\nAnswer: C", "unfinished"),
    ],
)
def test_find_choice_status(text, status):
    from tina.grading import find_choice

    assert find_choice(text).status == status
    assert extract_choice(text) == ("C" if status == "ok" else None)
