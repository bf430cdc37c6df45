r"""Answer forms a real model writes and the grader once misgraded (issue 17, item 8).

* MATH-style thousands separators inside one number (``10,\!000``, ``1\,000``, ``\$12,\!345.60``, ``10{,}000``) were
  split into several candidates and called a hedge;
* an escaped ``\$`` inside ``$...$`` ended the math span (``$\$12.50$`` was read as ``\``);
* "Final Answer: The final answer is 9.81." graded the sentence "The final answer is 9.81", not 9.81.

Each form is checked where it is read (the pure functions) and end to end through `grade`; the neighbours that must
not change (a real list is still a hedge against a single gold, a list gold still takes a list) are checked too.
"""

from __future__ import annotations

import pytest

from tina.grading import extract_answer, grade
from tina.grading.extract import find_answer
from tina.grading.hedge import is_list_gold, split_candidates
from tina.grading.numeric import parse_number, unify_thousands

# --- 1. thousands separators -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"10,\!000", "10,000"),
        (r"1\,000", "1,000"),
        (r"\$12,\!345.60", r"\$12,345.60"),
        (r"10{,}000", "10,000"),
        (r"11,\! 111,\! 111,\! 100", "11,111,111,100"),  # MATH-500's own gold writes a space after \!
        (r"1\,000\,000", "1,000,000"),
        # not separators: a list, a group that is not three digits, no digit before
        ("1, 234", "1, 234"),
        (r"1,\!23", r"1,\!23"),
        (r"x\,000", r"x\,000"),
    ],
)
def test_unify_thousands(text, expected):
    assert unify_thousands(text) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r"10,\!000", 10000),
        (r"1\,000", 1000),
        (r"\$12,\!345.60", 12345.6),
        ("10{,}000", 10000),
        (r"11,\! 111,\! 111,\! 100", 11111111100),
    ],
)
def test_separated_numbers_parse_as_one_number(text, value):
    number = parse_number(text)
    assert number is not None and float(number.value) == value


@pytest.mark.parametrize("pred", [r"10,\!000", r"1\,000", r"\$12,\!345.60", "10{,}000", r"1,\!000,\!000"])
def test_separated_number_is_one_candidate(pred):
    assert split_candidates(pred) == [pred]


def test_separated_gold_is_not_a_list_but_a_real_list_is():
    assert not is_list_gold(r"10,\!000") and not is_list_gold(r"11,\! 111,\! 111,\! 100")
    assert is_list_gold("1, 2") and is_list_gold(r"1,\!23")


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        (r"\boxed{10,\!000}", "10000"),
        (r"\boxed{10,\!000}", "10,000"),
        (r"\boxed{10,\!000}", r"10,\!000"),
        (r"\boxed{10000}", r"10,\!000"),
        (r"\boxed{1\,000}", "1000"),
        (r"\boxed{1\,000}", "1,000"),
        (r"\boxed{\$12,\!345.60}", "12345.60"),
        (r"\boxed{\$12,\!345.60}", r"\$12,\!345.60"),
        (r"\boxed{10{,}000}", "10000"),
        (r"\boxed{11,\! 111,\! 111,\! 100}", "11111111100"),
        (r"The answer is $10,\!000$.", "10000"),
        (r"so we get $1\,000$", "1000"),
    ],
)
def test_separated_number_grades_correct(completion, gold):
    verdict = grade(completion, gold)
    assert (verdict.correct, verdict.reason) == (True, "ok"), verdict


@pytest.mark.parametrize(
    ("completion", "gold", "correct", "reason"),
    [
        (r"\boxed{10,\!000}", "10001", False, "ok"),  # one number, the wrong one: wrong, not hedged
        (r"\boxed{1, 2}", "3", False, "hedged"),  # a real list against a single gold: still a hedge
        (r"\boxed{1, 2}", "1", False, "hedged"),
        (r"\boxed{1, 2}", "1, 2", True, "ok"),  # a list gold still takes the list
        (r"\boxed{(1,2)}", "(1, 2)", True, "ok"),
        (r"\boxed{1,\!000, 2}", "1000", False, "hedged"),  # a separated number in a real list: two candidates
        (r"\boxed{1,\!000, 2}", r"1,\!000, 2", True, "ok"),
    ],
)
def test_lists_next_to_separators_grade_as_before(completion, gold, correct, reason):
    verdict = grade(completion, gold)
    assert (verdict.correct, verdict.reason) == (correct, reason), verdict


# --- 2. an escaped \$ inside $...$ -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "source"),
    [
        (r"The answer is $\$12.50$.", r"\$12.50", "phrase"),
        (r"so the cost is $\$5$", r"\$5", "span"),
        (r"so $x = 2$, since he paid \$5 and \$3", "x = 2", "span"),  # a prose \$ opens no span
        (r"so the cost is $$\$5$$", r"\$5", "span"),
        (r"we get $a \\$ and $b$", "b", "span"),  # \\ (a line break) before the closing $ still closes
    ],
)
def test_escaped_dollar_is_a_literal_dollar(text, expected, source):
    found = find_answer(text)
    assert (found.answer, found.source, found.candidates) == (expected, source, (expected,))


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        (r"The answer is $\$12.50$.", "12.50"),
        (r"so the cost is $\$5$", "5"),
        (r"so the cost is $\$5$", r"\$5"),
        (r"The answer is $\$12,\!345.60$.", "12345.60"),
    ],
)
def test_escaped_dollar_answer_grades_correct(completion, gold):
    assert grade(completion, gold).correct is True


def test_escaped_dollar_after_or_is_a_candidate():
    found = find_answer(r"The answer is $\$5$ (or $\$6$).")
    assert found.candidates == (r"\$5", r"\$6")
    assert grade(r"The answer is $\$5$ (or $\$6$).", "5").reason == "hedged"
    assert find_answer(r"\boxed{\$5} (or \$6).").candidates == (r"\$5", r"\$6")


# --- 3. "Final Answer: The final answer is X." -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Final Answer: The final answer is 9.81.", "9.81"),
        ("Final Answer: The final answer is 9.81. I hope it is correct.", "9.81"),
        ("Final Answer: The final answer is $9.81$. I hope it is correct.", "9.81"),
        ("**Final Answer:** The final answer is **9.81**.", "9.81"),
        ("Answer: the answer is 42", "42"),
        ("The final answer is 9.81. I hope it is correct.", "9.81"),
    ],
)
def test_restated_final_answer_phrase(text, expected):
    assert extract_answer(text) == expected
    assert grade(text, expected).correct is True


def test_restated_phrase_keeps_the_rules_around_it():
    assert grade("Final Answer: The final answer is probably 9.81.", "9.81").reason == "hedged"
    assert grade("Final Answer: The final answer is 9.81 or 9.8.", "9.81").reason == "hedged"
    assert grade("Final Answer: The final answer is 9.81.", "9.8").correct is False
