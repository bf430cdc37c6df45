"""The in-process numeric fast path and the string normalisation (no worker)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tina.grading.normalize import MAX_ANSWER_CHARS, gold_core, math_input, pred_core, text_key
from tina.grading.numeric import NumberLit, numbers_match, parse_number


@pytest.mark.parametrize(
    ("text", "value", "exact"),
    [
        ("025", Fraction(25), True),
        ("27.0", Fraction(27), True),
        ("-1.0", Fraction(-1), True),
        ("$42$", Fraction(42), True),
        ("1,234,567", Fraction(1234567), True),
        (r"\$18.90", Fraction(189, 10), False),
        ("0.15", Fraction(15, 100), False),
        (".5", Fraction(1, 2), False),
        ("3/4", Fraction(3, 4), True),
        ("-1./3", Fraction(-1, 3), False),
        (r"\frac{14}{3}", Fraction(14, 3), True),
        (r"-\dfrac{3}{4}", Fraction(-3, 4), True),
        (r"\frac12", Fraction(1, 2), True),
        ("4.5e33", Fraction(45 * 10**32), False),
        ("1e-5", Fraction(1, 100_000), False),
        (r"3.83 \times 10^{35}", Fraction(383 * 10**33), False),
        (r"2\cdot10^{-3}", Fraction(2, 1000), False),
        ("10^{5}", Fraction(10**5), False),
        (r"\textbf{(073)}", Fraction(73), True),
        ("5.", Fraction(5), True),
        ("\u22127", Fraction(-7), True),
    ],
)
def test_parse_number(text, value, exact):
    assert parse_number(text) == NumberLit(value=value, exact=exact)


@pytest.mark.parametrize(
    "text",
    [
        "1,2",
        "3, 5, 7",
        "x",
        r"\sqrt{2}",
        "1e999",
        r"10^{10^{10}}",
        "3/0",
        "(1,2)",
        "2+3",
        "",
        "50\\%",
        "1 234",
        "9" * 500,
    ],
)
def test_not_a_plain_number(text):
    assert parse_number(text) is None


@pytest.mark.parametrize(
    ("gold", "pred", "expected"),
    [
        ("025", "25", True),
        ("27.0", "27", True),
        ("27.0", "26", False),
        ("13535", "13536", False),  # integers are exact even where 1e-4 relative would pass
        (r"\frac{14}{3}", "4.6667", False),  # fractions are exact
        ("0.5", r"\frac{1}{2}", True),
        ("4.5e33", r"4.5 \times 10^{33}", True),
        ("3.83e35", "3.8301e35", True),  # within 1e-4 relative
        ("3.83e35", "3.84e35", False),
        ("1.6", "1.6001", True),
        ("1.6", "1.62", False),
        ("0.0", "0", True),
    ],
)
def test_numbers_match(gold, pred, expected):
    assert numbers_match(parse_number(gold), parse_number(pred).value) is expected


def test_gold_core_unwraps_boxes_and_dollars():
    assert gold_core(r"$\frac{1}{2}$") == r"\frac{1}{2}"
    assert gold_core("$69$,$84$") == "69,84"
    assert gold_core(r"\boxed{7}") == "7"
    assert gold_core(r"The answer is $\boxed{x^{2}}$.") == "x^{2}"
    assert gold_core(r"\$18.90") == r"\$18.90"  # currency dollar kept


def test_pred_core_truncates_and_flattens():
    assert pred_core("a\n=\n1") == "a = 1"
    assert len(pred_core("1+" * 10_000)) == MAX_ANSWER_CHARS


def test_math_input_and_text_key():
    assert math_input(r"\$5") == "$5$"
    assert text_key(r"\text{ Navin }") == text_key("Navin") == "navin"
    assert text_key(r"\left( 1, 2 \right)") == "(1,2)"
    assert text_key(r"\text{(C)}") == "c"
