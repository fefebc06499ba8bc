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

def progress_path(settings: Settings, app: str) -> Path:
    """The progress file of one long-running app (``stream-events``, ``stream-learner``)."""
    return settings.var / "run" / f"{app}.json"


def read_progress(settings: Settings, app: str) -> dict | None:
    """The app's last progress record, or None before its first batch (or while the file is unreadable)."""
    try:
        return json.loads(progress_path(settings, app).read_text())
    except (OSError, ValueError):
        return None


def checkpoint_dir(settings: Settings, query: str = "stream-events") -> Path:
    """The Spark checkpoint of one streaming query (``stream-events``, ``served-feeds``, ``stream-learner``)."""
    return settings.var / "checkpoints" / query


def committed_partition_offsets(settings: Settings, query: str, topic: str) -> dict[int, int] | None:
    """Kafka offset per partition of ``topic`` that the query's last committed batch reached; None before any.

    Read from the checkpoint (``offsets/<last id in commits/>``), without Spark."""
    checkpoint = checkpoint_dir(settings, query)
    commits = sorted(int(p.name) for p in (checkpoint / "commits").glob("[0-9]*")) if checkpoint.exists() else []
    if not commits:
        return None
    offsets = json.loads((checkpoint / "offsets" / str(commits[-1])).read_text().splitlines()[-1])
    return {int(partition): int(offset) for partition, offset in offsets.get(topic, {}).items()}


def events_progress(settings: Settings) -> str:
    """One line for `feedloop status`: last batch and time since it."""
    state = read_progress(settings, "stream-events")
    if state is None:
        return "stream-events: no batch processed yet"
    age = time.time() - state["updated_at"]
    totals = state["since_start"]
    return (f"stream-events: last batch {state['batch_id']} {age:.0f}s ago; since start {totals['valid']} events "
            f"written, {totals['rejected']} to DLQ, {totals['duplicates']} duplicates dropped, "
            f"{totals.get('late', 0)} too late for the trending windows")


def learner_progress(settings: Settings) -> str:
    """One line for `feedloop status`."""
    state = read_progress(settings, "stream-learner")
    if state is None:
        return ""
    lag = f", event lag {state['lag_s']:.1f}s" if state.get("lag_s") is not None else ""
    line = (f"stream-learner: {state.get('version', 'no model')} after batch {state['batch_id']} "
            f"{time.time() - state['updated_at']:.0f}s ago ({state.get('reason', '')}{lag})")
    if state.get("alert"):  # the prequential judge reset the online state (and perhaps stopped learning)
        line += f"\nALERT stream-learner {'stopped learning' if state.get('halted') else 'reset'}: {state['alert']}"
    return line
