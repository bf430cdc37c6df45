"""samples.jsonl as the log of finished work: what makes a long evaluation resumable.

A *unit* is one problem under one seed for one model on one benchmark (and phase: ``test`` or ``selection``): its
``samples`` completions are generated, graded and appended to samples.jsonl together, as soon as they are done.  A
killed evaluation (pre-emption, Ctrl-C, OOM) is resumed with ``tina eval ... --resume``: the log is read back, every
unit whose completions are all there is kept as it is, a unit cut short by the kill is generated again (its partial
lines are ignored), and the results are computed from the log -- exactly those of an uninterrupted run, since every
completion's random stream depends only on its (seed, benchmark, problem, sample).  ``eval_state.json`` beside the
log records the options that decide what the units contain; a resume with different ones is refused.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from tina.errors import TinaError

STATE_FILE = "eval_state.json"
# Options that change what a unit holds: a resume must use the same ones.
PROTOCOL_OPTIONS = (
    "model",
    "samples",
    "temperature",
    "top_p",
    "max_new_tokens",
    "template",
    "dtype",
    "backend",
    "merge_adapters",
    "data_dir",
    "select_prompt",
)

Key = tuple  # (model label, benchmark, phase, seed, problem_id)


def unit_key(record: dict) -> Key:
    return (
        record["model"],
        record["benchmark"],
        record.get("phase", "test"),
        int(record["seed"]),
        str(record["problem_id"]),
    )


class SampleLog:
    """Appends units to samples.jsonl and answers which units are already complete."""

    def __init__(self, path: str | Path, *, samples: int, resume: bool):
        self.path = Path(path)
        self.samples = samples
        self.units: dict[Key, dict[int, dict]] = defaultdict(dict)
        if resume and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the half-written last line of a killed process
                self.units[unit_key(record)][int(record["sample"])] = record
            partial = [k for k, unit in self.units.items() if self.complete(k) is None]
            for k in partial:  # cut short by the kill: generated again
                del self.units[k]
            self._rewrite()
        self.restored = len(self.units)
        self._fh = open(self.path, "a" if resume else "w", encoding="utf-8")

    def complete(self, key: Key) -> list[dict] | None:
        """The unit's records in sample order if all its samples are there, else None."""
        got = self.units.get(key, {})
        if all(j in got for j in range(self.samples)):
            return [got[j] for j in range(self.samples)]
        return None

    def add(self, records: list[dict]) -> None:
        """Append one or more finished units (all their samples) and flush."""
        for record in records:
            self.units[unit_key(record)][int(record["sample"])] = record
            self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def _rewrite(self) -> None:
        """Rewrite the file with exactly the complete units (atomically: a kill leaves the old or the new file)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for unit in self.units.values():
                for j in sorted(unit):
                    fh.write(json.dumps(unit[j], ensure_ascii=False) + "\n")
        tmp.replace(self.path)


def check_state(out: Path, options: dict, *, resume: bool) -> None:
    """Write eval_state.json; on ``--resume`` first check that it holds the same protocol options."""
    path = out / STATE_FILE
    current = {k: options.get(k) for k in PROTOCOL_OPTIONS}
    if resume and path.is_file():
        try:
            previous = json.loads(path.read_text()).get("options", {})
        except ValueError:
            previous = {}
        changed = [k for k in PROTOCOL_OPTIONS if k in previous and previous[k] != current[k]]
        if changed:
            raise TinaError(
                f"--resume with different options than the evaluation in {out} "
                f"({', '.join(f'{k}: {previous[k]!r} -> {current[k]!r}' for k in changed)}); resume with "
                "the same options, or choose another --output-dir"
            )
    path.write_text(json.dumps({"options": current}, indent=2))
