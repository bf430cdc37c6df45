r"""Answer extraction: pull the final answer out of a model completion.

Pure string functions, no sympy, safe on adversarial input: every scan is linear in the text length, and the
fallback patterns only look at the last `TAIL_CHARS` characters of the completion.

>>> extract_answer(r"so $x=2$ and the answer is \boxed{\frac{1}{2}}.")
'\\frac{1}{2}'
>>> extract_choice("The correct option is (B). Answer: C")
'C'
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

__all__ = ["TAIL_CHARS", "extract_answer", "extract_boxed", "extract_choice"]

# Fallback patterns (everything except \boxed{}) only read this many characters from the end of the completion,
# so a 1 MB completion costs no more than a 20 kB one.
TAIL_CHARS = 20_000

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_RE = re.compile(r"[{}]")
_BARE_BOX_ARG_RE = re.compile(r"\s+([^\s${}\\]+)")


def _last(matches: Iterator[re.Match[str]]) -> re.Match[str] | None:
    """The last match of an iterator of matches, or None."""
    last = None
    for last in matches:  # noqa: B007 - we want the last one
        pass
    return last


def _matched_braces(text: str, open_index: int) -> str | None:
    """Content between ``text[open_index] == '{'`` and its matching ``}``; None if it never closes.

    >>> _matched_braces("a{b{c}d}e", 1)
    'b{c}d'
    """
    depth = 0
    for m in _BRACE_RE.finditer(text, open_index):
        if m.group() == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : m.start()]
    return None


def extract_boxed(text: str) -> str | None:
    r"""Content of the LAST ``\boxed{...}`` or ``\fbox{...}`` in `text`, braces matched.

    Returns None when there is no box or when the last box never closes (a truncated completion). A box without
    braces (``\boxed 5``) gives the next whitespace-delimited token. An empty box gives ``""``.

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
    rest = last.end()
    j = rest
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        return _matched_braces(text, j)
    bare = _BARE_BOX_ARG_RE.match(text, rest)
    return bare.group(1) if bare else None


# "final answer is: $X$", "The answer is X.", "**Answer:** X", "Answer: X" -- the last one wins.
_ANSWER_PHRASE_RE = re.compile(
    r"answer\s*(?:is|:)\s*:?[ \t*]*(?P<rest>[^\n]+)",
    re.IGNORECASE,
)
# Display/inline math spans; the bounded repeats keep the scan near-linear on adversarial input.
_INLINE_MATH_RE = re.compile(
    r"\$\$(?P<a>[^$]{1,4000}?)\$\$|\$(?P<b>[^$]{1,4000}?)\$|\\\[(?P<c>.{1,4000}?)\\\]|\\\((?P<d>.{1,4000}?)\\\)",
    re.DOTALL,
)


def _clean_phrase_answer(rest: str) -> str | None:
    r"""Turn the text after "answer is" into an answer: first math span if any, else the line up to a period.

    >>> _clean_phrase_answer(r"$\frac{1}{2}$, as claimed.")
    '\\frac{1}{2}'
    >>> _clean_phrase_answer("**42**.")
    '42'
    """
    rest = rest.strip().strip("*").strip()
    math = _INLINE_MATH_RE.search(rest)
    if math:
        return next(g for g in math.groups() if g is not None).strip() or None
    # Plain text: stop at a sentence end (". " or final "."), but keep decimals like 3.5.
    rest = re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0]
    rest = rest.strip().strip("*").strip()
    return rest or None


