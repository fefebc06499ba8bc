"""Event schema v1: one declarative rule set, and the Python validator built from it.

``RULES`` states every check once, as data. Two interpreters read it:

* :func:`validate` / :func:`validate_dict` here, used by the API, the bulk load,
  the simulator's tests and the online learner;
* :mod:`spark.event_rules`, which compiles the same rules to Spark SQL
  expressions so the streaming sink validates in the JVM.

Both report the first rule that fails, as ``Rejection(field, message)``;
``tests/unit/test_event_rules.py`` checks on a generated corpus that they give
the same verdict and the same field.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
EVENT_TYPES = ("impression", "click", "dwell", "view", "cart", "like", "purchase", "search")
MAX_EVENT_BYTES = 64 * 1024
# The topics' max.message.bytes: a bad record of up to ~1 MB must still reach the DLQ
# whole (base64 grows it by a third).
EVENTS_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
DLQ_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_ID_LEN = 128
# Event times must fall between 1995-01-01 (catches seconds sent as milliseconds,
# and still admits historical imports such as MovieLens) and a day ahead of now.
MIN_TS_MS = 788_918_400_000
MAX_FUTURE_MS = 24 * 3600 * 1000
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1

FIELDS = (
    "event_id", "event_type", "user_id", "item_id", "ts", "dwell_ms", "query",
    "session_id", "feed_id", "position", "model_version", "schema_version",
)
_ID_FIELDS = ("event_id", "user_id", "item_id", "session_id", "feed_id", "model_version")
# The canonical 8-4-4-4-12 text form; the same regex runs in Python (fullmatch) and Java.
UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# "Blank" is ASCII whitespace only, so Python and Java agree on it.
BLANK_PATTERN = "[ \t\n\x0b\f\r]*"


@dataclass(frozen=True)
class Rejection:
    """Why a record was rejected: the field at fault (or ``record``) and a message."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Rule:
    """One check of one field, in the order the rules are tried.

    ``kind`` says what passes:

    * ``one_of``: a string among ``values``;
    * ``string``: absent, or a non-empty string of at most ``max_len`` characters;
    * ``required``: present (not absent, not null);
    * ``pattern``: absent, or a string matching ``pattern`` as a whole;
    * ``non_blank``: a string with a character other than ASCII whitespace;
    * ``is_string``: absent, or a string;
    * ``integer``: absent (unless ``required``), or a JSON integer in [``low``, ``high``];
    * ``not_future``: absent, or at most ``MAX_FUTURE_MS`` ahead of now.

    ``when`` / ``unless`` restrict the rule to some event types. A message may name
    ``{event_type}`` or ``{value}`` (the offending value, as Python's repr).
    """

    field: str
    kind: str
    message: str
    values: tuple = ()
    max_len: int = 0
    pattern: str = ""
    low: int = -(2**63)
    high: int = INT64_MAX
    required: bool = False
    when: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()

    def applies(self, event_type: Any) -> bool:
        if self.when and event_type not in self.when:
            return False
        return not (self.unless and event_type in self.unless)


RULES: tuple[Rule, ...] = (
    Rule("event_type", "one_of", f"must be one of {'|'.join(EVENT_TYPES)}, got {{value}}", values=EVENT_TYPES),
    *(Rule(name, "string", f"must be a non-empty string of at most {MAX_ID_LEN} characters", max_len=MAX_ID_LEN)
      for name in _ID_FIELDS),
    Rule("event_id", "required", "is required"),
    Rule("event_id", "pattern", "must be a uuid", pattern=UUID_PATTERN),
    Rule("user_id", "required", "is required"),
    Rule("query", "non_blank", "is required for search events", when=("search",)),
    Rule("item_id", "required", "is required for {event_type} events", unless=("search",)),
    Rule("ts", "integer", "must be an integer (ms since epoch)", required=True),
    Rule("ts", "integer", "is before 1995-01-01 (milliseconds since epoch expected, not seconds)", low=MIN_TS_MS),
    Rule("ts", "not_future", "is more than a day in the future"),
    Rule("dwell_ms", "integer", "must be an integer >= 0 for dwell events", low=0, required=True, when=("dwell",)),
    Rule("dwell_ms", "integer", "must be an integer >= 0", low=0, unless=("dwell",)),
    Rule("position", "integer", f"must be an integer from 0 to {INT32_MAX}", low=0, high=INT32_MAX),
    Rule("query", "is_string", "must be a string"),
    Rule("schema_version", "integer", f"must be {SCHEMA_VERSION}", low=SCHEMA_VERSION, high=SCHEMA_VERSION),
)
# Checked before the field rules, on the raw record (the Spark compiler words them the same).
RECORD_EMPTY = "empty value"
RECORD_TOO_LARGE = f"larger than {MAX_EVENT_BYTES} bytes"
RECORD_NOT_UTF8 = "not UTF-8"
RECORD_NOT_JSON = "not JSON"
RECORD_NOT_OBJECT = "expected a JSON object"

_BLANK_RE = re.compile(BLANK_PATTERN)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _passes(rule: Rule, value: Any, now_ms: int) -> bool:
    kind = rule.kind
    if kind == "one_of":
        return isinstance(value, str) and value in rule.values
    if kind == "required":
        return value is not None
    if kind == "non_blank":
        return isinstance(value, str) and not _BLANK_RE.fullmatch(value)
    if value is None:
        return not (kind == "integer" and rule.required)
    if kind == "string":
        return isinstance(value, str) and 0 < len(value) <= rule.max_len
    if kind == "pattern":
        return isinstance(value, str) and re.fullmatch(rule.pattern, value) is not None
    if kind == "is_string":
        return isinstance(value, str)
    if kind == "integer":
        return _is_int(value) and rule.low <= value <= rule.high
    if kind == "not_future":
        return not _is_int(value) or value <= now_ms + MAX_FUTURE_MS
    raise ValueError(f"unknown rule kind {kind!r}")


def validate_dict(data: Any, now_ms: int | None = None) -> dict[str, Any] | Rejection:
    """Check one decoded event against schema v1; return the clean event or the first failing rule."""
    if not isinstance(data, dict):
        return Rejection("record", f"{RECORD_NOT_OBJECT}, got {type(data).__name__}")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    event_type = data.get("event_type")
    for rule in RULES:
        if not rule.applies(event_type):
            continue
        value = data.get(rule.field)
        if not _passes(rule, value, now):
            return Rejection(rule.field, rule.message.format(event_type=event_type, value=repr(value)))
    clean = {name: data.get(name) for name in FIELDS}
    clean["schema_version"] = SCHEMA_VERSION
    clean["extra"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items() if k not in FIELDS}
    return clean


def validate(raw: bytes | str | None, now_ms: int | None = None) -> dict[str, Any] | Rejection:
    """Decode and validate one raw record."""
    if raw is None:
        return Rejection("record", RECORD_EMPTY)
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection("record", RECORD_TOO_LARGE)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(text)
    except UnicodeDecodeError:
        return Rejection("record", RECORD_NOT_UTF8)
    except ValueError as exc:
        return Rejection("record", f"{RECORD_NOT_JSON} ({exc.msg})")
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
