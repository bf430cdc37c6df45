"""Each schema normalises rows shaped like its dataset's real schema (fixtures in tests/data/fixtures/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tina.data import (
    HUB_IDS,
    SCHEMAS,
    Example,
    detect_schema,
    get_schema,
    last_boxed,
    load_examples,
    read_verification_info,
    split_hub_id,
    split_l1_suffix,
    with_l1_targets,
)
from tina.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures"

NAMES = [
    "open-rs",
    "open-s1",
    "still-3",
    "deepscaler",
    "ii-thought",
    "limr",
    "openr1-math",
    "curated-thoughts",
    "l1",
    "plain",
]

# fixture file, schema, [(problem, answer, id)], dropped count
CASES = [
    (
        "open_rs.jsonl",
        "open-rs",
        [
            ("Find the remainder when $2^{10}$ is divided by $7$.", "2", "0"),
            ("Compute $\\frac{1}{2}+\\frac{1}{3}$.", "\\frac{5}{6}", "1"),
        ],  # empty answer -> \boxed{} of solution
        1,
    ),  # row 2: no answer, no \boxed{} -> dropped
    (
        "open_s1.jsonl",
        "open-s1",
        [("Let $x+y=10$ and $x-y=2$. Find $x$.", "6", "0"), ("How many primes are less than 20?", "8", "1")],
        0,
    ),
    (
        "still3.jsonl",
        "still-3",
        [("Find the sum of all positive divisors of $12$.", "28", "0"), ("Evaluate $\\sqrt{49}$.", "7", "1")],
        1,
    ),
    (
        "deepscaler.jsonl",
        "deepscaler",
        [
            ("Let $a_1=1$ and $a_{n+1}=2a_n$. Find $a_{5}$.", "16", "0"),
            ("Find the area of a circle of radius $2$.", "4\\pi", "1"),
        ],
        0,
    ),
    (
        "ii_thought.jsonl",
        "ii-thought",
        [("What is the least common multiple of $4$ and $6$?", "12", "ii-0001"), ("Solve $2x+3=11$.", "4", "ii-0002")],
        1,
    ),  # the code row has test cases, no answer
    (
        "limr_hub.jsonl",
        "limr",
        [
            ("For how many integer values of $x$ is $x^2 < 10$?", "7", "0"),
            ("Simplify $\\sqrt{50}$.", "5\\sqrt{2}", "1"),
        ],
        0,
    ),
    (
        "openr1_math.jsonl",
        "openr1-math",
        [
            ("Find all real $x$ with $x^2=9$.", "\\pm 3", "0a1b2c3d-0000-5000-8000-000000000001"),
            ("Compute $5!$.", "120", "0a1b2c3d-0000-5000-8000-000000000003"),
        ],  # "notfound" -> \boxed{} of solution
        1,
    ),  # "proof" row dropped
    (
        "curated_thoughts.jsonl",
        "curated-thoughts",
        [
            ("Find the smallest positive integer $n$ with $n^2 > 50$.", "8", "0"),
            ("If $f(x)=2x+1$, find $f(f(1))$.", "7", "1"),
        ],
        0,
    ),
    (
        "l1.jsonl",
        "l1",
        [
            ("Find $1+2+3$. Let's think step by step and output the final answer within \\boxed{}.", "6", "0"),
            ("Find $2^5$. Let's think step by step and output the final answer within \\boxed{}.", "32", "1"),
        ],
        0,
    ),
]


def test_every_named_adapter_and_hub_id_exists():
    assert set(NAMES) | {"auto"} == set(SCHEMAS)
    assert set(HUB_IDS) == set(NAMES) - {"plain"}
    assert split_hub_id(HUB_IDS["curated-thoughts"]) == ("bethgelab/CuratedThoughts", "OpenThoughts-114k-math-default")
    assert split_hub_id(HUB_IDS["limr"]) == ("GAIR/LIMR", None)


@pytest.mark.parametrize(("fixture", "schema", "expected", "dropped"), CASES, ids=[c[1] for c in CASES])
def test_adapter_normalises_real_schema(fixture, schema, expected, dropped):
    exs = load_examples(str(FIXTURES / fixture), schema=schema)
    assert [(e.problem, e.answer, e.id) for e in exs] == expected
    assert exs.dropped == dropped
    assert exs.schema == schema
    assert all(isinstance(e, Example) for e in exs)


@pytest.mark.parametrize(("fixture", "schema", "expected", "dropped"), CASES, ids=[c[1] for c in CASES])
def test_auto_detection_gives_the_same_examples(fixture, schema, expected, dropped):
    exs = load_examples(str(FIXTURES / fixture))  # schema="auto"
    assert [(e.problem, e.answer, e.id) for e in exs] == expected
    assert exs.dropped == dropped


def test_auto_detection_picks_the_specific_adapter():
    def cols(name):
        return list(json.loads((FIXTURES / name).read_text().splitlines()[0]))

    assert detect_schema(cols("ii_thought.jsonl")) == "ii-thought"
    assert detect_schema(cols("l1.jsonl")) == "l1"
    assert detect_schema(cols("openr1_math.jsonl")) == "openr1-math"
    assert detect_schema(cols("still3.jsonl")) == "still-3"
    assert detect_schema(cols("limr_hub.jsonl")) == "limr"
    assert detect_schema(["problem", "ground_truth_solution"]) == "curated-thoughts"
    assert detect_schema(["text", "label"]) is None


def test_meta_keeps_small_useful_fields():
    rs = load_examples(str(FIXTURES / "open_rs.jsonl"), schema="open-rs")
    assert rs[0].meta == {"level": "Level 3"}
    r1 = load_examples(str(FIXTURES / "openr1_math.jsonl"), schema="openr1-math")
    assert r1[0].meta == {"problem_type": "Algebra", "question_type": "math-word-problem", "source": "olympiads"}
    ii = load_examples(str(FIXTURES / "ii_thought.jsonl"), schema="ii-thought")
    assert ii[0].meta == {"source": "numina_math", "domain": "Math"}


def test_l1_target_length_goes_to_meta():
    exs = load_examples(str(FIXTURES / "l1.jsonl"), schema="l1")
    assert exs[0].meta == {"data_source": "", "l1_target": 1234, "l1_mode": "exact"}
    assert exs[1].meta["l1_target"] == 800 and exs[1].meta["l1_mode"] == "max"
    # The stripped problem + the L1 sentence rebuilds L1's user message exactly.
    from tina.prompts import build_messages

    row = json.loads((FIXTURES / "l1.jsonl").read_text().splitlines()[1])
    ex = exs[1]
    rebuilt = build_messages(ex.problem, l1_mode=ex.meta["l1_mode"], l1_target=ex.meta["l1_target"])
    assert rebuilt == row["prompt"]


def test_l1_adapter_on_plain_deepscaler_rows_has_no_target_until_assigned():
    exs = load_examples(str(FIXTURES / "deepscaler.jsonl"), schema="l1")
    assert [e.answer for e in exs] == ["16", "4\\pi"] and "l1_target" not in exs[0].meta
    a = with_l1_targets(exs, seed=3)
    b = with_l1_targets(exs, seed=3)
    assert [e.meta["l1_target"] for e in a] == [e.meta["l1_target"] for e in b]
    assert all(100 <= e.meta["l1_target"] <= 4000 and e.meta["l1_mode"] == "exact" for e in a)
    kept = with_l1_targets(load_examples(str(FIXTURES / "l1.jsonl")), low=1, high=1)
    assert [e.meta["l1_target"] for e in kept] == [1234, 800]  # existing targets are kept
    with pytest.raises(ConfigError, match="did you mean 'exact'"):
        with_l1_targets(exs, mode="exakt")


def test_split_l1_suffix():
    assert split_l1_suffix("P. Think for 5 tokens.") == ("P.", {"l1_target": 5, "l1_mode": "exact"})
    assert split_l1_suffix("P. Think for maximum 5 tokens.") == ("P.", {"l1_target": 5, "l1_mode": "max"})
    assert split_l1_suffix("Think for yourself.") == ("Think for yourself.", {})


@pytest.mark.parametrize(
    ("info", "answer"),
    [
        ('{"answer": {"value": "\\\\frac{1}{2}"}, "type": "math_verifiable"}', "\\frac{1}{2}"),
        ('{"answer": {"value": 12}}', "12"),
        ('{"answer": {"value": 2.5}}', "2.5"),
        ('{"answer": "7"}', "7"),
        ({"answer": {"value": "x=3"}}, "x=3"),
        ('{"ground_truth": "9"}', "9"),
        ('{"test_cases": [{"input": "1", "output": "2"}]}', ""),
        ("not json", ""),
        (None, ""),
    ],
)
def test_read_verification_info(info, answer):
    assert read_verification_info(info)[0] == answer


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("the answer is $\\boxed{42}$.", "42"),
        ("$\\boxed{1}$ then $\\boxed{\\frac{a}{b}}$", "\\frac{a}{b}"),
        ("$\\boxed{\\{1,2\\}}$", "\\{1,2\\}"),
        ("\\fbox{3}", "3"),
        ("\\boxed 5.", "5"),
        ("\\boxed{unbalanced", None),
        ("no box here", None),
    ],
)
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


def test_adapters_are_callable_on_single_rows():
    ex = SCHEMAS["still-3"]({"question": "Q?", "answer": 3}, 7)
    assert ex == Example(problem="Q?", answer="3", id="7")
    # No index: the id is a stable hash of the problem.
    a, b = SCHEMAS["plain"]({"problem": "Q?", "answer": "1"}), SCHEMAS["plain"]({"problem": "Q?", "answer": "1"})
    assert a.id == b.id and a.id.startswith("sha1-")
    auto = SCHEMAS["auto"]({"prompt": "Q?", "answer": 2.0, "id": "x"})
    assert (auto.problem, auto.answer, auto.id) == ("Q?", "2.0", "x")
    with pytest.raises(DataError, match="columns: text, label"):
        SCHEMAS["auto"]({"text": "Q?", "label": "1"})


def test_answer_values_are_never_simplified():
    plain = SCHEMAS["plain"]
    assert plain({"problem": "p", "answer": 27.0}).answer == "27.0"
    assert plain({"problem": "p", "answer": "  025 \n"}).answer == "025"
    ex = plain({"problem": "p", "answer": ["3.83e35", "3.83 \\times 10^{35}"]})
    assert ex.answer == "3.83e35" and ex.meta["answer_alternatives"] == ["3.83e35", "3.83 \\times 10^{35}"]


def test_example_is_frozen_and_hashable():
    ex = Example(problem="p", answer="a", id="1", meta={"level": 3})
    with pytest.raises(AttributeError):
        ex.answer = "b"  # type: ignore[misc]
    assert len({ex, Example(problem="p", answer="a", id="1")}) == 1


def test_unknown_adapter_is_a_config_error_with_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'open-rs'"):
        get_schema("open_rs")
    with pytest.raises(ConfigError, match="did you mean 'deepscaler'"):
        load_examples(str(FIXTURES / "deepscaler.jsonl"), schema="deepscalar")
