"""Helpers for the reward tests: build batches and hand-made verdicts without running the grader."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tina.rewards import RewardBatch


@dataclass(frozen=True)
class StandInVerdict:
    """Same fields as `tina.grading.Verdict`; rewards only read `.correct`."""

    correct: bool | None
    extracted: str | None
    reason: str


def _verdict_class():
    try:
        from tina.grading import Verdict
    except ImportError:
        return StandInVerdict
    return Verdict


def make_verdict(correct: bool | None):
    return _verdict_class()(correct=correct, extracted=None, reason="hand-made for a test")


def make_batch(completions, *, correct=None, prompts=None, lengths=None, answers=None, group_size=1):
    """A batch of the given completions; `correct` (list of True/False/None) fills hand-made verdicts."""
    n = len(completions)
    return RewardBatch(
        completions=list(completions),
        answers=list(answers) if answers is not None else ["4"] * n,
        prompts=list(prompts) if prompts is not None else ["What is 2+2?"] * n,
        completion_lengths=list(lengths) if lengths is not None else [len(c) for c in completions],
        group_size=group_size,
        verdicts=None if correct is None else [make_verdict(c) for c in correct],
    )


@pytest.fixture
def batch_of():
    return make_batch
