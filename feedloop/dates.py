"""The logical date (``--ds``) every job takes: exactly ``YYYY-MM-DD``, a real day."""

from __future__ import annotations

import argparse
import re
from datetime import date

_DS = re.compile(r"\d{4}-\d{2}-\d{2}")


def iso_day(value: str) -> str:
    """``value`` if it is a day written ``YYYY-MM-DD``; argparse's error naming it otherwise.

    Stricter than ``date.fromisoformat``, which also takes ``20261130`` and ``2026-W48-1``:
    the jobs put the value into partition specs and paths as it is written.
    """
    if not _DS.fullmatch(value):
        raise argparse.ArgumentTypeError(f"--ds must be a date written YYYY-MM-DD, got {value!r}")
    try:
        date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--ds {value!r} is not a day of the calendar: {exc}") from None
    return value