def extract_answer(text: str) -> str | None:
    r"""The final answer of a completion, or None.

    Order: the last ``\boxed{}``/``\fbox{}`` (if the last box is truncated, the answer is None -- no fallback);
    else the last "final answer is ..." / "answer is ..." / "Answer: ..." phrase; else the last ``$...$``,
    ``$$...$$``, ``\[...\]`` or ``\(...\)`` span. Whitespace is stripped; an empty result is None.

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
    if _BOX_RE.search(text):
        boxed = extract_boxed(text)
        if boxed is None:
            return None
        if boxed.strip():
            return boxed.strip()
    tail = text[-TAIL_CHARS:]
    phrase = _last(_ANSWER_PHRASE_RE.finditer(tail))
    if phrase is not None:
        answer = _clean_phrase_answer(phrase.group("rest"))
        if answer:
            return answer
    span = _last(_INLINE_MATH_RE.finditer(tail))
    if span is not None:
        content = next(g for g in span.groups() if g is not None).strip()
        return content or None
    return None


def _letters(n_choices: int) -> str:
    if not 1 <= n_choices <= 26:
        raise ValueError(f"n_choices must be in 1..26, got {n_choices}")
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_choices]


@lru_cache(maxsize=32)
def _choice_patterns(letters: str) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """(answer phrase, parenthesised letter, completion that is just a letter) for the allowed letters."""
    phrase = re.compile(
        rf"answer(?:\s+is)?\s*:?\s*(?:is\s*)?:?[\s*]*(?:\$?\\(?:text|textbf|mathrm|mathbf)\s*\{{)?"
        rf"(?P<open>[(\[])?\s*(?P<letter>[{letters}])(?![A-Za-z0-9])",
        re.IGNORECASE,
    )
    paren = re.compile(rf"\(([{letters}])\)")
    whole = re.compile(rf"\s*[(\[]?([{letters}])[)\]]?\.?\s*")
    return phrase, paren, whole


def _choice_in_box(content: str, letters: str) -> str | None:
    r"""A letter written inside a box: ``C``, ``(C)``, ``\text{C}``, ``C. 42``; case-insensitive.

    >>> _choice_in_box(r"\textbf{(b)}", "ABCD")
    'B'
    """
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", content).strip()
    m = re.fullmatch(rf"[(\[]?\s*([{letters}])\s*[)\]]?(?:\s*[.:)]?(?:\s.*)?)?", s, re.IGNORECASE | re.DOTALL)
    return m.group(1).upper() if m else None


def extract_choice(text: str, n_choices: int = 4) -> str | None:
    r"""The multiple-choice letter (GPQA) a completion picked, uppercase, or None.

    Strong signals first, last one wins: a boxed letter (``\boxed{C}``, ``\boxed{\text{(C)}}``) or an answer
    phrase ("Answer: C", "the answer is (c)", "answer is **C**"; a bare letter must be uppercase here so that
    "the answer is a ..." is not read as A). If there is none, the last parenthesised letter "(C)"; if there is
    none either, a completion that is just a letter ("C" or "C.").

    >>> extract_choice(r"... so \boxed{B}")
    'B'
    >>> extract_choice("Options (A) and (D) fail, so the answer is (C).")
    'C'
    >>> extract_choice("I am not sure.") is None
    True
    """
    letters = _letters(n_choices)
    phrase_re, paren_re, whole_re = _choice_patterns(letters)
    tail = text[-TAIL_CHARS:]
    best: tuple[int, str] | None = None
    for box in _BOX_RE.finditer(tail):
        j = box.end()
        while j < len(tail) and tail[j] in " \t":
            j += 1
        # a choice box is short: only look 200 characters ahead (keeps many unclosed boxes linear)
        content = _matched_braces(tail[j : j + 200], 0) if j < len(tail) and tail[j] == "{" else None
        letter = _choice_in_box(content, letters) if content is not None else None
        if letter:
            best = (box.start(), letter)
    for m in phrase_re.finditer(tail):
        letter = m.group("letter")
        # a bare lowercase letter is probably an article ("the answer is a ..."); "(c)" is a choice
        if (letter.isupper() or m.group("open")) and (best is None or m.start() > best[0]):
            best = (m.start(), letter.upper())
    if best is not None:
        return best[1]
    paren = _last(paren_re.finditer(tail))
    if paren is not None:
        return paren.group(1)
    whole = whole_re.fullmatch(tail)
    return whole.group(1) if whole else None
