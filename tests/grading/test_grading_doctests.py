"""The worked examples in the grading docstrings are part of the documentation: keep them true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "tina.grading",
    "tina.grading.extract",
    "tina.grading.numeric",
    "tina.grading.normalize",
    "tina.grading.grader",
    "tina.grading._protocol",
    "tina.grading._worker",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
