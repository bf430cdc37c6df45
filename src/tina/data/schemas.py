"""Per-dataset row normalisers: one row of a known dataset -> `Example(problem, answer, id, meta)`.

Each schema knows which columns hold the problem and the answer in one dataset's real schema, tried in order.
Schemas, as Tina's code (shangshang-wang/Tina, `tina/post_train_hf/grpo.py`) and the dataset cards use them.
"sure" means Tina's own code reads those columns; "unsure" means recalled from the dataset card, so the schema
also accepts the obvious alternatives:

| schema | hub id (HUB_IDS) | problem from | answer from | confidence |
|---|---|---|---|---|
| open-rs | knoveleng/open-rs | problem | answer, else last \\boxed{} of solution | problem/solution sure, answer unsure |
| open-s1 | knoveleng/open-s1 | problem | answer, else last \\boxed{} of solution | same as open-rs |
| still-3 | RUC-AIBOX/STILL-3-Preview-RL-Data | question | answer | sure (Tina reads question/answer) |
| deepscaler | agentica-org/DeepScaleR-Preview-Dataset | problem | answer (solution is a worked solution) | sure |
| ii-thought | Intelligent-Internet/II-Thought-RL-v0-Math-50K | messages[0].content, or problem | json.loads(verification_info)["answer"]["value"] | sure (Tina's 2thought code) |
| limr | GAIR/LIMR | problem, or prompt (hub column) | answer | sure (Tina renames prompt->problem) |
| openr1-math | open-r1/OpenR1-Math-220k (default) | problem | answer unless "proof"/"notfound", else \\boxed{} of solution | sure for problem/answer/solution/uuid |
| curated-thoughts | bethgelab/CuratedThoughts (OpenThoughts-114k-math-default) | problem | answer, else \\boxed{} of solution, else of ground_truth_solution | unsure |
| l1 | agentica-org/DeepScaleR-Preview-Dataset (Tina's planned L1 runs) | prompt[-1 user].content (verl rows) or problem | reward_model.ground_truth, or answer | sure for L1's verl parquet |
| plain | (local files) | problem | answer, else last \\boxed{} of solution | by definition |

Notes:
- II-Thought: Tina used the Math-50K subset.  Its `verification_info` is a JSON string such as
  `{"answer": {"value": "12"}}`; the reader also accepts a dict, `{"answer": "12"}` and `{"ground_truth": ...}`.
  Rows without an answer there (e.g. code rows with test cases in the full II-Thought-RL-v0) get an empty answer
  and are dropped by the loader.
- L1 (cmu-l3/l1 `scripts/data/deepscaler_dataset.py`) writes verl rows: `prompt=[{"role": "user", "content":
  "<problem> Let's think step by step and output the final answer within \\boxed{}. Think for N tokens."}]`,
  `reward_model={"ground_truth": answer, "num_tokens": N}` (N < 0 means "Think for maximum |N| tokens", -1 none),
  `extra_info={"index": i}`.  The schema strips the trailing "Think for ... tokens." sentence from the problem and
  puts the target in `meta["l1_target"]` / `meta["l1_mode"]` ("exact" or "max"), so
  `tina.prompts.render_prompt(..., l1_mode=, l1_target=)` rebuilds the same text.  Tina's own (commented-out) L1 runs
  used plain DeepScaleR rows and drew a target uniformly from 100..4000; `with_l1_targets` does that.
- The schemas never simplify an answer: numbers become their text (27.0 -> "27.0"), a list becomes its first
  element with the rest in `meta["answer_alternatives"]`.
- Gold vs Tina (docs/fidelity.md): for the datasets with a `solution` column (open-rs, open-s1, OpenR1-Math,
  CuratedThoughts) Tina's reward parsed the whole worked solution with math-verify (`extraction_mode="first_match"`:
  the rightmost \\boxed{} unless a "final answer is ... I hope" phrase outranks it; without a box, an "answer ..."
  phrase, else the last math span or number), not the `answer` column.  `data.answer_field: solution` gives that
  gold for every row whose solution has a box (its last \\boxed{}); rows without one have no answer and are
  dropped, where Tina graded against whatever math-verify found (or skipped the row, its gold unparseable).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tina.data.example import Example
from tina.data.fields import (
    l1_post,
    read_answer,
    read_boxed,
    read_openr1_answer,
    read_reward_model,
    read_text,
    read_verification_info,
)
from tina.errors import ConfigError, DataError, did_you_mean

# Columns that may hold a row's own id, tried in order.
ID_FIELDS = ("id", "uuid", "unique_id", "problem_id", "idx")

# ----------------------------------------------------------------------------------------------------------------------
# Schemas
# ----------------------------------------------------------------------------------------------------------------------

Reader = Callable[[Any], tuple[str, list[str]]]


@dataclass(frozen=True)
class Schema:
    """Row normaliser for one dataset schema.  Call it on a row dict to get an Example.

    problem_fields / answer_fields: (column, reader) pairs tried in order; the first non-empty result wins.
    meta_fields: small columns copied into `Example.meta` when present.
    post: optional (row, problem) -> (problem, extra meta) hook (L1 target parsing).
    """

    name: str
    problem_fields: tuple[tuple[str, Callable[[Any], str]], ...]
    answer_fields: tuple[tuple[str, Reader], ...]
    meta_fields: tuple[str, ...] = ()
    post: Callable[[dict, str], tuple[str, dict]] | None = None
    columns_text: str = ""  # the columns it reads, for people
    sure: bool = True
    id_fields: tuple[str, ...] = field(default=ID_FIELDS)

    @property
    def problem_columns(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.problem_fields)

    @property
    def answer_columns(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.answer_fields)

    def columns_used(self) -> tuple[str, ...]:
        """Every column this schema may read (loaders keep only these from big hub datasets)."""
        cols = [*self.problem_columns, *self.answer_columns, *self.meta_fields, *self.id_fields, "extra_info"]
        return tuple(dict.fromkeys(cols))

    def missing_columns(
        self, columns: Sequence[str], *, problem_field: str | None = None, answer_field: str | None = None
    ) -> list[str]:
        """Human phrases for the required column groups absent from `columns` (empty list = all good)."""
        present = set(columns)
        missing = []
        for override, group in ((problem_field, self.problem_columns), (answer_field, self.answer_columns)):
            wanted = (override,) if override else group
            if not present.intersection(wanted):
                missing.append(" or ".join(f"'{c}'" for c in wanted))
        return missing

    def __call__(
        self, row: dict, index: int | None = None, *, problem_field: str | None = None, answer_field: str | None = None
    ) -> Example:
        """Normalise one row.  `index` (row number) is the id when the row has none.

        problem_field / answer_field read that column instead of the schema's own (answer values then go through
        this schema's reader for that column if it has one, else the generic one).
        """
        if problem_field:
            problem = read_text(row.get(problem_field))
        else:
            problem = ""
            for col, reader in self.problem_fields:
                if col in row:
                    problem = reader(row[col])
                    if problem.strip():
                        break
        readers = dict(self.answer_fields)
        answer, alternatives = "", []
        if answer_field:
            answer, alternatives = readers.get(answer_field, read_answer)(row.get(answer_field))
        else:
            for col, reader in self.answer_fields:
                if col in row:
                    answer, alternatives = reader(row[col])
                    if answer:
                        break
        meta = {k: row[k] for k in self.meta_fields if _is_small(row.get(k))}
        if len(alternatives) > 1:
            meta["answer_alternatives"] = alternatives
        if self.post is not None:
            problem, extra = self.post(row, problem)
            meta.update(extra)
        return Example(problem=problem, answer=answer, id=row_id(row, index, problem, self.id_fields), meta=meta)


def _is_small(value: Any) -> bool:
    return value is not None and (
        isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) <= 200)
    )


def row_id(row: dict, index: int | None, problem: str, id_fields: Sequence[str] = ID_FIELDS) -> str:
    """The row's own id as text; else its index; else a short hash of the problem text."""
    for key in id_fields:
        value = row.get(key)
        if value is not None and str(value).strip():
            return str(value)
    extra = row.get("extra_info")
    if isinstance(extra, dict) and extra.get("index") is not None:
        return str(extra["index"])
    if index is not None:
        return str(index)
    return "sha1-" + hashlib.sha1(problem.encode("utf-8")).hexdigest()[:12]


