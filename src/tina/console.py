"""Messages for the person at the terminal: one line on stderr that does not break a progress bar."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)
