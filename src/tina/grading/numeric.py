r"""Fast path: plain numbers compared in-process with exact rational arithmetic, no sympy.

A "plain number" is an integer, a decimal, a simple fraction (``3/4``, ``-1./3``, ``\frac{14}{3}``, ``\frac12``)
or scientific notation (``4.5e33``, ``3.83 \times 10^{35}``, ``10^{5}``), optionally wrapped in ``$``, with
thousands separators (``1,234,567``, and MATH's ``10,\!000``, ``10{,}000``, ``1\,000``: see `unify_thousands`; but
``1,2`` is a list, not a number), a leading ``\$`` and a trailing period.

Comparison rule (`numbers_match`), decided by how the GOLD is written:

* exact gold -- an integer (``"025"``, AMC's ``"27.0"``) or a fraction of integers (``\frac{14}{3}``): the
  prediction must be exactly equal (``4.6667`` is not ``14/3``; ``25`` is ``025``);
* measured gold -- a non-integer decimal (``"0.15"``) or anything in scientific notation (Minerva's
  ``"4.5e33"``): relative tolerance `REL_TOL` = 1e-4, the tolerance of the Qwen2.5-Math evaluation harness.

>>> numbers_match(parse_number("4.5e33"), parse_number(r"4.5 \times 10^{33}").value)
True
>>> numbers_match(parse_number("13535"), parse_number("13536").value)
False
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

__all__ = [
    "MAX_EXPONENT",
    "REL_TOL",
    "NumberLit",
    "is_unevaluated",
    "numbers_match",
    "parse_number",
    "unify_thousands",
]

REL_TOL = Fraction(1, 10_000)
# |exponent| above this is not a "plain number": it goes to the sympy worker, where the timeout protects us.
MAX_EXPONENT = 400
# Longer strings are never plain numbers (and str->int conversion of huge digit strings is slow).
_MAX_LEN = 400


@dataclass(frozen=True)
class NumberLit:
    """A parsed plain number: its exact rational value, and whether it must be matched exactly."""

    value: Fraction
    exact: bool


_DEC = r"(?:\d+(?:\.\d*)?|\.\d+)"
_MANT = rf"(?:\d{{1,3}}(?:,\d{{3}})+(?:\.\d*)?|{_DEC})"
_EXP = r"(?:[eE](?P<e1>[+-]?\d+)|\s*(?:\\times|\\cdot|\*|×)\s*10\s*\^\s*(?:\{\s*(?P<e2>[+-]?\d+)\s*\}|(?P<e3>\d)))"
_BRACED_OR_DIGIT = r"(?:\{{\s*(?P<{0}>[+-]?{1})\s*\}}|(?P<{0}1>\d))"
_PATTERNS = (
    re.compile(rf"(?P<sign>[+-]?)\s*(?P<mant>{_MANT}){_EXP}?"),
    re.compile(r"(?P<sign>[+-]?)\s*10\s*\^\s*(?:\{\s*(?P<e2>[+-]?\d+)\s*\}|(?P<e3>\d))"),
    re.compile(rf"(?P<sign>[+-]?)\s*(?P<num>{_DEC})\s*/\s*(?P<den>{_DEC})"),
    re.compile(
        r"(?P<sign>[+-]?)\s*\\[dt]?frac\s*"
        + _BRACED_OR_DIGIT.format("num", _DEC)
        + r"\s*"
        + _BRACED_OR_DIGIT.format("den", _DEC)
    ),
)


# A thousands separator as MATH writes it, between a digit and a group of exactly three digits: ",", "{,}" or a thin
# space "\,", with a negative space "\!" on either side of the comma ("10,\!000"; MATH-500 also has "11,\! 111").
_THOUSANDS_SEP_RE = re.compile(r"(?<=\d)(?:\\!)?(?:,|\{,\}|\\,)(?:\\!\s*)?(?=\d{3}(?!\d))")


def unify_thousands(text: str) -> str:
    r"""Every thousands separator between digit groups written as a plain ",", so that one number reads as one
    number (and is not split at its commas into a list of candidates). Anything else is left as it is: ``1, 234``
    (a space) and ``1,\!23`` (not three digits) are lists.

    >>> unify_thousands(r"\$12,\!345.60"), unify_thousands(r"1\,000\,000"), unify_thousands("10{,}000")
    ('\\$12,345.60', '1,000,000', '10,000')
    >>> unify_thousands("1, 234")
    '1, 234'
    """
    return _THOUSANDS_SEP_RE.sub(",", text)


_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def _clean(text: str) -> str:
    r"""Strip the decorations a plain number may carry: ``$``, a currency ``\$``, latex spacing, a ``\text{}``-like
    wrapper around the whole thing, one pair of enclosing parentheses, a trailing period.

    >>> _clean(r" $\$1{,}234.$ ")
    '1,234'
    >>> _clean(r"\textbf{(073)}")
    '073'
    """
    s = text.strip().replace("\u2212", "-")
    s = re.sub(r"(?<!\\)\$", "", s).strip()
    s = unify_thousands(s).replace(r"\$", "").replace("{,}", ",")
    s = s.replace(r"\!", "").replace(r"\,", "").replace(r"\ ", "")
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1]
    s = s.strip()
    wrapped = _WRAPPER_RE.fullmatch(s)
    if wrapped:
        s = wrapped.group(1).strip()
    if s.startswith("(") and s.endswith(")") and s.count("(") == 1 and s.count(")") == 1:
        s = s[1:-1].strip()
    return s


def _exponent(m: re.Match[str]) -> int | None:
    for name in ("e1", "e2", "e3"):
        val = m.groupdict().get(name)
        if val is not None:
            return int(val)
    return None


def _to_number(m: re.Match[str]) -> NumberLit | None:
    groups = m.groupdict()
    sign = -1 if groups.get("sign") == "-" else 1
    exp = _exponent(m)
    if exp is not None and abs(exp) > MAX_EXPONENT:
        return None
    if "num" in groups:  # a fraction
        num = groups.get("num") if groups.get("num") is not None else groups.get("num1")
        den = groups.get("den") if groups.get("den") is not None else groups.get("den1")
        den_value = Fraction(den)
        if den_value == 0:
            return None
        value = sign * Fraction(num) / den_value
        has_point = "." in num or "." in den
    else:
        mant = groups.get("mant")
        value = sign * (Fraction(mant.replace(",", "")) if mant is not None else Fraction(1))
        has_point = mant is not None and "." in mant
    if exp is not None:
        value *= Fraction(10) ** exp
    exact = exp is None and (not has_point or value.denominator == 1)
    return NumberLit(value=value, exact=exact)


@lru_cache(maxsize=65_536)
def parse_number(text: str) -> NumberLit | None:
    r"""Parse `text` as a plain number, or None if it is anything else.

    >>> parse_number("025")
    NumberLit(value=Fraction(25, 1), exact=True)
    >>> parse_number("4.5e33").exact
    False
    >>> parse_number(r"-\frac{3}{4}").value
    Fraction(-3, 4)
    >>> parse_number("1,2") is None
    True
    """
    if len(text) > _MAX_LEN:
        return None
    s = _clean(text)
    for pattern in _PATTERNS:
        m = pattern.fullmatch(s)
        if m:
            return _to_number(m)
    return None


_ARITH_NUM = r"(?:\d+(?:\.\d*)?|\.\d+|\\[dt]?frac\{\d+\}\{\d+\})"
_ARITH_OP = r"(?:\+|-|\*|/|×|÷|\\times|\\cdot|\\div)"
_ARITH_RE = re.compile(rf"[+-]?{_ARITH_NUM}(?:{_ARITH_OP}[+-]?{_ARITH_NUM})+")


@lru_cache(maxsize=65_536)
def is_unevaluated(text: str) -> bool:
    r"""True when `text` is arithmetic on number literals -- ``2 + 3``, ``(7 \times 8) - 1``,
    ``\frac{1}{2} + \frac{1}{3}`` -- rather than a number: the question restated, not answered.

    An equation is judged by its last side, the one math-verify grades: ``2 + 3 = 5`` is an answer, ``x = 2 + 3`` and
    ``2 + 3 = 2 + 3`` are not.  A plain number (`parse_number`: ``-3``, ``7/8``, ``3 \times 10^{5}``) is not
    unevaluated, and neither is anything with a symbol, a power or a root (``2^{10}``, ``6 + 2\sqrt{3}``).

    >>> [is_unevaluated(t) for t in ["2 + 3", "(2+3) \\times 4", "\\frac{1}{2}+\\frac{1}{3}", "-3", "7/8", "2^{10}",
    ...                               "x + 1", "2 + 3 = 5", "15\\frac{39}{40}", "x = 2 + 3"]]
    [True, True, True, False, False, False, False, False, False, True]
    """
    if len(text) > _MAX_LEN or parse_number(text) is not None:
        return False
    side = _clean(text).split("=")[-1]  # an equation's answer is its last side, as math-verify reads it
    if parse_number(side) is not None:
        return False
    s = re.sub(r"\\left|\\right|\\[,;:! ]|\s", "", side).replace("(", "").replace(")", "")
    return _ARITH_RE.fullmatch(s) is not None


def numbers_match(gold: NumberLit, pred: Fraction) -> bool:
    """True when `pred` equals `gold` under the gold's rule (exact, or relative tolerance `REL_TOL`).

    >>> numbers_match(NumberLit(Fraction(27), exact=True), Fraction(27))
    True
    >>> numbers_match(NumberLit(Fraction(383, 100) * 10**35, exact=False), Fraction(38301, 10000) * 10**35)
    True
    """
    if gold.exact or gold.value == 0:
        return pred == gold.value
    return abs(pred - gold.value) <= REL_TOL * abs(gold.value)