_PROBLEM = ("problem", read_text)
_ANSWER = ("answer", read_answer)
_SOLUTION_BOXED = ("solution", read_boxed)

SCHEMAS: dict[str, Schema] = {  # plus "auto", added below
    "open-rs": Schema(
        "open-rs",
        (_PROBLEM,),
        (_ANSWER, _SOLUTION_BOXED),
        meta_fields=("level",),
        columns_text="problem, solution, answer, level",
        sure=False,
    ),
    "open-s1": Schema(
        "open-s1",
        (_PROBLEM,),
        (_ANSWER, _SOLUTION_BOXED),
        meta_fields=("level", "source"),
        columns_text="problem, solution, answer (+ source)",
        sure=False,
    ),
    "still-3": Schema("still-3", (("question", read_text), _PROBLEM), (_ANSWER,), columns_text="question, answer"),
    "deepscaler": Schema(
        "deepscaler", (_PROBLEM,), (_ANSWER, _SOLUTION_BOXED), columns_text="problem, answer, solution"
    ),
    "ii-thought": Schema(
        "ii-thought",
        (("messages", read_text), _PROBLEM),
        (("verification_info", read_verification_info), _ANSWER),
        meta_fields=("source", "domain", "data_source"),
        columns_text='id, messages=[{role: user, content}], verification_info=JSON {"answer": {"value": ...}}',
    ),
    "limr": Schema(
        "limr",
        (_PROBLEM, ("prompt", read_text)),
        (_ANSWER,),
        columns_text="hub: prompt, answer; local normalised file: id, problem, answer",
    ),
    "openr1-math": Schema(
        "openr1-math",
        (_PROBLEM,),
        (("answer", read_openr1_answer), _SOLUTION_BOXED),
        meta_fields=("problem_type", "question_type", "source"),
        columns_text="problem, solution, answer, problem_type, question_type, source, uuid, generations, messages, ...",
    ),
    "curated-thoughts": Schema(
        "curated-thoughts",
        (_PROBLEM,),
        (_ANSWER, _SOLUTION_BOXED, ("ground_truth_solution", read_boxed)),
        meta_fields=("source", "domain"),
        columns_text="problem, solution (NuminaMath-CoT worked solution with \\boxed{}), ...",
        sure=False,
    ),
    "l1": Schema(
        "l1",
        (("prompt", read_text), _PROBLEM),
        (("reward_model", read_reward_model), _ANSWER),
        meta_fields=("data_source",),
        post=l1_post,
        columns_text="verl: prompt=[{role, content}], reward_model={ground_truth, num_tokens}, extra_info={index}; "
        "or problem, answer",
    ),
    "plain": Schema(
        "plain",
        (_PROBLEM,),
        (_ANSWER, _SOLUTION_BOXED),
        columns_text="problem, answer (solution's last \\boxed{} if answer is empty)",
    ),
}


