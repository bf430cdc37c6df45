r"""The one grader shared by the training reward and the benchmark evaluation.

>>> from tina.grading import grade
>>> grade(r"The answer is $\boxed{\frac{1}{2}}$.", "0.5").correct
True

Public API: `Verdict`, `grade`, `grade_many`, `restrict`, `gold_is_parseable`, `shutdown` (math and GPQA grading,
see `tina.grading.grader`, whose docstring states the training/evaluation extraction rules, hedging and unfinished
completions), and the pure extractors `extract_boxed`, `extract_answer`, `extract_choice`, `find_answer`,
`find_choice`, `opens_think` (`tina.grading.extract`). Sympy work runs in a persistent worker process
(`tina.grading.pool`) so that timeouts work off the main thread and inside worker processes. This package imports no
sympy/torch in the caller.
"""

from tina.grading.extract import (
    EXTRACTIONS,
    Extraction,
    extract_answer,
    extract_boxed,
    extract_choice,
    find_answer,
    find_choice,
    opens_think,
)
from tina.grading.grader import REASONS, TASKS, Verdict, gold_is_parseable, grade, grade_many, restrict, shutdown
from tina.grading.pool import GraderUnavailableError

__all__ = [
    "EXTRACTIONS",
    "REASONS",
    "TASKS",
    "Extraction",
    "GraderUnavailableError",
    "Verdict",
    "extract_answer",
    "extract_boxed",
    "extract_choice",
    "find_answer",
    "find_choice",
    "gold_is_parseable",
    "grade",
    "grade_many",
    "opens_think",
    "restrict",
    "shutdown",
]
