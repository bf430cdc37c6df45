r"""Benchmarks: the six Tina benchmarks, OlympiadBench, and the demo's synthetic ``arith`` task.

A benchmark is a small object (a `Benchmark` dataclass; nothing subclasses it) with

* ``rows``: the problems, in the local schema below;
* ``item(row, seed) -> Item``: the user message and the gold answer of one problem under one seed (only GPQA
  depends on the seed: its choices are shuffled);
* ``task``: the grader task, ``"math"`` or ``"gpqa"`` (`tina.grading.grade_many`);
* provenance: ``source``, ``data_sha256`` (of the file read), ``rows_sha256`` (of the rows, any source), ``template``.

>>> bench = from_rows("tiny", [{"id": "1", "problem": "What is $1+1$?", "answer": "2"}])
>>> bench.task, bench.items(seed=0)[0].gold
('math', '2')

**Local schema** (``--data-dir DIR`` reads ``DIR/<name>.jsonl``, one JSON object per line):

* math benchmarks (aime24, aime25, amc23, math500, minerva, olympiadbench) -- the format of
  ``shared/data/benchmarks``: ``{"id": str, "problem": str, "answer": str, "solution": str (optional)}``.
  The answer is kept verbatim (``"025"``, ``"27.0"``, ``"$2^{1009}$"``); the grader compares by value.
  A JSON number as answer is read as its JSON text (``27.0`` -> ``"27.0"``).
* ``gpqa_diamond.jsonl``: ``{"id": str, "question": str, "choices": [4 str], "correct": int}`` where ``correct``
  is the index (0-3) of the right answer in ``choices``.  The order in the file does not matter: every (problem,
  seed) gets its own shuffle (`gpqa_order`).  GPQA is not shipped (its authors ask that it is not republished
  in plain text); without ``--data-dir`` it is read from the hub (``Idavidrein/gpqa``, gated).

**Hub sources** (as Tina's ``scripts/eval/run_eval_custom_tasks.py`` used them): see `SPECS`.  Each spec maps a
hub row to the local schema with a pure function, so the mapping is tested without network access.

**Prompts**: math benchmarks use Tina's simple-evals prompt (`tina.prompts.MATH_EVAL_PROMPT`), GPQA the
multiple-choice prompt (`tina.prompts.GPQA_PROMPT`), ``arith`` the bare problem (as the demo trains and
evaluates).  The chat template is applied by the runner.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tina.errors import DataError, TinaError, did_you_mean
from tina.files import json_objects, sha256_file
from tina.prompts import GPQA_PROMPT, MATH_EVAL_PROMPT, format_gpqa, format_math_eval

LETTERS = "ABCD"
TINA_SIX = ("aime24", "aime25", "amc23", "math500", "gpqa_diamond", "minerva")


@dataclass(frozen=True)
class Item:
    """One problem as the model sees it under one seed."""

    text: str  # the user message (the chat template is applied later)
    gold: str  # what the grader compares with: an answer, or a letter for GPQA
    meta: dict = field(default_factory=dict)  # recorded in samples.jsonl (GPQA: choice order, gold letter)


# ------------------------------------------------------------------------------------------------ items (pure)
def math_item(row: dict, seed: int) -> Item:
    """Tina's math prompt around the problem; the gold is the verbatim answer."""
    return Item(format_math_eval(row["problem"]), row["answer"])


def raw_item(row: dict, seed: int) -> Item:
    """The bare problem (the demo's arith task, or a validation set in the run's own training format)."""
    return Item(row["problem"], row["answer"])


def gpqa_order(problem_id: str, seed: int, n: int = 4) -> list[int]:
    """The display order of a GPQA problem's choices under ``seed``: a permutation of ``range(n)``.

    Defined by sha256 alone (choice ``i`` is ranked by ``sha256(f"gpqa|{seed}|{problem_id}|{i}")``), so it is the
    same on every machine and Python version, and can be recomputed from samples.jsonl.

    >>> gpqa_order("rec1", 0) == gpqa_order("rec1", 0), sorted(gpqa_order("rec1", 0))
    (True, [0, 1, 2, 3])
    """
    return sorted(range(n), key=lambda i: hashlib.sha256(f"gpqa|{seed}|{problem_id}|{i}".encode()).digest())


