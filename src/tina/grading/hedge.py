r"""Hedges: an answer that names several candidates for one value, or doubts itself, is never rewarded.

Pure string functions (no sympy), linear scans. `plan` turns an `Extraction` and the gold into what to grade:

* **doubt** -- an uncertainty word (`UNCERTAIN_WORDS`: maybe, perhaps, possibly, probably, ...) or a "?" in the
  answer or right next to it -> hedged, whatever the gold (unless the gold itself contains that word).
* **list gold** (`is_list_gold`: a comma, a semicolon, ``\pm``, "or"/"and" in the gold -- a set, tuple, interval or
  several solutions): the answer is graded whole, as today; candidates written next to each other
  (``\boxed{1} or \boxed{-2}``) are joined into one list ``1, -2``.
* **single gold** (anything else): the answer is split into its candidates (`split_candidates`: top-level commas
  and semicolons -- not thousands separators ``1,000``, ``10,\!000``, ``1\,000`` --, "or", "and", ``\lor``,
  ``\vee``, a parenthetical "(or 8)", ``\pm`` expanded into + and -), together with the candidates the extraction
  found next to it. One candidate: graded as usual. Several distinct candidates: each one is graded and the answer is
  correct only if EVERY candidate is (one value written in two forms, ``15\frac{39}{40}`` or ``\frac{639}{40}``);
  otherwise the verdict is "hedged". An "or" that cannot be split off (inside brackets) -> hedged.

>>> plan(Extraction("7, 8", "boxed", "ok", ("7, 8",)), "7")
Plan(preds=('7', '8'), display='7, 8', hedged=False)
>>> plan(Extraction(r"7\text{ (or maybe 8)}", "boxed", "ok", (r"7\text{ (or maybe 8)}",)), "7").hedged
True
>>> plan(Extraction("1,000", "boxed", "ok", ("1,000",)), "1000").preds
('1,000',)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from tina.grading.connectors import UNCERTAIN_WORDS
from tina.grading.extract import Extraction
from tina.grading.normalize import gold_core, pred_core, text_key
from tina.grading.numeric import unify_thousands

__all__ = ["Plan", "doubt_word", "is_list_gold", "plan", "split_candidates"]

_DOUBT_RE = re.compile(
    r"(?<![A-Za-z])(?P<w>" + "|".join(w.replace(" ", r"\s+") for w in UNCERTAIN_WORDS) + r")(?![A-Za-z])|\?",
    re.IGNORECASE,
)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# "7 (or 8)", "7 (and 8)": a parenthetical that adds a candidate.
# Connector words are matched in lower case (or capitalised) only: "OR" is a segment in geometry, not a connector.
_PAREN_ALT_RE = re.compile(r"\(\s*(?:[Oo]r|[Aa]nd)(?![A-Za-z])([^()]{0,200})\)")
_SPLIT_RE = re.compile(
    r"[(\[{]|[)\]}]|[,;]|\\(?:lor|vee)(?![A-Za-z])|(?<![A-Za-z\\])(?:[Oo]r|[Aa]nd|[Ee]ither)(?![A-Za-z])"
)
_LIST_GOLD_RE = re.compile(r"[,;]|\\(?:pm|mp|lor|vee)(?![A-Za-z])|(?<![A-Za-z\\])(?:[Oo]r|[Aa]nd)(?![A-Za-z])")
_PM_RE = re.compile(r"\\(?:pm|mp)(?![A-Za-z])")


@dataclass(frozen=True)
class Plan:
    """What to grade for one answer: every pred in `preds` must be correct; `hedged`: not correct, no grading."""

    preds: tuple[str, ...]
    display: str  # what the verdict shows as extracted
    hedged: bool


def _plain(text: str) -> str:
    r"""Text commands unwrapped, ``{,}`` and thousands separators removed (MATH's ``10,\!000`` and ``1\,000`` too:
    `tina.grading.numeric.unify_thousands`), so that the commas left are the ones that separate candidates.

    >>> _plain(r"\$12,\!345.60"), _plain(r"1,\!000, 2")
    ('\\$12345.60', '1000, 2')
    """
    s = _TEXT_CMD_RE.sub(r" \1 ", text).replace("{,}", ",")
    return _THOUSANDS_RE.sub("", unify_thousands(s))


def doubt_word(text: str) -> str | None:
    """The first uncertainty word (or "?") in `text`, lowercased, or None.

    >>> doubt_word(r"7 \\text{ (probably)}"), doubt_word("7?"), doubt_word("\\\\overline{OR}")
    ('probably', '?', None)
    """
    m = _DOUBT_RE.search(text)
    return None if m is None else re.sub(r"\s+", " ", m.group().lower())


@lru_cache(maxsize=65_536)
def _gold_profile(gold: str) -> tuple[bool, str]:
    core = gold_core(gold)
    return bool(_LIST_GOLD_RE.search(_plain(core))), core.lower()


def is_list_gold(gold: str) -> bool:
    r"""Whether the gold has several parts (a set, tuple, interval, list of solutions, ``\pm``).

    >>> is_list_gold(r"\{1,2\}"), is_list_gold("1,000"), is_list_gold(r"2\pm\sqrt{3}"), is_list_gold(r"\frac{1}{2}")
    (True, False, True, False)
    >>> is_list_gold(r"10,\!000"), is_list_gold(r"\$32,\!348")
    (False, False)
    """
    return _gold_profile(gold)[0]


def split_candidates(pred: str) -> list[str] | None:
    r"""The candidates one answer names, in order, duplicates (by `text_key`) dropped; None when it joins
    candidates with "or" inside brackets, where they cannot be split off.

    >>> split_candidates(r"7 \text{ or } 8"), split_candidates("1,000"), split_candidates(r"(1, 2)")
    (['7', '8'], ['1,000'], ['(1, 2)'])
    >>> split_candidates(r"3 \pm 1")
    ['3 + 1', '3 - 1']
    >>> split_candidates(r"f(x \text{ or } y)") is None
    True
    """
    s = _PAREN_ALT_RE.sub(r" or \1", _plain(pred))
    parts: list[str] = []
    depth = start = 0
    for m in _SPLIT_RE.finditer(s):
        token = m.group()
        if token in "([{":
            depth += 1
        elif token in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0:
            parts.append(s[start : m.start()])
            start = m.end()
        elif token not in (",", ";", "and", "And"):
            return None
    parts.append(s[start:])
    out: list[str] = []
    for part in parts:
        part = part.strip().strip("$").strip()
        if not part:
            continue
        if _PM_RE.search(part):
            plus = part.replace("\\pm", "+").replace("\\mp", "-")
            minus = part.replace("\\pm", "-").replace("\\mp", "+")
            out.extend([plus, minus])
        else:
            out.append(part)
    seen: dict[str, str] = {}
    for part in out:
        seen.setdefault(text_key(part), part)
    return list(seen.values()) if len(seen) > 1 else [pred]  # one candidate: the answer exactly as written


def plan(found: Extraction, gold: str) -> Plan:
    r"""What to grade for an extracted math answer (see the module docstring for the rules).

    >>> plan(Extraction("1", "boxed", "ok", ("1", "-2")), "1, -2")
    Plan(preds=('1, -2',), display='1, -2', hedged=False)
    >>> plan(Extraction("8", "boxed", "ok", ("7", "8")), "8")
    Plan(preds=('7', '8'), display='7; 8', hedged=False)
    """
    assert found.answer is not None
    candidates = found.candidates or (found.answer,)
    distinct = list(dict.fromkeys(pred_core(c) for c in candidates if pred_core(c)))
    display = "; ".join(distinct) if len(distinct) > 1 else pred_core(found.answer)
    list_gold, gold_lower = _gold_profile(gold)
    doubt = found.doubt or next((w for w in map(doubt_word, distinct) if w), None)
    if doubt is not None and doubt not in gold_lower:
        return Plan((), display, True)
    if list_gold:
        joined = pred_core(", ".join(distinct)) if len(distinct) > 1 else display
        return Plan((joined,), joined, False)
    preds: list[str] = []
    for candidate in distinct:
        split = split_candidates(candidate)
        if split is None:
            return Plan((), display, True)
        preds.extend(p for p in (pred_core(x) for x in split) if p)
    keyed: dict[str, str] = {}
    for pred in preds:
        keyed.setdefault(text_key(pred), pred)
    return Plan(tuple(keyed.values()), display, False)
