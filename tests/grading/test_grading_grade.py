"""grade / grade_many / gold_is_parseable: equivalences, wrong answers, ungradable golds, GPQA, batching."""

from __future__ import annotations

import dataclasses

import pytest

import tina.grading as grading
from tina.grading import REASONS, Verdict, gold_is_parseable, grade, grade_many
from tina.grading import grader as grader_module


def boxed(answer: str) -> str:
    return f"Some reasoning... so the answer is $\\boxed{{{answer}}}$."


def test_public_api():
    for name in [
        "Verdict",
        "extract_boxed",
        "extract_answer",
        "extract_choice",
        "gold_is_parseable",
        "grade",
        "grade_many",
        "shutdown",
    ]:
        assert hasattr(grading, name), name
    v = Verdict(True, "1", "ok")
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.correct = False  # type: ignore[misc]
    assert set(REASONS) == {
        "ok",
        "no_answer",
        "unfinished",
        "hedged",
        "unevaluated",
        "gold_unparseable",
        "timeout",
        "grader_error",
    }


# (prediction written by a model, gold as stored by a benchmark)
EQUIVALENT = [
    (r"\frac{1}{2}", "0.5"),
    ("0.5", r"\frac{1}{2}"),
    (r"\frac12", r"\frac{1}{2}"),
    (r"\dfrac{14}{3}", r"\frac{14}{3}"),
    (r"\{2,1\}", r"\{1,2\}"),
    ("2, 1", "1, 2"),
    ("[1, 2)", "[1,2)"),
    (r"(-\infty,0)\cup(1,\infty)", r"(-\infty, 0) \cup (1, \infty)"),
    (r"\frac{\sqrt{2}}{2}", r"\frac{\sqrt2}{2}"),
    (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"),
    (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
    ("sqrt(2)/2", r"\frac{\sqrt2}{2}"),
    (r"\sqrt{117}", r"3\sqrt{13}"),
    (r"4.5\times10^{33}", "4.5e33"),
    (r"4.5 \times 10^{33}\ \text{erg/s}", "4.5e33"),
    (r"3.83 \times 10^{35}", "3.83e35"),
    ("-0.3333", "-1./3"),
    ("25", "025"),
    ("27", "27.0"),
    ("1,000", "1000"),
    ("18.90", r"\$18.90"),
    (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"),
    ("p-q", "p - q"),
    ("x^5-x^4+x^3-x^2+x-1", "x^5 - x^4 + x^3 - x^2 + x - 1"),
    ("-5i+6", "6 - 5i"),
    ("5", "x=5"),
    ("90", r"90^\circ"),
    ("Evelyn", r"\text{Evelyn}"),
    ("C", r"\text{(C)}"),
    (r"\frac{270}{7}", r"\frac{270}7\text{ degrees}"),
    ("69, 84", "$69$,$84$"),
    (r"\cos(2t) + \sin(2t)", r"\sqrt{2} \cos (2 t-\pi / 4)"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
]

DIFFERENT = [
    ("2", "3"),
    ("0.33", r"\frac{1}{3}"),
    ("4.6667", r"\frac{14}{3}"),  # an exact (fraction) gold needs an exact answer
    ("13536", "13535"),
    (r"[0,\infty)", r"(0,\infty)"),
    (r"\{1,2,3\}", r"\{1,2\}"),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt2}{2}"),
    (r"3.9 \times 10^{35}", "3.83e35"),
    ("26", "27.0"),
    ("24", "025"),
    ("west", r"\text{east}"),
    ("D", r"\text{(C)}"),
    ("69", "$69$,$84$"),
    ("x^2+1", "x^2-1"),
    (r"\begin{pmatrix} 1 \\ 3 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
]


@pytest.mark.parametrize(("pred", "gold"), EQUIVALENT)
def test_equivalent_answers_are_correct(pred, gold):
    verdict = grade(boxed(pred), gold)
    assert verdict == Verdict(True, verdict.extracted, "ok", "boxed"), verdict


@pytest.mark.parametrize(("pred", "gold"), DIFFERENT)
def test_different_answers_are_incorrect(pred, gold):
    verdict = grade(boxed(pred), gold)
    assert verdict.correct is False and verdict.reason == "ok", verdict


def test_no_answer():
    assert grade("I am not sure what to do here.", "5") == Verdict(False, None, "no_answer")
    assert grade(r"truncated \boxed{\frac{1}{", "5") == Verdict(False, None, "unfinished")  # the box never closes


def test_fallback_extraction_is_graded():
    assert grade("The final answer is $\\frac{3}{4}$.", "0.75").correct is True
    assert grade("Answer: 12", "12").correct is True


@pytest.mark.parametrize("gold", [r"E_{1},E_{2}", r"M_{\odot}", r"\frac{1}{3} E_{1}+\frac{2}{3} E_{2}", "", "   "])
def test_unparseable_gold_is_never_correct(gold):
    # even when the completion repeats the gold verbatim
    verdict = grade(boxed(gold.strip() or "1"), gold)
    assert verdict.correct is None
    assert verdict.reason == "gold_unparseable"
    assert gold_is_parseable(gold) is False


def test_minerva_numpy_gold():
    assert grade(boxed(r"\arcsin\left(\frac{10}{13}\right)"), "np.arcsin(10/13)").correct is True
    assert grade(boxed(r"\arccos\left(\frac{10}{13}\right)"), "np.arcsin(10/13)").correct is False


def test_gold_is_parseable():
    assert gold_is_parseable("025")
    assert gold_is_parseable(r"$\frac{1}{2 n+2}$")
    assert gold_is_parseable(r"\text{Evelyn}")
    assert gold_is_parseable(r"\boxed{3\sqrt{13}}")


def test_gold_with_box_and_dollars():
    assert grade(boxed("7"), r"The answer is $\boxed{7}$.").correct is True
    assert grade(boxed(r"\frac{1}{2n+2}"), r"$\frac{1}{2 n+2}$").correct is True


def test_grade_many_matches_grade_and_keeps_order():
    completions = [boxed("1"), "nothing", boxed(r"\frac{\sqrt{2}}{2}"), boxed("x+1"), boxed("2")]
    golds = ["1", "1", r"\frac{1}{\sqrt2}", "1+x", "3"]
    many = grade_many(completions, golds)
    assert [v.correct for v in many] == [True, False, True, True, False]
    assert many == [grade(c, g) for c, g in zip(completions, golds, strict=True)]
    assert grade_many([], []) == []
    with pytest.raises(ValueError):
        grade_many(["a"], [])
    with pytest.raises(ValueError):
        grade_many(["a"], ["1"], task="chemistry")


def test_grade_many_makes_one_worker_round_trip(monkeypatch):
    calls = []
    real = grader_module.pool.run_batch

    def counting(items, timeout):
        calls.append(len(items))
        return real(items, timeout)

    monkeypatch.setattr(grader_module.pool, "run_batch", counting)
    # unique symbolic answers (not cached), plus duplicates and fast-path numbers
    completions = [boxed(rf"\frac{{\sqrt{{{k}}}}}{{{k + 1}}}") for k in range(300, 310)] * 2 + [boxed("4")] * 5
    golds = [rf"\frac{{\sqrt{{{k}}}}}{{{k + 1}}}" for k in range(300, 310)] * 2 + ["4"] * 5
    verdicts = grade_many(completions, golds)
    assert all(v.correct for v in verdicts)
    assert calls == [10]  # one batch, duplicates sent once, numbers never sent


def test_worker_errors_become_grader_error(monkeypatch):
    def failing(items, timeout):
        return {key: ("error", "ZeroDivisionError: boom") for key, _, _ in items}

    monkeypatch.setattr(grader_module.pool, "run_batch", failing)
    verdict = grade(boxed(r"\frac{a}{b+917}"), r"\frac{a}{917+b}")
    assert verdict == Verdict(None, r"\frac{a}{b+917}", "grader_error", "boxed")
    with pytest.raises(RuntimeError):
        gold_is_parseable(r"\frac{a}{b+918}")


def test_worker_reports_exceptions_instead_of_dying():
    from tina.grading import pool

    results = pool.run_batch([("bad", "grade", ("not-a-spec",)), ("good", "gold", (("latex", "x+1"),))], timeout=5)
    assert results["bad"][0] == "error" and "TypeError" in results["bad"][1]
    assert results["good"] == ("ok", True)


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("Answer: C", "C", True),
        ("Answer: C", "c", True),
        ("Answer: (c)", "C", True),
        ("The answer is a mystery. (B)", "A", False),  # "answer is a" is an article, not choice A
        (r"\boxed{\text{(c)}}", "C", True),
        ("The answer is (B).", "(B)", True),
        ("Answer: A", "C", False),
    ],
)
def test_gpqa(completion, gold, expected):
    assert grade(completion, gold, task="gpqa").correct is expected


def test_gpqa_no_answer_and_bad_gold():
    assert grade("I cannot decide", "A", task="gpqa") == Verdict(False, None, "no_answer")
    assert grade("Answer: A", "42", task="gpqa").reason == "gold_unparseable"
    assert grade("Answer: A", "42", task="gpqa").correct is None


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("2 + 3", "5"),
        ("3+2", "5"),
        (r"7 \times 8", "56"),
        ("(4 + 5) - 2", "7"),
        (r"\frac{1}{2}+\frac{1}{3}", "5/6"),
        (r"12 \div 4", "3"),
        ("2*3", "6.0"),
        ("x = 2 + 3", "5"),
        ("2+3=2+3", "5"),
    ],
)
def test_arithmetic_on_literals_is_not_an_answer(pred, gold):
    # math-verify simplifies "2 + 3" to 5: a policy that copies "What is 2 + 3?" into the box would be paid for it
    # (the SmolLM2 demo learned exactly that before this rule).
    assert grade(boxed(pred), gold) == Verdict(False, pred, "unevaluated", "boxed")


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("5", "5"),
        ("-3", "-3"),
        ("7/8", "0.875"),
        (r"3 \times 10^{5}", "300000"),
        ("2^{10}", "1024"),
        (r"6+2\sqrt{3}", r"6+2\sqrt{3}"),
        ("2 + 3 = 5", "5"),
        ("x = 5", "5"),
        (r"15\frac{39}{40}", r"\frac{639}{40}"),
    ],
)
def test_values_and_symbolic_answers_are_still_graded(pred, gold):
    assert grade(boxed(pred), gold).correct is True