def gpqa_item(row: dict, seed: int) -> Item:
    """The GPQA prompt with the choices in `gpqa_order`; the gold letter is where the right answer landed.

    >>> row = {"id": "q", "question": "Pick x.", "choices": ["x", "y", "z", "w"], "correct": 0}
    >>> item = gpqa_item(row, seed=0)
    >>> item.text.count(") x") == 1 and f"{item.gold}) x" in item.text
    True
    """
    order = gpqa_order(str(row["id"]), seed, len(row["choices"]))
    shown = [row["choices"][i] for i in order]
    letter = LETTERS[order.index(row["correct"])]
    return Item(format_gpqa(row["question"], shown), letter, {"choice_order": order, "gold_letter": letter})


# ------------------------------------------------------------------------------------------ hub row mappers (pure)
def answer_text(value) -> str:
    """A gold answer as text: strings verbatim, numbers as their JSON text (``27.0`` -> ``"27.0"``).

    >>> answer_text("025"), answer_text(27.0), answer_text(5)
    ('025', '27.0', '5')
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not an answer: {value!r}")
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, (list, tuple)) and value:
        return answer_text(value[0])
    raise ValueError(f"not an answer: {value!r}")


def _math_row(row: dict, index: int, *, id_key: str = "id", problem_key: str = "problem") -> dict:
    out = {"id": str(row.get(id_key, index)), "problem": row[problem_key], "answer": answer_text(row["answer"])}
    if isinstance(row.get("solution"), str):
        out["solution"] = row["solution"]
    return out


def map_aime(row: dict, index: int) -> dict:
    """HuggingFaceH4/aime_2024 and yentinglin/aime_2025: id, problem, answer (leading zeros kept), solution."""
    return _math_row(row, index)


def map_amc(row: dict, index: int) -> dict:
    """knoveleng/AMC-23: the answer is a float (``27.0``), kept as its JSON text like the local copy."""
    return _math_row(row, index)


def map_math500(row: dict, index: int) -> dict:
    """HuggingFaceH4/MATH-500: the id is ``unique_id``."""
    return _math_row(row, index, id_key="unique_id")


def map_minerva(row: dict, index: int) -> dict:
    r"""knoveleng/Minerva-Math: Tina graded against the solution's ``\boxed{}``; use it when there is no answer.

    >>> map_minerva({"problem": "p", "solution": r"so \boxed{4.5e33}."}, 7)
    {'id': '7', 'problem': 'p', 'answer': '4.5e33', 'solution': 'so \\boxed{4.5e33}.'}
    """
    from tina.grading import extract_boxed

    answer = row.get("answer")
    if answer in (None, "", []):
        answer = extract_boxed(row.get("solution") or "")
        if answer is None:
            raise ValueError(f"Minerva row {row.get('idx', index)} has neither an answer nor a boxed solution")
    return _math_row({**row, "answer": answer}, index, id_key="idx" if "idx" in row else "id")


def map_olympiad(row: dict, index: int) -> dict:
    """knoveleng/OlympiadBench (Qwen2.5-Math's OE_TO_maths_en_COMP subset): question, answer (or final_answer[0])."""
    answer = row["answer"] if row.get("answer") not in (None, "", []) else row["final_answer"]
    problem_key = "question" if "question" in row else "problem"
    return _math_row({**row, "answer": answer}, index, problem_key=problem_key)


def map_gpqa(row: dict, index: int) -> dict:
    """Idavidrein/gpqa: the right answer and three distractors -> choices with ``correct = 0`` (shuffled later)."""
    choices = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
    return {"id": str(row.get("Record ID", index)), "question": row["Question"], "choices": choices, "correct": 0}


@dataclass(frozen=True)
class Spec:
    """Where a benchmark comes from and how it is prompted and graded."""

    hub: str | None
    subset: str | None
    split: str
    from_hub: Callable[[dict, int], dict] | None
    style: str  # "math" | "gpqa" | "raw"
    note: str = ""


SPECS: dict[str, Spec] = {
    "aime24": Spec("HuggingFaceH4/aime_2024", None, "train", map_aime, "math", "AIME 2024 I+II, 30"),
    "aime25": Spec("yentinglin/aime_2025", None, "train", map_aime, "math", "AIME 2025 I+II, 30"),
    "amc23": Spec("knoveleng/AMC-23", None, "train", map_amc, "math", "AMC 12 2023, 40; float answers"),
    "math500": Spec("HuggingFaceH4/MATH-500", None, "test", map_math500, "math", "MATH-500, 500"),
    "minerva": Spec("knoveleng/Minerva-Math", None, "train", map_minerva, "math", "Minerva OCW, 272"),
    "gpqa_diamond": Spec("Idavidrein/gpqa", "gpqa_diamond", "train", map_gpqa, "gpqa", "GPQA diamond, 198; gated"),
    "olympiadbench": Spec(
        "knoveleng/OlympiadBench",
        None,
        "train",
        map_olympiad,
        "math",
        "OlympiadBench OE_TO_maths_en_COMP as in Qwen2.5-Math, 675",
    ),
    "arith": Spec(None, None, "heldout", None, "raw", "the demo's a+b-c task, 256 held-out problems (seed 0)"),
    "addition": Spec(
        None, None, "heldout", None, "raw", "the real-model demo's addition task, 40 held-out problems (seed 0)"
    ),
}
NAMES = tuple(SPECS)

STYLES: dict[str, tuple[Callable[[dict, int], Item], str, str]] = {
    # style: (item function, grader task, prompt template text recorded in the protocol)
    "math": (math_item, "math", MATH_EVAL_PROMPT),
    "gpqa": (gpqa_item, "gpqa", GPQA_PROMPT),
    "raw": (raw_item, "math", "{problem}"),
}


# ------------------------------------------------------------------------------------------------------ benchmark
@dataclass
class Benchmark:
    name: str
    task: str  # grader task
    rows: list[dict]  # local schema
    item: Callable[[dict, int], Item]
    template: str  # the prompt template text (before the chat template)
    source: str  # "file:PATH", "hub:ID[:subset]@split", "builtin:arith"
    data_sha256: str | None = None  # sha256 of the file read (None for hub / builtin sources)
    rows_sha256: str = ""  # sha256 of the rows (canonical JSON), before --limit
    n_total: int = 0  # rows before --limit
    limit: int | None = None
    system_prompt: str | None = None  # rendering overrides (a validation set in the run's training format)
    chat_template: str | None = None

    def items(self, seed: int) -> list[Item]:
        return [self.item(row, seed) for row in self.rows]


def rows_digest(rows: list[dict]) -> str:
    """sha256 of the rows as canonical JSON: the same problems give the same digest, whatever the source."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def from_rows(
    name: str,
    rows: list[dict],
    *,
    style: str = "math",
    source: str = "rows",
    data_sha256: str | None = None,
    limit: int | None = None,
    **render,
) -> Benchmark:
    """A Benchmark from rows already in the local schema (validated); ``limit`` keeps the first N."""
    item, task, template = STYLES[style]
    validate = _check_gpqa_row if style == "gpqa" else _check_math_row
    checked = [validate(row, f"{source} row {i + 1}") for i, row in enumerate(rows)]
    ids = [r["id"] for r in checked]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{source}: problem id {dup!r} appears more than once; ids must be unique")
    kept = checked[:limit] if limit is not None else checked
    return Benchmark(
        name, task, kept, item, template, source, data_sha256, rows_digest(checked), len(checked), limit, **render
    )


def load_benchmark(name: str, *, data_dir: str | Path | None = None, limit: int | None = None) -> Benchmark:
    """A registered benchmark from ``DATA_DIR/<name>.jsonl`` if ``data_dir`` is given, else from the hub."""
    if name not in SPECS:
        raise TinaError(f"unknown benchmark '{name}'{did_you_mean(name, SPECS)}; known: {', '.join(SPECS)}")
    spec = SPECS[name]
    if name in ("arith", "addition"):
        from tina.problems import BUILTIN_TASKS

        _, heldout = BUILTIN_TASKS[f"builtin:{name}"]().split(n_eval=256 if name == "arith" else 40, seed=0)
        return from_rows(name, heldout, style="raw", source=f"builtin:{name} (held-out split, seed 0)", limit=limit)
    if data_dir is not None:
        path = Path(data_dir) / f"{name}.jsonl"
        if not path.is_file():
            schema = (
                "id, question, choices [4], correct (index)"
                if spec.style == "gpqa"
                else "id, problem, answer[, solution]"
            )
            raise DataError(
                f"no {path} for benchmark '{name}' (expected JSONL with {schema}); "
                f"drop --data-dir to read it from the hub ({spec.hub})"
            )
        return from_rows(
            name, read_jsonl(path), style=spec.style, source=f"file:{path}", data_sha256=sha256_file(path), limit=limit
        )
    from tina.data.loading import load_rows

    raw = load_rows(spec.hub, split=spec.split, subset=spec.subset)
    return from_rows(
        name,
        hub_rows(name, raw),
        style=spec.style,
        source=f"hub:{spec.hub}{':' + spec.subset if spec.subset else ''}@{spec.split}",
        limit=limit,
    )


def hub_rows(name: str, raw: list[dict]) -> list[dict]:
    """Map hub rows of benchmark ``name`` to the local schema (pure: test it with fake rows)."""
    mapper = SPECS[name].from_hub
    out = []
    for i, row in enumerate(raw):
        try:
            out.append(mapper(row, i))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(
                f"{SPECS[name].hub} row {i}: cannot read it as {name}: {type(exc).__name__}: {exc}"
            ) from None
    return out


def load_validation(
    source: str,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    style: str = "math",
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> Benchmark:
    """A validation set for checkpoint selection: a JSONL file (``id, problem, answer``) or a benchmark name.

    A file is prompted like the math benchmarks (``style="math"``) or bare, in the run's training format
    (``style="raw"`` with the run's system prompt and chat template).
    """
    path = Path(source)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise DataError(f"validation file not found: {path}")
        return from_rows(
            f"validation:{path.stem}",
            read_jsonl(path),
            style=style,
            source=f"file:{path}",
            data_sha256=sha256_file(path),
            limit=limit,
            system_prompt=system_prompt,
            chat_template=chat_template,
        )
    return load_benchmark(source, data_dir=data_dir, limit=limit)


# ------------------------------------------------------------------------------------------------- reading, checks
def read_jsonl(path: str | Path) -> list[dict]:
    """Objects of a JSONL file; a missing file or a bad line is a DataError naming ``path:line``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return json_objects(text.splitlines(), str(path))


def _check_math_row(row: dict, where: str) -> dict:
    missing = [k for k in ("id", "problem", "answer") if k not in row]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)} (math rows need id, problem, answer)")
    if not isinstance(row["problem"], str) or not row["problem"].strip():
        raise DataError(f"{where}: 'problem' must be a non-empty string")
    try:
        answer = answer_text(row["answer"])
    except ValueError:
        raise DataError(f"{where}: 'answer' must be a string or a number, got {row['answer']!r}") from None
    return {**row, "id": str(row["id"]), "answer": answer}


def _check_gpqa_row(row: dict, where: str) -> dict:
    missing = [k for k in ("id", "question", "choices", "correct") if k not in row]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)} (GPQA rows need id, question, choices, correct)")
    choices, correct = row["choices"], row["correct"]
    if not (isinstance(choices, list) and len(choices) == 4 and all(isinstance(c, str) for c in choices)):
        raise DataError(f"{where}: 'choices' must be a list of 4 strings")
    if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct < 4:
        raise DataError(f"{where}: 'correct' must be the index (0-3) of the right choice, got {correct!r}")
    return {**row, "id": str(row["id"])}
