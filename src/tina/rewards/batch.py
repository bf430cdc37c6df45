"""The unit every reward works on: one training step's completions, flat, groups contiguous.

Grading (the expensive, timeout-guarded math-verify call) happens once per batch in `grade_batch`; every reward that
needs correctness reads the shared `batch.verdicts` instead of grading again.

`truncated` (optional, from the rollout: hit the token limit without an end-of-sequence token) marks completions that
never finished: the grader calls them "unfinished" and no reward gives them credit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tina.grading import Verdict


@dataclass
class RewardBatch:
    """Completions of one step, `group_size` per prompt, groups contiguous.

    Completion ``i`` belongs to group ``i // group_size``. All per-completion lists have the same length.

    >>> b = RewardBatch(["a", "bb"], ["1", "1"], ["p", "p"], [1, 2], group_size=2)
    >>> b.num_groups
    1
    """

    completions: list[str]
    answers: list[str]  # gold answer per completion
    prompts: list[str]  # rendered prompt text per completion
    completion_lengths: list[int]  # tokens generated per completion (EOS included)
    group_size: int  # G completions per prompt
    verdicts: list[Verdict] | None = None  # filled once by `grade_batch`
    truncated: list[bool] | None = None  # per completion: hit the token limit without EOS (None: none did)
    max_new_tokens: int | None = None  # the rollout's token budget (for length-shaping rewards such as overlong)

    def __post_init__(self) -> None:
        n = len(self.completions)
        for field_name in ("answers", "prompts", "completion_lengths"):
            if len(getattr(self, field_name)) != n:
                got = len(getattr(self, field_name))
                raise ValueError(f"RewardBatch.{field_name} has {got} entries, expected {n} (one per completion)")
        for field_name in ("verdicts", "truncated"):
            values = getattr(self, field_name)
            if values is not None and len(values) != n:
                raise ValueError(f"RewardBatch.{field_name} has {len(values)} entries, expected {n}")
        if self.truncated is not None:
            self.truncated = [bool(t) for t in self.truncated]  # accepts numpy / torch bools
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"RewardBatch.group_size must be a positive int, got {self.group_size!r}")
        if n % self.group_size != 0:
            raise ValueError(f"{n} completions do not split into groups of {self.group_size}")

    def __len__(self) -> int:
        return len(self.completions)

    @property
    def num_groups(self) -> int:
        return len(self.completions) // self.group_size

    def group_slices(self) -> list[range]:
        """Index ranges of the groups, in order: ``[range(0, G), range(G, 2G), ...]``."""
        g = self.group_size
        return [range(start, start + g) for start in range(0, len(self.completions), g)]

    def select(self, indices: list[int], *, group_size: int = 1) -> RewardBatch:
        """A sub-batch of the given completions (used to find the one sample a reward fails on)."""
        return RewardBatch(
            completions=[self.completions[i] for i in indices],
            answers=[self.answers[i] for i in indices],
            prompts=[self.prompts[i] for i in indices],
            completion_lengths=[self.completion_lengths[i] for i in indices],
            group_size=group_size,
            verdicts=None if self.verdicts is None else [self.verdicts[i] for i in indices],
            truncated=None if self.truncated is None else [self.truncated[i] for i in indices],
            max_new_tokens=self.max_new_tokens,
        )

    def is_truncated(self, i: int) -> bool:
        """Whether completion `i` hit the token limit without an end-of-sequence token."""
        return self.truncated is not None and self.truncated[i]


def grade_batch(batch: RewardBatch, *, timeout: float = 5.0, task: str = "math") -> RewardBatch:
    """Grade every completion against its gold answer once; return a copy of `batch` with `verdicts` filled.

    Uses THE grader (`tina.grading.grade_many`), the same one evaluation uses, with lenient extraction; each reward
    then keeps only the answers its own ``extraction`` allows (`tina.grading.restrict`; the training default is
    "boxed"). `batch.truncated` is passed on as ``finished``, and the prompts so the grader knows when a prompt opened
    the think block. The input batch is not modified.
    """
    from tina.grading import grade_many  # imported here so the rest of the package works without the grader

    finished = None if batch.truncated is None else [not t for t in batch.truncated]
    verdicts = list(
        grade_many(
            list(batch.completions),
            list(batch.answers),
            task=task,
            timeout=timeout,
            finished=finished,
            prompts=list(batch.prompts),
        )
    )
    if len(verdicts) != len(batch):
        raise RuntimeError(f"grade_many returned {len(verdicts)} verdicts for {len(batch)} completions")
    return dataclasses.replace(batch, verdicts=verdicts)
