"""The worked examples in docstrings are documentation: every tina module's examples must stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tina

SKIP = {"tina.__main__"}  # running it would start the CLI
MODULES = sorted(m.name for m in pkgutil.walk_packages(tina.__path__, "tina.") if m.name not in SKIP)


def _with_examples(name: str) -> bool:
    module = importlib.import_module(name)
    return any(t.examples for t in doctest.DocTestFinder().find(module))


@pytest.mark.parametrize("module_name", [m for m in MODULES if _with_examples(m)])
def test_docstring_examples(module_name):
    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_documented_modules_are_found():
    found = [m for m in MODULES if _with_examples(m)]
    for name in (
        "tina.rl.masks",
        "tina.rl.advantages",
        "tina.rl.schedule",
        "tina.eval.stats",
        "tina.grading.extract",
        "tina.rewards.text",
        "tina.ledger",
    ):
        assert name in found
