"""A converted recipe and how it is written: YAML with the run command on the first line, the notes and the dropped
keys as comments, system prompts as literal blocks."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class Imported:
    """A converted recipe: ``recipe`` is a raw tina recipe dict (validate it with ``load_config``)."""

    recipe: dict
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    source: str = "ORIGINAL.yaml"
    missing_max_steps: str | None = None  # why max_steps could not be worked out (an error unless overridden)

    def to_text(self, recipe_path: str | None = None) -> str:
        """The recipe as YAML, with the run command on the first line and the notes and dropped keys as comments."""
        stem = Path(recipe_path or self.source).stem
        target = recipe_path or "THIS_FILE.yaml"  # printed: the user chooses where to save it
        lines = [
            f"# tina train {target} --output-dir runs/{stem}",
            f"# Imported by `tina recipes import` from {self.source}; keys it leaves out take TRL 0.15's defaults.",
        ]
        for note in self.notes:
            wrapped = textwrap.wrap(note, width=114, break_on_hyphens=False, break_long_words=False) or [""]
            lines.append(f"# - {wrapped[0]}")
            lines += [f"#   {more}" for more in wrapped[1:]]
        if self.dropped:
            lines.append("# Dropped (no effect in tina):")
            lines += _wrap_list(self.dropped)
        body = yaml.dump(
            self.recipe, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True
        )
        return "\n".join(lines) + "\n" + body


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings (system prompts) written as literal blocks."""


def _str_representer(dumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _wrap_list(items: list[str], width: int = 116) -> list[str]:
    out, line = [], "#  "
    for item in items:
        piece = f" {item},"
        if len(line) + len(piece) > width:
            out.append(line.rstrip())
            line = "#  "
        line += piece
    out.append(line.rstrip().rstrip(","))
    return out
