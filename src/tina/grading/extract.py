r"""Answer extraction: pull the final answer out of a model completion.

Pure string functions, no sympy, safe on adversarial input: every scan is linear in the text length (or bounded by
a fixed window), and the fallback patterns only look at the last `TAIL_CHARS` characters of the final answer part.

The *final answer part* of a completion (`final_part`) is the text after the last ``</think>``. A completion that
opened a ``<think>`` block (itself, or through a prompt that ends inside one: R1-distill's ``<think>\n``) and never
closed it has no final answer part: it never finished thinking, so nothing in it is an answer. A completion with no
think tags at all (a model that does not think aloud) is all final answer part.

>>> extract_answer(r"so $x=2$ and the answer is \boxed{\frac{1}{2}}.")
'\\frac{1}{2}'
>>> extract_answer(r"<think> ... then $y = 4$. Hmm, wait") is None
True
>>> extract_choice("The correct option is (B). Answer: C")
'C'
>>> extract_choice("Answer: C or D") is None
True
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from tina.grading.connectors import (
    CONNECTOR_WORDS,
    UNCERTAIN_ALT,
    UNCERTAIN_WORDS,
    connector_words,
    gap_joins,
    leading_doubt,
    trailing,
)

__all__ = [
    "EXTRACTIONS",
    "SOURCES",
    "TAIL_CHARS",
    "Extraction",
    "extract_answer",
    "extract_boxed",
    "extract_choice",
    "final_part",
    "find_answer",
    "find_choice",
    "opens_think",
]

# Fallback patterns (everything except \boxed{}) only read this many characters from the end of the final answer
# part, so a 1 MB completion costs no more than a 20 kB one.
TAIL_CHARS = 20_000

#: Extraction modes: "boxed" (only the last box of the final answer part counts: the training reward) and "lenient"
#: (box, then "answer is" phrases, then the last math span: the benchmark grader). See `tina.grading.grader`.
EXTRACTIONS = ("boxed", "lenient")
#: Where an answer was found: math "boxed" | "phrase" | "span"; multiple choice "boxed" | "phrase" | "paren" | "bare".
SOURCES = ("boxed", "phrase", "span", "paren", "bare")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_RE = re.compile(r"[{}]")
_BARE_BOX_ARG_RE = re.compile(r"\s+([^\s${}\\]+)")


@dataclass(frozen=True)
class Extraction:
    r"""What a completion gives as its final answer, and where it was found.

    answer: the answer text as written (not normalised); None unless `status` is "ok" or "hedged".
    source: one of `SOURCES`, or None when there is no answer.
    status: "ok"; "no_answer"; "unfinished" (think block never closed, or the last box never closes); "hedged"
        (multiple choice only: several letters for one choice; math hedges depend on the gold, see the grader).
    candidates: every candidate written for this one answer, in text order, `answer` included: adjacent boxes
        (``\boxed{7} or \boxed{8}``), the text after a trailing "or" (``\boxed{7} (or 8)``, "$7$ or $8$"). One
        element when the answer stands alone.
    doubt: an uncertainty word written next to the answer ("probably", "maybe", ...), lowercased, or None.
    """

    answer: str | None
    source: str | None
    status: str
    candidates: tuple[str, ...] = ()
    doubt: str | None = None


_NO_ANSWER = Extraction(None, None, "no_answer")
_UNFINISHED = Extraction(None, None, "unfinished")


def _last(matches: Iterator[re.Match[str]]) -> re.Match[str] | None:
    """The last match of an iterator of matches, or None."""
    last = None
    for last in matches:  # noqa: B007 - we want the last one
        pass
    return last


def opens_think(prompt: str) -> bool:
    r"""Whether `prompt` ends inside an open think block, so the completion starts inside it.

    >>> opens_think("<｜User｜>What is 1+1?<｜Assistant｜><think>\n"), opens_think("Use <think> </think> tags.")
    (True, False)
    """
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


def final_part(text: str, *, think_open: bool = False) -> str | None:
    r"""The final answer part of a completion: after the last ``</think>``; None if a think block is left open.

    `think_open`: the prompt ended inside a think block (see `opens_think`). With no think tags at all (and
    `think_open` False) the whole text is the final answer part.

    >>> final_part("<think>\nhm\n</think>\n\\boxed{4}")
    '\n\\boxed{4}'
    >>> final_part("<think>\nthe answer is 4, wait") is None, final_part("hm, 4", think_open=True) is None
    (True, True)
    >>> final_part("42")
    '42'
    """
    close = text.rfind(THINK_CLOSE)
    if text.rfind(THINK_OPEN) > close:
        return None
    if close >= 0:
        return text[close + len(THINK_CLOSE) :]
    return None if think_open else text


def _matched_braces(text: str, open_index: int, end: int | None = None) -> tuple[str, int] | None:
    """(content, index after the closing brace) for ``text[open_index] == '{'``; None if it does not close before
    `end`.

    >>> _matched_braces("a{b{c}d}e", 1)
    ('b{c}d', 8)
    """
    depth = 0
    for m in _BRACE_RE.finditer(text, open_index, len(text) if end is None else end):
        if m.group() == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : m.start()], m.end()
    return None


def _box_at(text: str, box: re.Match[str], end: int | None = None) -> tuple[str, int] | None:
    r"""(content, end index) of the box command matched by `box`; None when it never closes (before `end`).

    A box without braces (``\boxed 5``) takes the next whitespace-delimited token.
    """
    limit = len(text) if end is None else end
    j = box.end()
    while j < limit and text[j] in " \t":
        j += 1
    if j < limit and text[j] == "{":
        return _matched_braces(text, j, limit)
    bare = _BARE_BOX_ARG_RE.match(text, box.end(), limit)
    return (bare.group(1), bare.end()) if bare else None


def extract_boxed(text: str) -> str | None:
    r"""Content of the LAST ``\boxed{...}`` or ``\fbox{...}`` in `text`, braces matched.

    Returns None when there is no box or when the last box never closes (a truncated completion). A box without
    braces (``\boxed 5``) gives the next whitespace-delimited token. An empty box gives ``""``. (No think-block
    logic here: `find_answer` applies it.)

    >>> extract_boxed(r"\boxed{1} then \boxed{\frac{a}{b}}")
    '\\frac{a}{b}'
    >>> extract_boxed(r"\boxed{\frac{1}{2") is None
    True
    >>> extract_boxed(r"$\boxed 5$")
    '5'
    """
    last = _last(_BOX_RE.finditer(text))
    if last is None:
        return None
    found = _box_at(text, last)
    return found[0] if found else None


def _boxed_answer(part: str) -> Extraction | None:
    """The last box of `part` with the boxes written next to it; None if there is no non-empty box."""
    last = _last(_BOX_RE.finditer(part))
    if last is None:
        return None
    found = _box_at(part, last)
    if found is None:
        return _UNFINISHED
    content, end = found
    if not content.strip():
        return None
    candidates = [content.strip()]
    doubt = leading_doubt(part, last.start())
    after, trailing_doubt = trailing(part, end)
    if after is not None:
        candidates.append(after)
    doubt = doubt or trailing_doubt
    start = last.start()
    for _ in range(8):  # adjacent boxes before this one: "\boxed{7}, \boxed{8}", "\boxed{7} or \boxed{8}"
        prev = _last(_BOX_RE.finditer(part, max(0, start - 2000), start))
        if prev is None:
            break
        prev_found = _box_at(part, prev, start)
        if prev_found is None or not prev_found[0].strip():
            break
        joins, gap_doubt = gap_joins(part[prev_found[1] : start])
        if not joins:
            break
        candidates.insert(0, prev_found[0].strip())
        doubt = doubt or gap_doubt or leading_doubt(part, prev.start())
        start = prev.start()
    return Extraction(content.strip(), "boxed", "ok", tuple(candidates), doubt)


# "final answer is: $X$", "The answer is X.", "**Answer:** X", "Answer: X" -- the last one wins.
_ANSWER_PHRASE_RE = re.compile(
    r"answer\s*(?:is|:)\s*:?[ \t*]*(?P<rest>[^\n]+)",
    re.IGNORECASE,
)
# Display/inline math spans; the bounded repeats keep the scan near-linear on adversarial input. An escaped ``\$`` is a
# literal dollar sign, never a delimiter: it opens no span, and inside one (``$\$12.50$``) it does not close it. The
# content is read in units -- one character, or a backslash and the character it escapes -- so ``\\`` (a line break)
# right before the closing ``$`` still closes.
_MATH_UNIT = r"(?:[^$\\]|\\.)"
_INLINE_MATH_RE = re.compile(
    rf"(?<!\\)\$\$(?P<a>{_MATH_UNIT}{{1,4000}}?)\$\$|(?<!\\)\$(?P<b>{_MATH_UNIT}{{1,4000}}?)\$"
    r"|\\\[(?P<c>.{1,4000}?)\\\]|\\\((?P<d>.{1,4000}?)\\\)",
    re.DOTALL,
)
# "Final Answer: The final answer is 9.81." (Minerva's and MATH's few-shot format): the phrase restated at the start
# of the text after the phrase; the answer is what follows the restatement.
_RESTATED_RE = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?[ \t*]*", re.IGNORECASE)


def _span_text(m: re.Match[str]) -> str:
    return next(g for g in m.groups() if g is not None).strip()


def _phrase_answer(rest: str) -> Extraction | None:
    r"""The answer in the text after "answer is": its first math span if any, else the line up to a period.

    >>> _phrase_answer(r"$\frac{1}{2}$, as claimed.").answer
    '\\frac{1}{2}'
    >>> _phrase_answer("**42**.").answer
    '42'
    >>> _phrase_answer("probably $7$.").doubt, _phrase_answer("$7$ (or $8$).").candidates
    ('probably', ('7', '8'))
    >>> _phrase_answer("The final answer is 9.81. I hope it is correct.").answer
    '9.81'
    """
    rest = rest.strip().strip("*").strip()
    for _ in range(4):  # "Answer: The final answer is 9.81": skip the restated phrase (bounded: no runaway loop)
        restated = _RESTATED_RE.match(rest)
        if restated is None:
            break
        rest = rest[restated.end() :].strip().strip("*").strip()
    math = _INLINE_MATH_RE.search(rest)
    if math:
        answer = _span_text(math)
        if not answer:
            return None
        doubt = next((w for w in connector_words(rest[: math.start()][-60:]) if w in UNCERTAIN_WORDS), None)
        after, trailing_doubt = trailing(rest, math.end())
        candidates = (answer,) if after is None else (answer, after)
        return Extraction(answer, "phrase", "ok", candidates, doubt or trailing_doubt)
    # Plain text: stop at a sentence end (". " or final "."), but keep decimals like 3.5.
    rest = re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0]
    rest = rest.strip().strip("*").strip()
    return Extraction(rest, "phrase", "ok", (rest,)) if rest else None


def _span_answer(tail: str) -> Extraction | None:
    """The last math span. Spans before it are not candidates, even when joined by "or": prose restates a result that
    way ("$3x = 58$, or $x = 58/3$"). Only a doubt between them counts ("$x = 7$, or maybe $x = 8$")."""
    prev = last = None
    for m in _INLINE_MATH_RE.finditer(tail):
        prev, last = last, m
    if last is None:
        return None
    answer = _span_text(last)
    if not answer:
        return None
    candidates = [answer]
    after, doubt = trailing(tail, last.end())
    if after is not None:
        candidates.append(after)
    doubt = doubt or leading_doubt(tail, last.start())
    if doubt is None and prev is not None:
        doubt = gap_joins(tail[prev.end() : last.start()])[1]
    return Extraction(answer, "span", "ok", tuple(candidates), doubt)


def find_answer(text: str, *, think_open: bool = False, extraction: str = "lenient") -> Extraction:
    r"""The final answer of a math completion, where it came from, and what is written around it.

    Only the final answer part counts (`final_part`; a think block left open -> status "unfinished"). Then the last
    ``\boxed{}``/``\fbox{}`` (a last box that never closes -> "unfinished", no fallback); with
    ``extraction="lenient"`` and no non-empty box: the last "final answer is ..." / "answer is ..." / "Answer: ..."
    phrase, else the last ``$...$``, ``$$...$$``, ``\[...\]`` or ``\(...\)`` span. ``extraction="boxed"`` stops
    after the box (the training reward).

    >>> find_answer(r"<think>...</think> so \boxed{7} or \boxed{8}").candidates
    ('7', '8')
    >>> find_answer("The answer is 7.", extraction="boxed").status
    'no_answer'
    """
    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown extraction {extraction!r}; expected one of {EXTRACTIONS}")
    part = final_part(text, think_open=think_open)
    if part is None:
        return _UNFINISHED
    boxed = _boxed_answer(part)
    if boxed is not None:
        return boxed
    if extraction == "boxed":
        return _NO_ANSWER
    tail = part[-TAIL_CHARS:]
    phrase = _last(_ANSWER_PHRASE_RE.finditer(tail))
    if phrase is not None:
        found = _phrase_answer(phrase.group("rest"))
        if found is not None:
            return found
    return _span_answer(tail) or _NO_ANSWER


def extract_answer(text: str) -> str | None:
    r"""The final answer of a completion, or None (see `find_answer`; lenient extraction).

    >>> extract_answer(r"thus \boxed{12}")
    '12'
    >>> extract_answer("The final answer is: $25$. I hope it is correct.")
    '25'
    >>> extract_answer("Answer: 7")
    '7'
    >>> extract_answer(r"we get $x = 3$ and then $y=4$")
    'y=4'
    >>> extract_answer("no idea") is None
    True
    """
    found = find_answer(text)
    return found.answer if found.status == "ok" else None


def _letters(n_choices: int) -> str:
    if not 1 <= n_choices <= 26:
        raise ValueError(f"n_choices must be in 1..26, got {n_choices}")
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_choices]


_CHOICE_CONNECTOR = rf"(?:,|/|&|\\&|\+|;|(?<![A-Za-z])(?:{CONNECTOR_WORDS}|vs\.?|versus)(?![A-Za-z]))"


@lru_cache(maxsize=32)
def _choice_patterns(letters: str) -> tuple[re.Pattern[str], ...]:
    """(answer phrase, parenthesised letter, completion that is just a letter, a second letter joined by a connector,
    any other letter, a fragment sentence naming another letter) for the allowed letters."""
    phrase = re.compile(
        rf"answer(?:\s+is)?\s*:?\s*(?:is\s*)?:?[\s*]*(?:\$?\\(?:text|textbf|mathrm|mathbf)\s*\{{)?"
        rf"(?P<open>[(\[])?\s*(?P<letter>[{letters}])(?![A-Za-z0-9])",
        re.IGNORECASE,
    )
    paren = re.compile(rf"\(([{letters}])\)")
    whole = re.compile(rf"\s*[(\[]?([{letters}])[)\]]?\.?\s*")
    # "C or D", "C/D", "C, D", "(C) and (D)", "C (or maybe D)", "C \text{ or } D": a second letter joined to the first.
    # The second letter must be uppercase or bracketed, so "C and a ..." is not read as a second choice.
    second = re.compile(
        rf"[\s*)\]}}$]*(?:\(\s*)?(?:\\(?:text|textbf|mathrm)\s*\{{\s*)?{_CHOICE_CONNECTOR}"
        rf"(?:[\s*:$]|\\(?:text|textbf|mathrm)\s*\{{|\}}|{_CHOICE_CONNECTOR}){{0,12}}"
        rf"(?:\(\s*[{letters}]\s*\)|\[\s*[{letters}]\s*\]|(?-i:[{letters}]))(?![A-Za-z0-9])",
        re.IGNORECASE,
    )
    # "C. Or D.", "C. Maybe (D)?": a fragment sentence that only names another letter.
    fragment = re.compile(
        rf"[\s*)\]}}$]*\.\s*(?:(?:{UNCERTAIN_ALT}|or|either|alternatively)(?![A-Za-z])[\s,*]*)+"
        rf"(?:\(\s*[{letters}]\s*\)|\[\s*[{letters}]\s*\]|(?-i:[{letters}]))(?![A-Za-z0-9])[\s*)\]]*(?:[.?!]|$)",
        re.IGNORECASE | re.MULTILINE,
    )
    other = re.compile(rf"\(\s*[{letters}]\s*\)|\[\s*[{letters}]\s*\]|(?<![A-Za-z0-9'])[{letters}](?![A-Za-z0-9'])")
    return phrase, paren, whole, second, other, fragment


_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def _choice_in_box(content: str, letters: str) -> tuple[str, bool] | None:
    r"""(letter, hedged) for a letter written inside a box: ``C``, ``(C)``, ``\text{C}``, ``C. 42``; case-insensitive.
    Hedged when a second letter is joined to it (``C,D``, ``C \text{ or } D``).

    >>> _choice_in_box(r"\textbf{(b)}", "ABCD"), _choice_in_box("C/D", "ABCD")
    (('B', False), ('C', True))
    """
    s = _TEXT_WRAP_RE.sub(r" \1 ", content).strip()
    m = re.match(rf"[(\[]?\s*([{letters}])\s*[)\]]?", s, re.IGNORECASE)
    if m is None:
        return None
    rest = s[m.end() :]
    if _choice_patterns(letters)[3].match(rest.upper()):  # in a box a lowercase second letter counts too
        return m.group(1).upper(), True
    if re.fullmatch(r"(?:\s*[.:)]?(?:\s.*)?)?", rest, re.DOTALL):
        return m.group(1).upper(), False
    return None


# A doubt or disjunction later in the same sentence, followed by another letter: "Answer: C, though it could also be D".
_CHOICE_DOUBT_RE = re.compile(
    rf"(?<![A-Za-z])(?:{UNCERTAIN_ALT}|or|either|alternatively|could\s+also\s+be)(?![A-Za-z])", re.IGNORECASE
)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")


def _second_letter(tail: str, end: int, letters: str) -> bool:
    """Whether a second letter goes with the letter ending at `end`: joined to it on the same line ("C or D",
    "(C) and (D)", "C. Or D"), or after a doubt later in the same sentence ("C, though it could also be D")."""
    patterns = _choice_patterns(letters)
    line_end = tail.find("\n", end, end + 100)
    line_end = line_end if line_end >= 0 else min(len(tail), end + 100)
    if patterns[3].match(tail, end, line_end) or patterns[5].match(tail, end, line_end):
        return True
    stop = _SENTENCE_END_RE.search(tail, end, min(len(tail), end + 200))
    limit = stop.start() if stop else min(len(tail), end + 200)
    doubt = _CHOICE_DOUBT_RE.search(tail, end, limit)
    return doubt is not None and patterns[4].search(tail, doubt.end(), limit) is not None


def find_choice(text: str, n_choices: int = 4, *, think_open: bool = False, extraction: str = "lenient") -> Extraction:
    r"""The multiple-choice letter (GPQA) a completion picked, uppercase, and where it was found.

    Only the final answer part counts (see `final_part`). Strong signals first, last one wins: a boxed letter
    (``\boxed{C}``, ``\boxed{\text{(C)}}``) or an answer phrase ("Answer: C", "the answer is (c)", "answer is **C**";
    a bare letter must be uppercase here so that "the answer is a ..." is not read as A). If there is none, the last
    parenthesised letter "(C)"; if there is none either, a completion that is just a letter ("C" or "C."). A signal
    that joins a second letter to its letter ("C or D", "C/D", "C, D", ``\boxed{C,D}``, "(C) and (D)") is "hedged".
    ``extraction="boxed"``: only a box counts, and only if it is the last strong signal.

    >>> find_choice("Answer: (C) and (D)")
    Extraction(answer='C', source='phrase', status='hedged', candidates=(), doubt=None)
    """
    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown extraction {extraction!r}; expected one of {EXTRACTIONS}")
    letters = _letters(n_choices)
    phrase_re, paren_re, whole_re = _choice_patterns(letters)[:3]
    part = final_part(text, think_open=think_open)
    if part is None:
        return _UNFINISHED
    tail = part[-TAIL_CHARS:]
    best: tuple[int, str, bool, str] | None = None  # (position, letter, hedged, source)
    for box in _BOX_RE.finditer(tail):
        j = box.end()
        while j < len(tail) and tail[j] in " \t":
            j += 1
        # a choice box is short: only look 200 characters ahead (keeps many unclosed boxes linear)
        found = _matched_braces(tail, j, min(len(tail), j + 200)) if j < len(tail) and tail[j] == "{" else None
        got = _choice_in_box(found[0], letters) if found is not None else None
        if got:
            best = (box.start(), got[0], got[1], "boxed")
    for m in phrase_re.finditer(tail):
        letter = m.group("letter")
        # a bare lowercase letter is probably an article ("the answer is a ..."); "(c)" is a choice
        if (letter.isupper() or m.group("open")) and (best is None or m.start() > best[0]):
            best = (m.start(), letter.upper(), _second_letter(tail, m.end(), letters), "phrase")
    if best is not None:
        if extraction == "boxed" and best[3] != "boxed":
            return _NO_ANSWER
        return Extraction(best[1], best[3], "hedged" if best[2] else "ok")
    if extraction == "boxed":
        return _NO_ANSWER
    recent: list[re.Match[str]] = []
    for m in paren_re.finditer(tail):
        recent = [recent[-1], m] if recent else [m]
    if recent:
        last = recent[-1]
        hedged = _second_letter(tail, last.end(), letters)
        if len(recent) == 2 and recent[0].group(1) != last.group(1):
            hedged = hedged or gap_joins(tail[recent[0].end() : last.start()])[0]
        return Extraction(last.group(1), "paren", "hedged" if hedged else "ok")
    whole = whole_re.fullmatch(tail)
    return Extraction(whole.group(1), "bare", "ok") if whole else _NO_ANSWER


def extract_choice(text: str, n_choices: int = 4) -> str | None:
    r"""The multiple-choice letter (GPQA) a completion picked, uppercase, or None (also when it hedges between
    letters or never finishes thinking; see `find_choice`).

    >>> extract_choice(r"... so \boxed{B}")
    'B'
    >>> extract_choice("Options (A) and (D) fail, so the answer is (C).")
    'C'
    >>> extract_choice("I am not sure.") is None
    True
    """
    found = find_choice(text, n_choices)
    return found.answer if found.status == "ok" else None
