"""The benchmark layer: answer quirks graded through it, hub row mapping, the GPQA shuffle, the local schema."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tina.errors import DataError, TinaError
from tina.eval import benchmarks as B
from tina.grading import grade_many
from tina.prompts import MATH_EVAL_PROMPT


def _grade(bench, row_id, completions):
    row = next(r for r in bench.rows if r["id"] == row_id)
    item = bench.item(row, 0)
    return [v.correct for v in grade_many(completions, [item.gold] * len(completions), task=bench.task)]


def test_aime24_leading_zero_answers(shared_data):
    bench = B.load_benchmark("aime24", data_dir=shared_data / "benchmarks")
    assert len(bench.rows) == 30 and bench.task == "math" and bench.template == MATH_EVAL_PROMPT
    zero = [r for r in bench.rows if r["answer"].startswith("0")]
    assert {r["answer"] for r in zero} >= {"025", "073", "080"}
    for row in zero:
        value = int(row["answer"])
        assert _grade(bench, row["id"], [rf"so \boxed{{{value}}}", rf"\boxed{{{value + 1}}}"]) == [True, False]


def test_amc23_float_answers(shared_data):
    bench = B.load_benchmark("amc23", data_dir=shared_data / "benchmarks")
    row = next(r for r in bench.rows if r["answer"] == "27.0")
    assert _grade(bench, row["id"], [r"\boxed{27}", r"The final answer is: $27$.", r"\boxed{27.5}", "no"]) == [
        True,
        True,
        False,
        False,
    ]


def test_minerva_answers_from_the_boxed_solution(shared_data):
    bench = B.load_benchmark("minerva", data_dir=shared_data / "benchmarks")
    assert len(bench.rows) == 272
    row = next(r for r in bench.rows if r["answer"] == "4.5e33")
    assert _grade(bench, row["id"], [r"\boxed{4.5 \times 10^{33}}", r"\boxed{4.6 \times 10^{33}}"]) == [True, False]
    # the hub copy has no answer column: the gold is the solution's box, braces matched
    mapped = B.map_minerva({"idx": 3, "problem": "p", "solution": r"thus $\boxed{\frac{1}{2} \mathrm{~m}}$."}, 0)
    assert mapped == {
        "id": "3",
        "problem": "p",
        "answer": r"\frac{1}{2} \mathrm{~m}",
        "solution": r"thus $\boxed{\frac{1}{2} \mathrm{~m}}$.",
    }
    with pytest.raises(ValueError):
        B.map_minerva({"problem": "p", "solution": "no box"}, 0)


def test_data_dir_provenance_and_limit(shared_data):
    bench = B.load_benchmark("math500", data_dir=shared_data / "benchmarks", limit=7)
    manifest = json.loads((shared_data / "MANIFEST.json").read_text())
    assert bench.data_sha256 == manifest["benchmarks/math500.jsonl"]["sha256"]
    assert len(bench.rows) == 7 and bench.n_total == 500 and bench.limit == 7
    assert bench.rows[0]["id"] == "test/precalculus/807.json"
    assert bench.source.startswith("file:")


def test_hub_mappers_on_fake_rows():
    assert B.hub_rows("aime24", [{"id": 60, "problem": "P", "answer": "025", "solution": "S", "url": "u"}]) == [
        {"id": "60", "problem": "P", "answer": "025", "solution": "S"}
    ]
    assert B.hub_rows("aime25", [{"problem": "P", "answer": "70"}]) == [{"id": "0", "problem": "P", "answer": "70"}]
    assert B.hub_rows("amc23", [{"id": 0, "problem": "P", "answer": 27.0, "url": "u"}])[0]["answer"] == "27.0"
    math500 = B.hub_rows(
        "math500",
        [
            {
                "problem": "P",
                "answer": r"\frac{14}{3}",
                "unique_id": "test/algebra/1.json",
                "subject": "Algebra",
                "level": 2,
                "solution": "S",
            }
        ],
    )
    assert math500[0]["id"] == "test/algebra/1.json"
    olympiad = B.hub_rows(
        "olympiadbench",
        [{"id": 1606, "question": "Q", "final_answer": ["$2^{1009}$"]}, {"id": 1607, "question": "Q2", "answer": "7"}],
    )
    assert [(r["id"], r["problem"], r["answer"]) for r in olympiad] == [
        ("1606", "Q", "$2^{1009}$"),
        ("1607", "Q2", "7"),
    ]
    gpqa = B.hub_rows(
        "gpqa_diamond",
        [
            {
                "Record ID": "rec7",
                "Question": "Q?",
                "Correct Answer": "right",
                "Incorrect Answer 1": "w1",
                "Incorrect Answer 2": "w2",
                "Incorrect Answer 3": "w3",
            }
        ],
    )
    assert gpqa == [{"id": "rec7", "question": "Q?", "choices": ["right", "w1", "w2", "w3"], "correct": 0}]
    with pytest.raises(DataError, match="row 0"):
        B.hub_rows("math500", [{"question": "no problem key"}])
    bench = B.from_rows("gpqa_diamond", gpqa, style="gpqa")
    assert bench.task == "gpqa"


def _gpqa_rows(n=40):
    return [
        {
            "id": f"rec{i}",
            "question": f"Question {i}?",
            "choices": [f"right{i}", f"wrong{i}a", f"wrong{i}b", f"wrong{i}c"],
            "correct": 0,
        }
        for i in range(n)
    ]


def test_gpqa_shuffle_is_seeded_and_the_gold_letter_moves_with_it():
    bench = B.from_rows("gpqa_diamond", _gpqa_rows(), style="gpqa")
    for seed in (0, 1):
        first, again = bench.items(seed), bench.items(seed)
        assert first == again  # deterministic
        for row, item in zip(bench.rows, first, strict=True):
            order = item.meta["choice_order"]
            assert sorted(order) == [0, 1, 2, 3]
            # the right answer is displayed exactly at the gold letter
            assert f"{item.gold}) {row['choices'][row['correct']]}\n" in item.text + "\n"
            assert item.gold == item.meta["gold_letter"] == "ABCD"[order.index(row["correct"])]
    letters = Counter(item.gold for item in bench.items(0))
    assert len(letters) == 4  # the right answer is not always in the same place
    moved = sum(a.gold != b.gold for a, b in zip(bench.items(0), bench.items(1), strict=True))
    assert moved > 10  # another seed, another order
    # the order is a pure function of (id, seed): recomputable from samples.jsonl
    assert B.gpqa_order("rec3", 1) == bench.items(1)[3].meta["choice_order"]


def test_gpqa_prompt_renders_and_grades():
    from tina.prompts import render_prompt

    row = _gpqa_rows(1)[0]
    bench = B.from_rows("gpqa_diamond", [row], style="gpqa")
    item = bench.items(0)[0]
    assert item.text.startswith("Answer the following multiple choice question.")
    assert "'Answer: $LETTER' (without quotes) where LETTER is one of ABCD" in item.text
    assert "Question 0?\n\nA) " in item.text and all(f"\n{x}) " in item.text for x in "BCD")
    wrong = next(x for x in "ABCD" if x != item.gold)
    verdicts = grade_many([f"... Answer: {item.gold}", f"Answer: {wrong}", "no idea"], [item.gold] * 3, task="gpqa")
    assert [v.correct for v in verdicts] == [True, False, False]
    rendered = render_prompt(None, item.text, template="chatml")
    assert rendered.startswith("<|im_start|>user\nAnswer the following")
    assert rendered.endswith("<|im_start|>assistant\n")


def test_local_schema_errors(tmp_path):
    with pytest.raises(TinaError, match="did you mean 'aime24'"):
        B.load_benchmark("aime2024")
    with pytest.raises(DataError, match="no .*gpqa_diamond.jsonl.*choices"):
        B.load_benchmark("gpqa_diamond", data_dir=tmp_path)
    (tmp_path / "aime24.jsonl").write_text('{"id": 1, "problem": "P", "answer": 5}\n{"id": 2, "problem": "Q"}\n')
    with pytest.raises(DataError, match="row 2: missing answer"):
        B.load_benchmark("aime24", data_dir=tmp_path)
    (tmp_path / "aime25.jsonl").write_text('{"id": 1, "problem": "P", "answer": 5}\n{oops\n')
    with pytest.raises(DataError, match=r"aime25.jsonl:2: not valid JSON"):
        B.load_benchmark("aime25", data_dir=tmp_path)
    (tmp_path / "gpqa_diamond.jsonl").write_text(
        json.dumps({"id": 1, "question": "Q", "choices": ["a", "b", "c", "d"], "correct": 4}) + "\n"
    )
    with pytest.raises(DataError, match="index"):
        B.load_benchmark("gpqa_diamond", data_dir=tmp_path)
    (tmp_path / "amc23.jsonl").write_text(
        '{"id": 1, "problem": "P", "answer": 5}\n{"id": 1, "problem": "Q", "answer": 6}\n'
    )
    with pytest.raises(DataError, match="more than once"):
        B.load_benchmark("amc23", data_dir=tmp_path)


def test_arith_benchmark_is_the_demo_heldout_split():
    from tina.tasks import arith

    bench = B.load_benchmark("arith", data_dir="/nonexistent")  # builtin: data_dir is not used
    _, heldout = arith.split(n_eval=256, seed=0)
    assert [r["id"] for r in bench.rows] == [r["id"] for r in heldout]
    item = bench.items(0)[0]
    assert item.text == heldout[0]["problem"] and item.gold == heldout[0]["answer"]


def test_validation_file_in_math_or_training_format(tmp_path):
    path = tmp_path / "holdout.jsonl"
    path.write_text('{"id": "a", "problem": "1+2-3", "answer": "0"}\n')
    val = B.load_validation(str(path))
    assert val.name == "validation:holdout" and val.items(0)[0].text.endswith("\n\n1+2-3")
    raw = B.load_validation(str(path), style="raw", chat_template="plain")
    assert raw.items(0)[0].text == "1+2-3" and raw.chat_template == "plain"
    assert B.load_validation("arith", limit=3).name == "arith"
    with pytest.raises(DataError, match="not found"):
        B.load_validation(str(tmp_path / "missing.jsonl"))


def test_hub_path_maps_rows_and_records_the_source(monkeypatch):
    import tina.data.loading

    calls = []

    def fake_load_rows(source, *, split="train", subset=None):
        calls.append((source, split, subset))
        return [{"id": 0, "problem": "P", "answer": 27.0, "url": "u"}, {"id": 1, "problem": "Q", "answer": -1.0}]

    monkeypatch.setattr(tina.data.loading, "load_rows", fake_load_rows)
    bench = B.load_benchmark("amc23")
    assert calls == [("knoveleng/AMC-23", "train", None)]
    assert bench.source == "hub:knoveleng/AMC-23@train" and bench.data_sha256 is None
    assert [r["answer"] for r in bench.rows] == ["27.0", "-1.0"]
    assert bench.rows_sha256 == B.rows_digest(bench.rows)
    monkeypatch.setattr(
        tina.data.loading,
        "load_rows",
        lambda source, **kw: (
            calls.append((source, kw))
            or [
                {
                    "Record ID": "r",
                    "Question": "Q",
                    "Correct Answer": "a",
                    "Incorrect Answer 1": "b",
                    "Incorrect Answer 2": "c",
                    "Incorrect Answer 3": "d",
                }
            ]
        ),
    )
    gpqa = B.load_benchmark("gpqa_diamond")
    assert calls[-1] == ("Idavidrein/gpqa", {"split": "train", "subset": "gpqa_diamond"})
    assert gpqa.source == "hub:Idavidrein/gpqa:gpqa_diamond@train" and gpqa.task == "gpqa"
