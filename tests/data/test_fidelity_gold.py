"""docs/fidelity.md row 4: the training gold for the datasets with a worked `solution` column.

Tina (tina/post_train_hf/grpo.py) kept `solution` whenever the dataset had one, and its reward parsed that whole text
with math-verify (``extraction_mode="first_match"``).  tina reads the `answer` column (else the last \\boxed{} of the
solution); ``data.answer_field: solution`` reads the solution's last \\boxed{}, which is Tina's gold whenever the
solution has a box.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tina.data import load_examples

FIXTURES = Path(__file__).parent / "fixtures"

# fixture file, schema -> per row: (tina's default gold, gold with answer_field=solution, Tina's gold)
# "" = no gold: the loader drops the row.  Tina's None = math-verify found nothing: every completion's accuracy was
# None (0 in the trainer's nansum), its cosine 1.0, its length rewards "correct".
CASES = {
    ("open_rs.jsonl", "open-rs"): [
        ("2", "2", "2"),
        ("\\frac{5}{6}", "\\frac{5}{6}", "\\frac{5}{6}"),  # empty answer column
        ("", "", "12"),
    ],  # "It is 12.": no box, so no gold here; Tina read the number
    ("open_s1.jsonl", "open-s1"): [("6", "6", "6"), ("8", "8", "8")],
    ("openr1_math.jsonl", "openr1-math"): [
        ("\\pm 3", "\\pm 3", "\\pm 3"),
        ("", "", None),  # a proof: dropped here, ungradable in Tina
        ("120", "120", "120"),
    ],  # answer "notfound": the solution's box
    ("curated_thoughts.jsonl", "curated-thoughts"): [("8", "8", "8"), ("7", "7", "7")],
}


def tina_gold(solution: str) -> str | None:
    """What Tina's reward graded against: math-verify's first-match parse of the whole solution (its text form)."""
    from math_verify import parse

    parsed = parse(solution, extraction_mode="first_match")
    return parsed[-1] if parsed else None


def _golds(path: Path, schema: str, answer_field: str | None) -> dict[str, str]:
    return {e.id: e.answer for e in load_examples(str(path), schema=schema, answer_field=answer_field)}


@pytest.mark.parametrize("fixture, schema", list(CASES))
def test_training_gold_answer_column_vs_tinas_solution_parse(fixture, schema):
    import json

    path = FIXTURES / fixture
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    expected = CASES[(fixture, schema)]
    assert len(rows) == len(expected)
    ours, from_solution = _golds(path, schema, None), _golds(path, schema, "solution")
    for index, (row, (default, solution_box, tina)) in enumerate(zip(rows, expected, strict=True)):
        key = row.get("uuid", str(index))
        assert ours.get(key, "") == default, (fixture, index)
        assert from_solution.get(key, "") == solution_box, (fixture, index)
        assert tina_gold(row["solution"]) == tina, (fixture, index)


def test_a_final_answer_phrase_outranks_the_box_in_tinas_gold():
    """The one boxed-solution case where `answer_field: solution` and Tina's gold part: math-verify ranks "The final
    answer is $x$. I hope" above a box (and takes the rightmost match of the best kind)."""
    solution = "First \\boxed{3}. The final answer is $7$. I hope it is correct."
    assert tina_gold(solution) == "7"
    from tina.data.schemas import SCHEMAS

    row = {"problem": "p", "solution": solution, "answer": "7"}
    assert SCHEMAS["open-rs"](row, 0).answer == "7"
    assert SCHEMAS["open-rs"](row, 0, answer_field="solution").answer == "3"
