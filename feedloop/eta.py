"""Progress lines with an ETA, for work a person waits on: every bench, `feedloop backfill`.

A :class:`Steps` counts done steps out of a known total (repeats, seeds, trials, days, or
the seconds of a time-bounded soak) and prints one line per step:

    [bench.serving] 2/6 [00:41 elapsed, ETA 01:22] round 1, feed at 64 connections: ...

and, at the end, one summary line (``done in 02:03: ...``). The arithmetic and the
format are tqdm's meter (``tqdm.format_meter``, the rate of the steps so far times the
steps left). Its bar is not used: the benches' stderr goes to log files and CI output,
where a bar's carriage returns run together into one unreadable line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

METER = "{n_fmt}/{total_fmt} [{elapsed} elapsed, ETA {remaining}]"
METER_OPEN = "{n_fmt} [{elapsed} elapsed]"  # no total known: no ETA


class Steps:
    """``total`` steps of ``label``'s work (None: unknown, so no ETA), printed to ``out`` (stderr)."""

    def __init__(self, label: str, total: int | float | None, out: TextIO | None = None):
        self.label, self.total, self.n = label, total, 0
        self.out = out
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def meter(self) -> str:
        fmt = METER if self.total else METER_OPEN
        return tqdm.format_meter(self.n, self.total or None, self.elapsed(), bar_format=fmt)

    def line(self, message: str) -> str:
        """A progress line at the current count, without counting a step (e.g. inside a long step)."""
        text = f"[{self.label}] {self.meter()} {message}".rstrip()
        print(text, file=self.out or sys.stderr, flush=True)
        return text

    def step(self, message: str = "", advance: int | float = 1) -> str:
        """Count ``advance`` steps as done and print the line."""
        self.n += advance
        return self.line(message)

    def at(self, n: int | float, message: str = "") -> str:
        """Set the count to ``n`` (the seconds into a time-bounded run, say) and print the line."""
        self.n = n
        return self.line(message)

    def summary(self, message: str) -> str:
        """The one-line summary at the end: the whole time, then ``message``."""
        text = f"[{self.label}] done in {tqdm.format_interval(self.elapsed())}: {message}"
        print(text, file=self.out or sys.stderr, flush=True)
        return text
