"""Local file formats, hub loading (faked: the Hub is never contacted), and the one-line DataErrors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from tina.data import load_examples, load_rows, resolve_source
from tina.errors import ConfigError, DataError, TinaError

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"id": "a", "problem": "1+1?", "answer": "2"}, {"id": "b", "problem": "2+2?", "answer": 4}]


# ---------------------------------------------------------------------------------------------------------------------
# Local formats
# ---------------------------------------------------------------------------------------------------------------------


def test_jsonl_rows(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", ROWS)
    assert load_rows(str(path)) == ROWS
    exs = load_examples(str(path))
    assert [(e.id, e.problem, e.answer) for e in exs] == [("a", "1+1?", "2"), ("b", "2+2?", "4")]


def test_jsonl_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n")
    assert len(load_rows(str(path))) == 2


@pytest.mark.parametrize("payload", [ROWS, {"data": ROWS}], ids=["list", "data-key"])
def test_json_file(tmp_path, payload):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(payload))
    assert load_rows(str(path)) == ROWS


def test_json_column_dict_and_json_lines_in_a_json_file(tmp_path):
    cols = tmp_path / "cols.json"
    cols.write_text(json.dumps({"problem": ["1+1?", "2+2?"], "answer": ["2", "4"]}))
    assert [e.answer for e in load_examples(str(cols))] == ["2", "4"]
    lines = _write_jsonl(tmp_path / "lines.json", ROWS)  # what Dataset.to_json writes
    assert load_rows(str(lines)) == ROWS


def test_parquet_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "1+1?", "answer": "2"}, {"problem": "3+3?", "answer": "6"}]), path)
    exs = load_examples(str(path))
    assert [(e.problem, e.answer, e.id) for e in exs] == [("1+1?", "2", "0"), ("3+3?", "6", "1")]


def test_parquet_with_nested_l1_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [json.loads(line) for line in (FIXTURES / "l1.jsonl").read_text().splitlines()]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    exs = load_examples(str(path))
    assert exs.schema == "l1"
    assert [(e.answer, e.meta["l1_target"], e.meta["l1_mode"]) for e in exs] == [
        ("6", 1234, "exact"),
        ("32", 800, "max"),
    ]


def test_csv_file(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text('problem,answer\n"1+1, quickly?",2\n')
    assert [(e.problem, e.answer) for e in load_examples(str(path))] == [("1+1, quickly?", "2")]


def test_saved_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved"
    rows = [{**r, "answer": str(r["answer"])} for r in ROWS]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    exs = load_examples(str(folder), split="test")
    assert [e.id for e in exs] == ["a", "b"]
    with pytest.raises(DataError, match="has no split 'train'; splits: test"):
        load_examples(str(folder))


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert isinstance(exc.value, TinaError)
    return msg


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    for fn in (load_rows, load_examples):
        with pytest.raises(DataError) as exc:
            fn(str(missing))
        msg = _one_line(exc)
        assert "data file not found" in msg and "nope.jsonl" in msg and "check the path" in msg


def test_relative_missing_path_is_not_sent_to_the_hub(monkeypatch):
    import datasets

    def boom(*a, **k):  # pragma: no cover - must not be called
        raise AssertionError("hub lookup for a file path")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    for src in ("data/train.jsonl", "./train", "~/x.parquet"):
        with pytest.raises(DataError, match="data file not found"):
            load_rows(src)


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + '\n{"problem": "3+3?", "answer": }\n')
    with pytest.raises(DataError) as exc:
        load_rows(str(path))
    msg = _one_line(exc)
    assert msg.startswith(f"{path}:3: not valid JSON") and "fix or delete that line" in msg


def test_non_object_json_line(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('["1+1?", "2"]\n')
    with pytest.raises(DataError, match=r"list\.jsonl:1: expected a JSON object per line, got a list"):
        load_rows(str(path))


def test_bad_json_file_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"problem": "1+1?",\n  "answer": }\n]')
    with pytest.raises(DataError) as exc:
        load_rows(str(path))
    assert _one_line(exc).startswith(f"{path}:3: not valid JSON")


def test_json_of_wrong_shape(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('"just a string"')
    with pytest.raises(DataError, match="expected a list of objects"):
        load_rows(str(path))
    path.write_text('[{"problem": "p", "answer": "a"}, 3]')
    with pytest.raises(DataError, match="item 1 is a number, not an object"):
        load_rows(str(path))


def test_not_utf8_and_corrupt_parquet_and_unknown_suffix(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"problem": "caf\xe9", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_rows(str(latin))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError) as exc:
        load_rows(str(broken))
    assert "cannot read parquet file" in _one_line(exc)
    txt = tmp_path / "x.txt"
    txt.write_text("hello")
    with pytest.raises(DataError, match=r"unsupported data file type '\.txt'"):
        load_rows(str(txt))


def test_column_mismatch_lists_columns_found(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"question": "1+1?", "final": "2"}])
    with pytest.raises(DataError) as exc:
        load_examples(str(path), schema="open-rs")
    msg = _one_line(exc)
    assert msg == (
        f"dataset '{path}' (schema 'open-rs') has no column 'problem'; columns found: question, final; "
        f"set data.problem_field / data.answer_field (or another data.schema)"
    )


def test_column_mismatch_for_answer_and_alternatives(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"problem": "1+1?", "final": "2"}])
    with pytest.raises(DataError, match="schema 'limr'.* has no column 'answer'; columns found: problem, final"):
        load_examples(str(path), schema="limr")
    path2 = _write_jsonl(tmp_path / "y.jsonl", [{"q": "1+1?", "answer": "2"}])
    with pytest.raises(DataError, match="has no column 'problem' or 'prompt'; columns found: q, answer"):
        load_examples(str(path2), schema="limr")


def test_auto_that_cannot_detect_lists_columns(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"text": "1+1?", "label": "2"}])
    with pytest.raises(DataError) as exc:
        load_examples(str(path))
    msg = _one_line(exc)
    assert "cannot tell its format" in msg and "columns found: text, label" in msg and "data.problem_field" in msg


def test_field_overrides(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"question": "1+1?", "final": 2}, {"question": "2+2?", "final": "4"}])
    exs = load_examples(str(path), problem_field="question", answer_field="final")
    assert [(e.problem, e.answer) for e in exs] == [("1+1?", "2"), ("2+2?", "4")]
    assert exs.schema == "plain"
    exs = load_examples(str(path), schema="open-rs", problem_field="question", answer_field="final")
    assert [e.answer for e in exs] == ["2", "4"]
    with pytest.raises(DataError, match="has no column 'final_answer' \\(set by data.answer_field\\); columns found"):
        load_examples(str(path), problem_field="question", answer_field="final_answer")


def test_override_goes_through_the_adapters_reader(tmp_path):
    info = json.dumps({"answer": {"value": "5"}})
    path = _write_jsonl(tmp_path / "x.jsonl", [{"messages": [{"role": "user", "content": "Q"}], "check": info}])
    with pytest.raises(DataError, match="has no column 'verification_info' or 'answer'"):
        load_examples(str(path), schema="ii-thought")
    # A generic answer column read through the override gives the raw value...
    assert load_examples(str(path), schema="ii-thought", answer_field="check")[0].answer == info
    # ...while the schema's own column name keeps its JSON reader.
    renamed = _write_jsonl(tmp_path / "y.jsonl", [{"q": "Q", "verification_info": info}])
    assert load_examples(str(renamed), schema="ii-thought", problem_field="q")[0].answer == "5"


def test_empty_answers_are_dropped_counted_and_logged(tmp_path, caplog):
    rows = [
        {"id": "k1", "problem": "p1", "answer": "1"},
        {"id": "d1", "problem": "p2", "answer": ""},
        {"id": "d2", "problem": "p3", "answer": None},
        {"id": "d3", "problem": " ", "answer": "4"},
    ]
    path = _write_jsonl(tmp_path / "x.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="tina.data"):
        exs = load_examples(str(path))
    assert [e.id for e in exs] == ["k1"]
    assert exs.dropped == 3
    assert exs.drop_reasons == {"empty answer": 2, "empty problem": 1}
    assert exs.dropped_ids == ["d1", "d2", "d3"]
    assert "dropped 3 of 4 rows" in caplog.text and "2 empty answer" in caplog.text


def test_all_rows_dropped_or_no_rows_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"problem": "p", "answer": ""}])
    with pytest.raises(DataError, match="all 1 rows were dropped \\(1 empty answer\\)"):
        load_examples(str(path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert load_rows(str(empty)) == []
    with pytest.raises(DataError, match="has no rows"):
        load_examples(str(empty))


def test_limit(tmp_path):
    rows = [{"problem": f"p{i}", "answer": "" if i == 1 else str(i)} for i in range(10)]
    path = _write_jsonl(tmp_path / "x.jsonl", rows)
    exs = load_examples(str(path), limit=3)
    assert [e.id for e in exs] == ["0", "2", "3"] and exs.dropped == 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="data limit must be a positive integer"):
            load_examples(str(path), limit=bad)


# ---------------------------------------------------------------------------------------------------------------------
# Hub (datasets.load_dataset is replaced by a fake: tests never contact the Hub)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch):
    import datasets

    calls = []
    tables = {
        "knoveleng/open-rs": [
            {"problem": "P1", "solution": "so \\boxed{3}", "answer": "3", "level": "Level 2"},
            {"problem": "P2", "solution": "so \\boxed{5}", "answer": "5", "level": "Level 4"},
        ],
        "bethgelab/CuratedThoughts": [{"problem": "P", "solution": "hence $\\boxed{9}$", "source": "amc"}],
        "open-r1/OpenR1-Math-220k": [
            {
                "problem": "P",
                "solution": "S",
                "answer": "1",
                "uuid": "u-1",
                "problem_type": "Algebra",
                "question_type": "math-word-problem",
                "source": "x",
                "generations": ["g" * 1000],
                "messages": [{"role": "user", "content": "P"}],
            }
        ],
    }

    def load_dataset(path, name=None, *, split=None, **kwargs):
        calls.append((path, name, split))
        if path not in tables:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed.")
        return datasets.Dataset.from_list(tables[path])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_short_name_loads_hub_id_with_its_adapter(fake_hub):
    exs = load_examples("open-rs")
    assert fake_hub == [("knoveleng/open-rs", None, "train")]
    assert exs.schema == "open-rs"
    assert [(e.problem, e.answer, e.meta) for e in exs] == [
        ("P1", "3", {"level": "Level 2"}),
        ("P2", "5", {"level": "Level 4"}),
    ]


def test_short_name_with_config_and_explicit_split(fake_hub):
    exs = load_examples("curated-thoughts", split="train[:10]")
    assert fake_hub == [("bethgelab/CuratedThoughts", "OpenThoughts-114k-math-default", "train[:10]")]
    assert [e.answer for e in exs] == ["9"] and exs.schema == "curated-thoughts"


def test_hub_id_with_auto_detection_and_subset(fake_hub):
    exs = load_examples("open-r1/OpenR1-Math-220k", subset="default")
    assert fake_hub == [("open-r1/OpenR1-Math-220k", "default", "train")]
    assert exs.schema == "openr1-math" and exs[0].id == "u-1"
    rows = load_rows("knoveleng/open-rs", split="train")
    assert rows[0]["level"] == "Level 2" and len(rows) == 2


def test_hub_keeps_override_columns(fake_hub):
    exs = load_examples("open-r1/OpenR1-Math-220k", schema="plain", answer_field="question_type")
    assert exs[0].answer == "math-word-problem"


def test_hub_failure_is_one_line_data_error(fake_hub):
    with pytest.raises(DataError) as exc:
        load_examples("someone/missing-dataset")
    msg = _one_line(exc)
    assert "cannot load hub dataset 'someone/missing-dataset'" in msg
    assert "FileNotFoundError" in msg and "point data.source at a local" in msg
    with pytest.raises(DataError, match=r"hub dataset 'knoveleng/open-s1' \(short name 'open-s1'\)"):
        load_examples("open-s1")


def test_resolve_source(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", ROWS)
    assert resolve_source(str(path)) == ("local", str(path), None)
    assert resolve_source("limr") == ("hub", "GAIR/LIMR", None)
    assert resolve_source("openr1-math") == ("hub", "open-r1/OpenR1-Math-220k", "default")
    assert resolve_source("openr1-math", "all") == ("hub", "open-r1/OpenR1-Math-220k", "all")
    with pytest.raises(DataError, match="data source is empty"):
        resolve_source("")


# ---------------------------------------------------------------------------------------------------------------------
# The real LIMR training file (shared data; skipped visibly when absent)
# ---------------------------------------------------------------------------------------------------------------------


def _shared_data() -> Path | None:
    for candidate in (os.environ.get("TINA_SHARED_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "train" / "limr.jsonl").is_file():
            return Path(candidate)
    return None


@pytest.mark.parametrize("schema", ["limr", "auto"])
def test_real_limr_file(schema):
    shared = _shared_data()
    if shared is None:
        pytest.skip("shared data not found: set TINA_SHARED_DATA to the folder holding train/limr.jsonl")
    exs = load_examples(str(shared / "train" / "limr.jsonl"), schema=schema)
    assert len(exs) == 1387 and exs.dropped == 0
    assert len({e.id for e in exs}) == 1387
    assert exs[0].id == "29ae301a-69f4-429c-abda-77a5e8cae75b" and exs[0].answer == "5"
    assert all(e.problem.strip() and e.answer for e in exs)
