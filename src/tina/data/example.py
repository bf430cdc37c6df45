"""The one record every loader returns: a problem, its gold answer, an id, and a little metadata."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One training or evaluation problem, normalised from any dataset.

    >>> Example(problem="1+1?", answer="2", id="0")
    Example(problem='1+1?', answer='2', id='0', meta={})

    `answer` is the gold answer as text, copied from the source (outer whitespace stripped, never simplified);
    graders compare it by equivalence, not string equality.  `id` is the source's own id as a string, or the row
    index.  `meta` holds small extras such as `level`, `source` or the L1 target length (`l1_target`, `l1_mode`).
    `meta` takes no part in hashing, so an Example can still go in a set.
    """

    problem: str
    answer: str
    id: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)


class Examples(list):
    """A `list[Example]` that also says what was dropped while loading.

    Rows whose problem or answer is empty cannot be trained or graded, so `load_examples` skips them, counts them
    here and logs one warning.  Slicing returns a plain list.

    Attributes:
        source: what was loaded (path or hub id, as given).
        schema: the schema actually used (never "auto").
        dropped: how many rows were skipped.
        drop_reasons: reason -> count, e.g. {"empty answer": 3}.
        dropped_ids: ids of the first skipped rows (at most 20), to find them in the source.
    """

    def __init__(
        self,
        items: Iterable[Example] = (),
        *,
        source: str = "",
        schema: str = "",
        drop_reasons: dict[str, int] | None = None,
        dropped_ids: list[str] | None = None,
    ) -> None:
        super().__init__(items)
        self.source = source
        self.schema = schema
        self.drop_reasons: dict[str, int] = dict(drop_reasons or {})
        self.dropped_ids: list[str] = list(dropped_ids or [])

    @property
    def dropped(self) -> int:
        return sum(self.drop_reasons.values())

    def __repr__(self) -> str:
        return f"Examples(n={len(self)}, dropped={self.dropped}, source={self.source!r}, schema={self.schema!r})"
