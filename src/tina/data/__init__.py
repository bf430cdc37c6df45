"""Training and evaluation data: load rows (local file or hub), normalise them to `Example(problem, answer, id, meta)`.

>>> from tina.data import load_examples
>>> exs = load_examples("train/limr.jsonl", schema="limr")          # doctest: +SKIP
>>> exs[0].problem, exs[0].answer, exs.dropped                        # doctest: +SKIP

See `tina.data.schemas` for each dataset's schema, `tina.data.fields` for how a column is read and
`tina.data.loading` for what a source can be.
"""

from tina.data.example import Example, Examples
from tina.data.fields import last_boxed, read_verification_info, split_l1_suffix, with_l1_targets
from tina.data.loading import load_examples, load_rows, resolve_source
from tina.data.schemas import HUB_IDS, SCHEMAS, Schema, detect_schema, get_schema, split_hub_id

__all__ = [
    "SCHEMAS",
    "HUB_IDS",
    "Schema",
    "Example",
    "Examples",
    "detect_schema",
    "get_schema",
    "last_boxed",
    "load_examples",
    "load_rows",
    "read_verification_info",
    "resolve_source",
    "split_hub_id",
    "split_l1_suffix",
    "with_l1_targets",
]