class AutoSchema:
    """`SCHEMAS["auto"]`: picks the schema for each row from its keys (see `detect_schema`).

    `load_examples` detects once from the dataset's columns instead; this is for normalising single rows.
    """

    name = "auto"

    def __call__(
        self, row: dict, index: int | None = None, *, problem_field: str | None = None, answer_field: str | None = None
    ) -> Example:
        keys = set(row) | ({"problem"} if problem_field else set()) | ({"answer"} if answer_field else set())
        name = detect_schema(sorted(keys))
        if name is None:
            raise DataError(
                f"cannot tell the format of a row with columns: {', '.join(row)}; pick an schema "
                f"(one of: {', '.join(a for a in SCHEMAS if a != 'auto')})"
            )
        return SCHEMAS[name](row, index, problem_field=problem_field, answer_field=answer_field)


SCHEMAS["auto"] = AutoSchema()  # type: ignore[assignment]

# The hub datasets Tina used (shangshang-wang/Tina tina/utils/constant.py).  "owner/name:config" names a config.
HUB_IDS: dict[str, str] = {
    "open-rs": "knoveleng/open-rs",
    "open-s1": "knoveleng/open-s1",
    "still-3": "RUC-AIBOX/STILL-3-Preview-RL-Data",
    "deepscaler": "agentica-org/DeepScaleR-Preview-Dataset",
    "ii-thought": "Intelligent-Internet/II-Thought-RL-v0-Math-50K",
    "limr": "GAIR/LIMR",
    "openr1-math": "open-r1/OpenR1-Math-220k:default",
    "curated-thoughts": "bethgelab/CuratedThoughts:OpenThoughts-114k-math-default",
    # Tina's L1 runs (commented out in its constant.py) drew target lengths on the fly over DeepScaleR.
    "l1": "agentica-org/DeepScaleR-Preview-Dataset",
}


def split_hub_id(hub_id: str) -> tuple[str, str | None]:
    """'owner/name:config' -> ('owner/name', 'config'); 'owner/name' -> ('owner/name', None)."""
    repo, sep, config = hub_id.partition(":")
    return repo, (config or None) if sep else None


def get_schema(name: str) -> Schema:
    """The schema called `name`; ConfigError with a suggestion if there is none."""
    if name in SCHEMAS:
        return SCHEMAS[name]
    names = list(SCHEMAS)
    raise ConfigError(f"unknown data schema '{name}'{did_you_mean(name, names)}; choose one of: {', '.join(names)}")


def detect_schema(columns: Sequence[str]) -> str | None:
    """Pick an schema name from a dataset's column names, or None if nothing fits.

    >>> detect_schema(["id", "problem", "answer"]), detect_schema(["question", "answer"])
    ('plain', 'still-3')
    >>> detect_schema(["id", "messages", "verification_info"]), detect_schema(["prompt", "answer"])
    ('ii-thought', 'limr')
    """
    cols = set(columns)
    if "verification_info" in cols:
        return "ii-thought"
    if "reward_model" in cols and "prompt" in cols:
        return "l1"
    if "problem" in cols and {"uuid", "problem_type"} <= cols and "answer" in cols:
        return "openr1-math"
    if "problem" in cols and cols & {"answer", "solution"}:
        return "plain"
    if "question" in cols and "answer" in cols:
        return "still-3"
    if "prompt" in cols and "answer" in cols:
        return "limr"
    if "problem" in cols and "ground_truth_solution" in cols:
        return "curated-thoughts"
    return None
