"""User-facing errors.

Anything a user can fix (bad recipe, missing file, unknown name) raises a `TinaError`.  The CLI prints its message on
one line and exits with code 2; it never shows a traceback for these.  Bugs stay ordinary exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TinaError(Exception):
    """An error the user can fix; the message names the problem and how to fix it."""

    exit_code = 2


class ConfigError(TinaError):
    """A recipe or override is invalid (unknown key, wrong type, impossible value)."""


class DataError(TinaError):
    """A dataset cannot be read or does not have the expected columns."""


class RewardError(TinaError):
    """A reward function raised or returned something invalid."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest candidate, or '' if none is close.

    >>> did_you_mean("scale_reward", ["scale_rewards", "beta"])
    " (did you mean 'scale_rewards'?)"
    """
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
