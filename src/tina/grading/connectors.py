"""The words and gaps around an answer: doubt words, disjunctions, what may join two candidates written next to each
other ("\\boxed{7} or \\boxed{8}"), what follows an answer ("(or maybe 8)") and what precedes it ("probably").  Pure
string functions; :mod:`tina.grading.extract` reads answers with them, :mod:`tina.grading.hedge` judges them."""

from __future__ import annotations

import re

# Words that say the writer is unsure of the answer. They never belong to a final answer.
UNCERTAIN_WORDS = ("maybe", "perhaps", "possibly", "probably", "likely", "guess", "unsure", "uncertain", "not sure")
# Words that join several candidates ("7 or 8"). In a list answer ("x = 1 or x = -2") they are fine.
DISJUNCTIONS = ("or", "either", "alternatively")
UNCERTAIN_ALT = "|".join(w.replace(" ", r"\s+") for w in UNCERTAIN_WORDS)
CONNECTOR_WORDS = rf"(?:{UNCERTAIN_ALT}|or|either|alternatively|and/or|and)"
# What may stand between two candidates written next to each other ("\boxed{7} or \boxed{8}", "$7$, $8$"):
# spacing, punctuation, math delimiters, \text{or}, connector words. Bounded in length by the callers.
GAP_RE = re.compile(
    rf"(?:[\s$.,;:/&()\[\]*]|\\[,;:! ]|\\q?quad(?![A-Za-z])|\\\\|\\[()\[\]]"
    rf"|\\(?:text|textbf|mathrm|mbox)\s*\{{\s*(?:{CONNECTOR_WORDS}|,)?\s*\}}"
    rf"|(?<![A-Za-z]){CONNECTOR_WORDS}(?![A-Za-z]))*",
    re.IGNORECASE,
)
GAP_WORD_RE = re.compile(rf"(?<![A-Za-z])(?P<w>{CONNECTOR_WORDS})(?![A-Za-z])", re.IGNORECASE)
MAX_GAP = 80
# Right after an answer: a connector that starts another candidate or a doubt ("\boxed{7} (or maybe 8)",
# "$7$, or $8$", "\boxed{7}, probably"). A sentence end (".") stops it: a new sentence is not part of the answer.
TRAILING_RE = re.compile(
    rf"[\s$,;:)\]*]*(?:[(\[]\s*)?(?:\\(?:text|textbf|mathrm|mbox)\s*\{{\s*)?(?:\(\s*)?"
    rf"(?P<w>{UNCERTAIN_ALT}|or|either|alternatively)(?![A-Za-z])",
    re.IGNORECASE,
)
# What follows a trailing "or": the other candidate -- a math span, or at most three words up to a sentence end,
# bracket or newline ("or 8", "(or maybe 8)"; an escaped ``\$`` is a literal dollar sign in both: "or $\$6$", "or
# \$6"). Longer text is prose restating the answer ("\boxed{MR=SRMC}, or marginal revenue is equal to short-run
# marginal cost"), not a candidate.
AFTER_OR_RE = re.compile(
    r"[\s,:}]*(?:(?:equivalently|simply|in\s+other\s+words|written\s+as|as)(?![A-Za-z])[\s,:]*)*"
    r"(?:\$(?P<m>(?:[^$\n\\]|\\[^\n]){1,400})\$|\\\((?P<p>.{1,400}?)\\\)"
    r"|(?P<t>(?:\\\$|[^\s.;()$]|\.(?=\d)){1,60}(?:[ \t]+(?:\\\$|[^\s.;()$]|\.(?=\d)){1,60}){0,2})"
    r"(?=[ \t]*(?:[.;\n()$]|\Z)))"
)
# Just before an answer: a doubt ("the answer is probably \boxed{7}").
LEADING_RE = re.compile(rf"(?<![A-Za-z])(?P<w>{UNCERTAIN_ALT})(?:\s+(?:is|be|it's|it\s+is))?[\s:$*(]*\Z", re.IGNORECASE)


def connector_words(text: str) -> list[str]:
    """The connector and doubt words in `text`, lowercased, inner whitespace collapsed ("not sure")."""
    return [re.sub(r"\s+", " ", m.group("w").lower()) for m in GAP_WORD_RE.finditer(text)]


def gap_joins(gap: str) -> tuple[bool, str | None]:
    r"""Whether `gap` only joins two candidates (punctuation, spacing, connectors), and the doubt word in it, if any.

    >>> gap_joins(r"$ \text{ or } $"), gap_joins(", or maybe "), gap_joins(" is wrong; the answer is ")
    ((True, None), (True, 'maybe'), (False, None))
    """
    if len(gap) > MAX_GAP or not GAP_RE.fullmatch(gap):
        return False, None
    return True, next((w for w in connector_words(gap) if w in UNCERTAIN_WORDS), None)


def trailing(part: str, end: int) -> tuple[str | None, str | None]:
    """After an answer ending at `end`: (the candidate after a trailing "or", an uncertainty word)."""
    window = part[end : end + 300]
    m = TRAILING_RE.match(window)
    if m is None:
        return None, None
    word = re.sub(r"\s+", " ", m.group("w").lower())
    if word in DISJUNCTIONS:
        other = AFTER_OR_RE.match(window, m.end())
        if other is None:
            return None, None
        text = next(g for g in other.group("m", "p", "t") if g is not None).strip().strip("*").strip()
        return (text or None), None
    return None, word


def leading_doubt(part: str, start: int) -> str | None:
    m = LEADING_RE.search(part[max(0, start - 40) : start])
    return re.sub(r"\s+", " ", m.group("w").lower()) if m else None
