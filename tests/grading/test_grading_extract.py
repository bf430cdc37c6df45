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
