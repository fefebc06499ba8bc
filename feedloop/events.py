"""Event schema v1 and the one validator used by the collector and the streaming sink.

``validate(raw)`` takes the raw Kafka value (bytes) and returns either a clean
event dict or the reason it was rejected; rejected records go to the DLQ with
that reason and their raw bytes.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
EVENT_TYPES = ("impression", "click", "dwell", "view", "cart", "like", "purchase", "search")
MAX_EVENT_BYTES = 64 * 1024
MAX_ID_LEN = 128
# Event times must fall between 1995-01-01 (catches seconds sent as milliseconds,
# and still admits historical imports such as MovieLens) and a day ahead of now.
MIN_TS_MS = 788_918_400_000
MAX_FUTURE_MS = 24 * 3600 * 1000

FIELDS = (
    "event_id", "event_type", "user_id", "item_id", "ts", "dwell_ms", "query",
    "session_id", "feed_id", "position", "model_version", "schema_version",
)
_ID_FIELDS = ("event_id", "user_id", "item_id", "session_id", "feed_id", "model_version")


@dataclass(frozen=True)
class Rejection:
    """Why a record was rejected: the field at fault (or ``record``) and a message."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_dict(data: Any, now_ms: int | None = None) -> dict[str, Any] | Rejection:
    """Check one decoded event against schema v1; return the clean event or a Rejection."""
    if not isinstance(data, dict):
        return Rejection("record", f"expected a JSON object, got {type(data).__name__}")
    event_type = data.get("event_type")
    if event_type not in EVENT_TYPES:
        return Rejection("event_type", f"must be one of {'|'.join(EVENT_TYPES)}, got {event_type!r}")
    for name in _ID_FIELDS:
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_ID_LEN):
            return Rejection(name, f"must be a non-empty string of at most {MAX_ID_LEN} characters")
    if not data.get("event_id"):
        return Rejection("event_id", "is required")
    try:
        uuid.UUID(data["event_id"])
    except ValueError:
        return Rejection("event_id", "must be a uuid")
    if not data.get("user_id"):
        return Rejection("user_id", "is required")
    if event_type == "search":
        if not isinstance(data.get("query"), str) or not data["query"].strip():
            return Rejection("query", "is required for search events")
    elif not data.get("item_id"):
        return Rejection("item_id", f"is required for {event_type} events")
    ts = data.get("ts")
    if not _is_int(ts):
        return Rejection("ts", "must be an integer (ms since epoch)")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if ts < MIN_TS_MS:
        return Rejection("ts", "is before 1995-01-01 (milliseconds since epoch expected, not seconds)")
    if ts > now + MAX_FUTURE_MS:
        return Rejection("ts", "is more than a day in the future")
    dwell = data.get("dwell_ms")
    if event_type == "dwell":
        if not _is_int(dwell) or dwell < 0:
            return Rejection("dwell_ms", "must be an integer >= 0 for dwell events")
    elif dwell is not None and (not _is_int(dwell) or dwell < 0):
        return Rejection("dwell_ms", "must be an integer >= 0")
    position = data.get("position")
    if position is not None and (not _is_int(position) or position < 0):
        return Rejection("position", "must be an integer >= 0")
    query = data.get("query")
    if query is not None and not isinstance(query, str):
        return Rejection("query", "must be a string")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        return Rejection("schema_version", f"must be {SCHEMA_VERSION}")

    clean = {name: data.get(name) for name in FIELDS}
    clean["schema_version"] = SCHEMA_VERSION
    clean["extra"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items() if k not in FIELDS}
    return clean


def validate(raw: bytes | str | None, now_ms: int | None = None) -> dict[str, Any] | Rejection:
    """Decode and validate one raw record."""
    if raw is None:
        return Rejection("record", "empty value")
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection("record", f"larger than {MAX_EVENT_BYTES} bytes")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(text)
    except UnicodeDecodeError:
        return Rejection("record", "not UTF-8")
    except ValueError as exc:
        return Rejection("record", f"not JSON ({exc.msg})")
    return validate_dict(data, now_ms)


def new_event(event_type: str, user_id: str, item_id: str | None, ts_ms: int | None = None, **fields: Any) -> dict[str, Any]:
    """A fresh v1 event dict with a new uuid."""
    event = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "user_id": user_id,
        "item_id": item_id,
        "ts": ts_ms if ts_ms is not None else int(time.time() * 1000),
        "schema_version": SCHEMA_VERSION,
    }
    event.update(fields)
    return event
