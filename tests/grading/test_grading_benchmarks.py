"""The grader against the real benchmark answer keys (skipped, visibly, when the shared data is absent).

Data is found through ``$TINA_SHARED_DATA`` or ``<repo>/../shared/data`` (``benchmarks/<name>.jsonl`` with keys
id, problem, answer, optional solution). Observed rates are printed (``pytest -s``) and recorded as junit
properties.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from tina.grading import gold_is_parseable, grade_many
from tina.grading.normalize import gold_core, text_key

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    """``$TINA_SHARED_DATA`` if set, else ``<repo>/../shared/data``; None when neither has benchmarks/."""
    candidates = []
    if os.environ.get("TINA_SHARED_DATA"):
        candidates.append(Path(os.environ["TINA_SHARED_DATA"]))
    candidates.append(REPO.parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "benchmarks").is_dir():
            return candidate
    return None


def load_benchmark(name: str) -> list[dict]:
    data = shared_data_dir()
    if data is None:
        pytest.skip("shared benchmark data not found (set TINA_SHARED_DATA or provide <repo>/../shared/data)")
    path = data / "benchmarks" / f"{name}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _failures(rows, verdicts, limit=40) -> str:
    bad = [
        f"  id={row['id']} gold={row['answer']!r} extracted={v.extracted!r} -> {v.correct} ({v.reason})"
        for row, v in zip(rows, verdicts, strict=True)
        if v.correct is not True
    ]
    return "\n".join(bad[:limit]) + (f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else "")


@pytest.mark.parametrize(("name", "minimum"), [("math500", 0.99), ("minerva", 0.98)])
def test_reference_solutions_grade_correct(name, minimum, record_property):
    rows = load_benchmark(name)
    start = time.perf_counter()
    verdicts = grade_many([row["solution"] for row in rows], [row["answer"] for row in rows])
    seconds = time.perf_counter() - start
    rate = sum(v.correct is True for v in verdicts) / len(rows)
    ungradable = sum(v.correct is None for v in verdicts)
    print(f"\n{name}: {rate:.2%} of {len(rows)} reference solutions correct, {ungradable} ungradable, {seconds:.2f}s")
    record_property(f"{name}_solution_rate", rate)
    assert rate >= minimum, f"{name}: {rate:.2%} < {minimum:.0%}; failures:\n{_failures(rows, verdicts)}"


def _derangement_with_different_answers(rows, seed=0):
    """A fixed-seed permutation where no problem gets its own answer, nor a textually identical one."""
    rng = random.Random(seed)
    keys = [text_key(gold_core(row["answer"])) for row in rows]
    order = list(range(len(rows)))
    rng.shuffle(order)
    for i in range(len(order)):
        tries = 0
        while keys[order[i]] == keys[i]:
            j = rng.randrange(len(order))
            if keys[order[j]] != keys[i] and keys[order[i]] != keys[j]:
                order[i], order[j] = order[j], order[i]
            tries += 1
            assert tries < 10_000, "could not build a derangement"
    assert all(keys[order[i]] != keys[i] for i in range(len(order)))
    return order


def test_shuffled_golds_grade_incorrect(record_property):
    rows = load_benchmark("math500")
    order = _derangement_with_different_answers(rows)
    completions = [rows[order[i]]["solution"] for i in range(len(rows))]
    golds = [row["answer"] for row in rows]
    verdicts = grade_many(completions, golds)
    wrong_rate = sum(v.correct is not True for v in verdicts) / len(rows)
    ungradable = sum(v.correct is None for v in verdicts)
    print(f"\nmath500 shuffled: {wrong_rate:.2%} not correct ({ungradable} of them ungradable)")
    record_property("math500_shuffled_not_correct_rate", wrong_rate)
    accepted = "\n".join(
        f"  gold={golds[i]!r} extracted={v.extracted!r}" for i, v in enumerate(verdicts) if v.correct is True
    )
    assert wrong_rate >= 0.99, f"{wrong_rate:.2%} not correct; accepted wrong answers:\n{accepted}"


def test_aime_leading_zeros_and_amc_floats():
    for name in ("aime24", "aime25"):
        rows = load_benchmark(name)
        golds = [row["answer"] for row in rows]
        right = grade_many([rf"so \boxed{{{int(g)}}}" for g in golds], golds)
        wrong = grade_many([rf"so \boxed{{{int(g) + 1}}}" for g in golds], golds)
        assert all(v.correct is True for v in right), _failures(rows, right)
        assert all(v.correct is False for v in wrong), _failures(rows, wrong)
    assert any(row["answer"].startswith("0") for row in load_benchmark("aime24"))  # the quirk is really there

    rows = load_benchmark("amc23")
    golds = [row["answer"] for row in rows]
    assert all(g.endswith(".0") for g in golds)
    right = grade_many([rf"\boxed{{{int(float(g))}}}" for g in golds], golds)
    wrong = grade_many([rf"\boxed{{{int(float(g)) - 1}}}" for g in golds], golds)
    assert all(v.correct is True for v in right), _failures(rows, right)
    assert all(v.correct is False for v in wrong), _failures(rows, wrong)


def test_minerva_scientific_notation_in_latex():
    rows = load_benchmark("minerva")
    sci = [
        row["answer"]
        for row in rows
        if "e" in row["answer"] and row["answer"].replace("e", "").replace(".", "").replace("-", "").isdigit()
    ]
    assert len(sci) >= 10
    latex = []
    for gold in sci:
        mantissa, exponent = gold.split("e")
        latex.append(rf"\boxed{{{mantissa} \times 10^{{{int(exponent)}}}}}")
    verdicts = grade_many(latex, sci)
    assert all(v.correct is True for v in verdicts), [
        (g, v) for g, v in zip(sci, verdicts, strict=True) if not v.correct
    ]


@pytest.mark.parametrize(
    ("name", "minimum"),
    [("aime24", 1.0), ("aime25", 1.0), ("amc23", 1.0), ("math500", 1.0), ("minerva", 0.98), ("olympiadbench", 0.99)],
)
def test_gold_answers_are_parseable(name, minimum, record_property):
    rows = load_benchmark(name)
    unparseable = [row for row in rows if not gold_is_parseable(row["answer"])]
    rate = 1 - len(unparseable) / len(rows)
    print(f"\n{name}: {len(unparseable)} of {len(rows)} golds unparseable: {[r['id'] for r in unparseable]}")
    record_property(f"{name}_gold_parseable_rate", rate)
    assert rate >= minimum, [(row["id"], row["answer"]) for row in unparseable]
