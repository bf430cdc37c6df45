r"""String normalisation shared by the parent process and the sympy worker (pure functions, no sympy).

* `gold_core` turns a benchmark's gold into the bare answer: the content of a ``\boxed{}`` if there is one, math
  ``$`` delimiters removed (OlympiadBench writes ``$\frac{1}{2}$`` and ``$69$,$84$``), trailing period dropped.
* `pred_core` does the same for an extracted prediction and truncates it to `MAX_ANSWER_CHARS`.
* `math_input` wraps a core string as ``$...$`` for ``math_verify.parse``. (Wrapping in ``\boxed{}`` instead lets
  math-verify's lazy box regex match a fragment: ``\boxed{\frac{1}{3} E_{1}+\frac{2}{3} E_{2}}`` parses as 2/3.)
* `text_key` is the key for the textual-equality shortcut (``\text{Evelyn}`` == ``Evelyn``, ``\text{(C)}`` == ``C``).

>>> gold_core("$69$,$84$")
'69,84'
>>> math_input(r"\frac{1}{2}")
'$\\frac{1}{2}$'
"""

from __future__ import annotations

import re

from tina.grading.extract import extract_boxed

__all__ = ["MAX_ANSWER_CHARS", "gold_core", "math_input", "pred_core", "text_key"]

# Extracted answers longer than this are cut before they reach sympy (no real answer is this long; a runaway
# generation inside \boxed{} can be megabytes).
MAX_ANSWER_CHARS = 1000

_MATH_DOLLAR_RE = re.compile(r"(?<!\\)\$")
# Minerva stores one answer as Python source ("np.arcsin(10/13)"); numpy names become latex commands.
_NUMPY_RE = re.compile(r"\bnp\.(arcsin|arccos|arctan|sinh|cosh|tanh|sin|cos|tan|exp|log|sqrt|pi)\b")


def _core(text: str) -> str:
    s = _MATH_DOLLAR_RE.sub("", text)
    s = _NUMPY_RE.sub(r"\\\1", s)
    s = re.sub(r"\s+", " ", s).strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    return s


def gold_core(gold: str) -> str:
    r"""The bare gold answer.

    >>> gold_core(r"The answer is $\boxed{\dfrac{3}{4}}$.")
    '\\dfrac{3}{4}'
    >>> gold_core("$(-\\infty, 0) \\cup\\{1\\}$.")
    '(-\\infty, 0) \\cup\\{1\\}'
    >>> gold_core("np.arcsin(10/13)")
    '\\arcsin(10/13)'
    """
    if "\\boxed" in gold or "\\fbox" in gold:
        boxed = extract_boxed(gold)
        if boxed is not None and boxed.strip():
            gold = boxed
    return _core(gold)


def pred_core(pred: str) -> str:
    r"""The bare predicted answer, truncated to `MAX_ANSWER_CHARS`.

    >>> pred_core(" $x = 5$.\n")
    'x = 5'
    """
    return _core(pred[: MAX_ANSWER_CHARS * 4])[:MAX_ANSWER_CHARS]


def math_input(core: str) -> str:
    r"""Wrap a core answer for ``math_verify.parse`` (currency ``\$`` dropped, it only confuses the delimiters).

    >>> math_input(r"\$18.90")
    '$18.90$'
    """
    return "$" + core.replace("\\$", "").strip() + "$"


_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING_RE = re.compile(r"\\[,;:! ]|\\q?quad|\s+")


def text_key(core: str) -> str:
    r"""Key for textual equality: text commands unwrapped, spacing and ``\left``/``\right`` dropped, lowercased,
    and a lone parenthesised letter unwrapped.

    >>> text_key(r"\text{(C)}") == text_key("C")
    True
    >>> text_key(r"\text{Evelyn}")
    'evelyn'
    """
    s = _TEXT_CMD_RE.sub(r"\1", core)
    s = s.replace("\\left", "").replace("\\right", "")
    s = _SPACING_RE.sub("", s).lower()
    m = re.fullmatch(r"\(([a-z])\)", s)
    return m.group(1) if m else s
