"""Progress files of the long-running apps, under ``var/run/``: written atomically by the
streaming sink and the online learner, read by `feedloop status` and the benches.

Reading them needs neither Spark nor TensorFlow.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from feedloop.settings import Settings


def write_json_atomic(path: Path, value) -> None:
    """Write ``value`` as JSON to ``path`` through a rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def heartbeat_path(settings: Settings, app: str) -> Path:
    return settings.var / "run" / f"{app}.heartbeat.json"


def write_heartbeat(settings: Settings, app: str) -> None:
    """Record that the streaming app ``app`` just completed a trigger that reached its source (a batch or an
    idle poll): what its health check reads."""
    write_json_atomic(heartbeat_path(settings, app), {"polled_at": time.time(), "pid": os.getpid()})


def last_progress_at(settings: Settings, app: str) -> float | None:
    """When ``app`` last made progress: the newer of its heartbeat and its batch progress file (``<app>.json``,
    whose ``updated_at`` each batch writes); None before either exists."""
    times = []
    for path, field in ((heartbeat_path(settings, app), "polled_at"), (settings.var / "run" / f"{app}.json", "updated_at")):
        try:
            times.append(float(json.loads(path.read_text())[field]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(times) if times else None


def events_progress(settings: Settings) -> str:
    """One line for `feedloop status`: last batch and time since it."""
    path = settings.var / "run" / "stream-events.json"
    if not path.exists():
        return "stream-events: no batch processed yet"
    state = json.loads(path.read_text())
    age = time.time() - state["updated_at"]
    totals = state["since_start"]
    return (f"stream-events: last batch {state['batch_id']} {age:.0f}s ago; since start {totals['valid']} events "
            f"written, {totals['rejected']} to DLQ, {totals['duplicates']} duplicates dropped, "
            f"{totals.get('late', 0)} too late for the trending windows")


def learner_progress(settings: Settings) -> str:
    """One line for `feedloop status`."""
    path = settings.var / "run" / "stream-learner.json"
    if not path.exists():
        return ""
    state = json.loads(path.read_text())
    lag = f", event lag {state['lag_s']:.1f}s" if state.get("lag_s") is not None else ""
    line = (f"stream-learner: {state.get('version', 'no model')} after batch {state['batch_id']} "
            f"{time.time() - state['updated_at']:.0f}s ago ({state.get('reason', '')}{lag})")
    if state.get("alert"):  # the prequential judge reset the online state (and perhaps stopped learning)
        line += f"\nALERT stream-learner {'stopped learning' if state.get('halted') else 'reset'}: {state['alert']}"
    return line

