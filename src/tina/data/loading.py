"""Read rows from a local file or the Hugging Face Hub, and turn them into Examples.

A source is, in this order:
1. an existing local path: `.jsonl`, `.json` (a list of objects, `{"data": [...]}`, a dict of equal-length columns,
   or JSON lines), `.parquet`, `.csv`, or a folder (a `save_to_disk` dataset, or data files `datasets` can read);
2. a short name from `HUB_IDS` ("open-rs", "limr", ...), which also picks that dataset's schema;
3. a hub id "owner/name" (optionally "owner/name:config"), read with `datasets.load_dataset`.

Anything that looks like a file path (a data-file extension, or starting with '/', './', '../', '~') but does not
exist is a DataError, never a hub lookup.  `split` and `subset` apply to hub datasets and saved DatasetDicts; a
local file is one split.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tina.data.example import Example, Examples
from tina.data.schemas import HUB_IDS, SCHEMAS, Schema, detect_schema, get_schema, split_hub_id
from tina.errors import ConfigError, DataError
from tina.files import json_objects, json_type

log = logging.getLogger("tina.data")

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_MAX_DROPPED_IDS = 20


# ----------------------------------------------------------------------------------------------------------------------
# Source resolution
# ----------------------------------------------------------------------------------------------------------------------


def _looks_like_path(source: str) -> bool:
    """True for anything that is clearly meant as a file path rather than a hub id."""
    return (
        source.lower().endswith(DATA_SUFFIXES)
        or source.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in source
    )


def resolve_source(source: str, subset: str | None = None) -> tuple[str, str | None, str | None]:
    """-> (kind, location, subset) with kind "local" or "hub".  Short names become their hub id (and config)."""
    if not isinstance(source, str) or not source.strip():
        raise DataError("data source is empty; set data.source to a .jsonl/.json/.parquet path or a hub id")
    expanded = os.path.expanduser(source)
    if os.path.exists(expanded):
        return "local", expanded, subset
    if _looks_like_path(source):
        raise DataError(
            f"data file not found: '{source}' (looked in {Path(expanded).absolute()}); check the path "
            f"(relative paths start from the current directory, {os.getcwd()})"
        )
    hub_id = HUB_IDS.get(source, source)
    repo, config = split_hub_id(hub_id)
    return "hub", repo, subset if subset is not None else config


# ----------------------------------------------------------------------------------------------------------------------
# Local readers
# ----------------------------------------------------------------------------------------------------------------------


def _read_jsonl(path: str, shown: str, text: str | None = None) -> list[dict]:
    lines = _open_text(path, shown) if text is None else text.splitlines()
    return json_objects(lines, shown, expect='each line must look like {"problem": ..., "answer": ...}')


def _open_text(path: str, shown: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            yield from fh
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{shown}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read data file '{shown}': {exc.strerror or exc}") from None


def _read_json(path: str, shown: str) -> list[dict]:
    text = "".join(_open_text(path, shown))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # `Dataset.to_json` writes JSON lines even into a .json file: read it that way.
            return _read_jsonl(path, shown, text=text)
        raise DataError(
            f"{shown}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); fix the file "
            f'(expected a list of objects, {{"data": [...]}}, or one object per line)'
        ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    elif isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise DataError(
                f"{shown}: the columns have different lengths {sorted(lengths)}; "
                f"a column-oriented .json needs equal-length lists"
            )
        keys = list(data)
        data = [dict(zip(keys, values, strict=True)) for values in zip(*data.values(), strict=True)]
    if not isinstance(data, list):
        raise DataError(f'{shown}: expected a list of objects or {{"data": [...]}}, got a {json_type(data)}')
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(
                f"{shown}: item {i} is a {json_type(obj)}, not an object; every row must be a JSON "
                f'object like {{"problem": ..., "answer": ...}}'
            )
    return data


def _read_parquet(path: str, shown: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"cannot read parquet file '{shown}': {str(exc).splitlines()[0]}; check that it is a complete .parquet file"
        ) from None


def _read_csv(path: str, shown: str) -> list[dict]:
    return list(csv.DictReader(_open_text(path, shown)))


def _read_local(path: str, shown: str, *, split: str, subset: str | None) -> list[dict]:
    if os.path.isdir(path):
        return _hub_or_dir_rows(path, shown, split=split, subset=subset, is_dir=True)
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, shown)
    if suffix == ".json":
        return _read_json(path, shown)
    if suffix == ".parquet":
        return _read_parquet(path, shown)
    if suffix == ".csv":
        return _read_csv(path, shown)
    raise DataError(
        f"unsupported data file type '{suffix or Path(path).name}' for '{shown}'; use .jsonl, .json, .parquet or .csv"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Hub (and dataset folders) via `datasets`
# ----------------------------------------------------------------------------------------------------------------------


def _open_dataset(location: str, shown: str, *, split: str, subset: str | None, is_dir: bool = False):
    """A `datasets.Dataset` for a hub id or a folder.  Any failure becomes one DataError line."""
    import datasets

    try:
        if is_dir and (Path(location, "dataset_dict.json").exists() or Path(location, "state.json").exists()):
            loaded = datasets.load_from_disk(location)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"dataset folder '{shown}' has no split '{split}'; splits: {', '.join(loaded)}")
                loaded = loaded[split]
            return loaded
        return datasets.load_dataset(location, subset, split=split)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - load_dataset raises many types; all mean "cannot load this source"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        offline = (
            " (HF_HUB_OFFLINE is set: only datasets already in the local cache load)"
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            else ""
        )
        if is_dir:
            what = f"dataset folder '{shown}'"
        elif shown != location:
            what = f"hub dataset '{location}' (short name '{shown}')"
        else:
            what = f"hub dataset '{location}' (no local file or folder of that name either)"
        raise DataError(
            f"cannot load {what}, subset {subset!r}, split {split!r}: {type(exc).__name__}: {first}{offline}; "
            f"check the id, subset and split, or download it and point data.source at a local "
            f".jsonl/.json/.parquet file"
        ) from exc


def _hub_or_dir_rows(location: str, shown: str, *, split: str, subset: str | None, is_dir: bool = False) -> list[dict]:
    return _open_dataset(location, shown, split=split, subset=subset, is_dir=is_dir).to_list()


# ----------------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------------


def load_rows(source: str, *, split: str = "train", subset: str | None = None) -> list[dict]:
    """All rows of `source` as plain dicts (see the module docstring for what a source can be).

    Raises DataError (one line: what, where, how to fix) for a missing file, unreadable file, bad JSON line (with
    its line number), or a hub dataset that cannot be loaded.
    """
    kind, location, subset = resolve_source(source, subset)
    if kind == "local":
        return _read_local(location, source, split=split, subset=subset)
    return _hub_or_dir_rows(location, source, split=split, subset=subset)


def _rows_and_columns(
    source: str, *, split: str, subset: str | None, pick: Callable[[list[str]], Schema], extra: Iterable[str] = ()
) -> tuple[Iterable[dict], list[str], Schema]:
    """Rows (lazily, for hub datasets), their columns, and the schema `pick(columns)` chose.

    For hub datasets only the columns the schema reads are materialised: OpenR1-Math's `generations` column alone
    is gigabytes.
    """
    kind, location, subset = resolve_source(source, subset)
    if kind == "local" and not os.path.isdir(location):
        rows = _read_local(location, source, split=split, subset=subset)
        columns = list(dict.fromkeys(k for row in rows[:100] for k in row))
        return rows, columns, pick(columns)
    ds = _open_dataset(location, source, split=split, subset=subset, is_dir=kind == "local")
    columns = list(ds.column_names)
    schema = pick(columns)
    keep = [c for c in dict.fromkeys([*schema.columns_used(), *extra]) if c in columns]
    return ds.select_columns(keep) if keep else ds, columns, schema


def load_examples(
    source: str,
    *,
    schema: str = "auto",
    split: str = "train",
    subset: str | None = None,
    problem_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
) -> Examples:
    """Load `source` and normalise each row with an schema (see `tina.data.schemas`) into Examples.

    schema: a name from SCHEMAS, or "auto" to pick one from the columns (a short source name such as "open-rs"
        picks its own schema).
    problem_field / answer_field: read these columns instead of the schema's own.
    limit: stop after this many kept examples (in source order).

    Rows with an empty problem or answer are skipped; the returned `Examples` list counts them (`dropped`,
    `drop_reasons`, `dropped_ids`) and one warning is logged.  A dataset with no usable rows is a DataError, and so
    is one that lacks the schema's columns (the message lists the columns found).

    >>> import json, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "toy.jsonl")
    >>> _ = open(path, "w").write(json.dumps({"problem": "1+1?", "answer": 2}) + "\\n")
    >>> load_examples(path)[0]
    Example(problem='1+1?', answer='2', id='0', meta={})
    """
    if schema == "auto" and source in HUB_IDS and not os.path.exists(source):
        schema = source
    if schema != "auto":
        get_schema(schema)  # fail fast on a typo, before any loading
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"data limit must be a positive integer or null; got {limit!r}")

    def pick(columns: list[str]) -> Schema:
        if not columns:
            raise DataError(f"dataset '{source}' has no rows; check that the file is not empty")
        found = ", ".join(columns)
        for override, what in ((problem_field, "problem_field"), (answer_field, "answer_field")):
            if override and override not in columns:
                raise DataError(
                    f"dataset '{source}' has no column '{override}' (set by data.{what}); columns found: {found}"
                )
        name = schema
        if name == "auto":
            pseudo = set(columns) | ({"problem"} if problem_field else set()) | ({"answer"} if answer_field else set())
            name = detect_schema(sorted(pseudo)) or ""
            if not name:
                raise DataError(
                    f"dataset '{source}': cannot tell its format from its columns (schema 'auto'); columns found: "
                    f"{found}; set data.schema (one of: {', '.join(a for a in SCHEMAS if a != 'auto')}) "
                    "or data.problem_field / data.answer_field"
                )
        chosen = get_schema(name)
        missing = chosen.missing_columns(columns, problem_field=problem_field, answer_field=answer_field)
        if missing:
            raise DataError(
                f"dataset '{source}' (schema '{chosen.name}') has no column {missing[0]}; columns found: {found}; "
                f"set data.problem_field / data.answer_field (or another data.schema)"
            )
        return chosen

    rows, _columns, chosen = _rows_and_columns(
        source, split=split, subset=subset, pick=pick, extra=[f for f in (problem_field, answer_field) if f]
    )

    kept: list[Example] = []
    reasons: dict[str, int] = {}
    dropped_ids: list[str] = []
    total = 0
    for index, row in enumerate(rows):
        if limit is not None and len(kept) >= limit:
            break
        total += 1
        ex = chosen(row, index, problem_field=problem_field, answer_field=answer_field)
        reason = "empty problem" if not ex.problem.strip() else "empty answer" if not ex.answer.strip() else None
        if reason is None:
            kept.append(ex)
            continue
        reasons[reason] = reasons.get(reason, 0) + 1
        if len(dropped_ids) < _MAX_DROPPED_IDS:
            dropped_ids.append(ex.id)

    result = Examples(kept, source=source, schema=chosen.name, drop_reasons=reasons, dropped_ids=dropped_ids)
    if total and not kept:
        raise DataError(
            f"dataset '{source}' (schema '{chosen.name}'): all {total} rows were dropped "
            f"({_reasons_text(reasons)}); check data.schema / data.answer_field"
        )
    if total == 0:
        raise DataError(f"dataset '{source}' has no rows; check that the file is not empty")
    if result.dropped:
        log.warning(
            "dropped %d of %d rows from '%s' (%s); first ids: %s",
            result.dropped,
            total,
            source,
            _reasons_text(reasons),
            ", ".join(dropped_ids[:5]),
        )
    return result


def _reasons_text(reasons: dict[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
