"""The worked examples in the reward docstrings are part of the documentation: keep them true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "tina.rewards.batch",
    "tina.rewards.text",
    "tina.rewards.graded",
    "tina.rewards.registry",
    "tina.rewards.combine",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
