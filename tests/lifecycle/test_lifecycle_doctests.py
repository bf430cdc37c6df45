"""The worked examples in the lifecycle docstrings (ledger, report, entropy estimate) are documentation: keep them true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["tina.ledger", "tina.report", "tina.train"]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
