"""Messages for the person at the terminal: one line on stderr that does not break a progress bar."""

from __future__ import annotations

import os
import sys


def say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def quiet_transformers() -> None:
    """Keep transformers' own per-load progress bars and advisory warnings out of our output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def progress_bar(start: int, total: int, *, enabled: bool):
    """The training progress bar (steps, rate, ETA) from ``start`` of ``total``; silent when not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)
