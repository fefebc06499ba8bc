"""The JVM validator (spark.event_rules) and the Python one (feedloop.events) agree, record by record.

Both interpret feedloop.events.RULES. A generated corpus of 12,000 records holds
every kind of valid event and every kind of invalid record; each must get the
same verdict and the same field from both, and valid events the same values.
"""

from __future__ import annotations

import json
import random
import uuid

import pytest

from feedloop.events import (
    EVENT_TYPES, FIELDS, INT32_MAX, MAX_EVENT_BYTES, MAX_ID_LEN, MIN_TS_MS, Rejection, validate,
)

NOW = 1_790_000_000_000  # fixed "now" for both validators
N_RECORDS = 12_000


def _valid(rng: random.Random) -> dict:
    event_type = rng.choice(EVENT_TYPES)
    event = {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "event_type": event_type,
        "user_id": f"u{rng.randrange(10**6)}",
        "item_id": None if event_type == "search" else f"i{rng.randrange(10**6)}",
        "ts": rng.choice([NOW - rng.randrange(10**9), MIN_TS_MS, NOW + 86_400_000, 874_965_758_000]),
        "schema_version": 1,
    }
    if event_type == "search":
        event["query"] = rng.choice(["comedy", "  sci-fi ", "é ü", "x" * 300])
    if event_type == "dwell":
        event["dwell_ms"] = rng.choice([0, 1, 45_000, 2**40])
    if rng.random() < 0.5:
        event.update(session_id=f"s{rng.randrange(100)}", feed_id=str(uuid.uuid4()), position=rng.choice([0, 3, INT32_MAX]),
                     model_version=rng.choice(["7", "7+online.3"]))
    if rng.random() < 0.3:
        event.update(colour="red", rating=rng.randrange(1, 6), nested={"a": [1, 2]}, flag=True, nothing=None)
    if rng.random() < 0.2:
        event.pop("schema_version")
    if rng.random() < 0.1 and event_type != "dwell":
        event["dwell_ms"] = None
    return event


def _breakers(rng: random.Random):
    """Ways to spoil a valid event: (kind, function of the event -> bytes)."""
    def put(field, value):
        return lambda e: json.dumps({**e, field: value}).encode()

    def drop(field):
        return lambda e: json.dumps({k: v for k, v in e.items() if k != field}).encode()

    return [
        ("bad json: truncated", lambda e: json.dumps(e).encode()[:-3]),
        ("bad json: garbage", lambda e: b"{not json " + e["user_id"].encode()),
        ("bad json: single quotes", lambda e: json.dumps(e).replace('"', "'").encode()),
        ("bad json: empty", lambda e: b""),
        ("not an object: array", lambda e: json.dumps([e]).encode()),
        ("not an object: null", lambda e: b"null"),
        ("not an object: number", lambda e: b"42"),
        ("not an object: string", lambda e: b'"event"'),
        ("empty object", lambda e: b"{}"),
        ("non-utf8: latin-1", lambda e: json.dumps({**e, "x": "\u00e9t\u00e9"}, ensure_ascii=False).encode("latin-1")),
        ("non-utf8: leading bytes", lambda e: b"\xff\xfe" + json.dumps(e).encode()),
        ("oversize", lambda e: json.dumps({**e, "blob": "x" * MAX_EVENT_BYTES}).encode()),
        ("unknown type", put("event_type", "hover")),
        ("type: event_type number", put("event_type", 3)),
        ("type: event_type null", put("event_type", None)),
        ("missing event_type", drop("event_type")),
        ("missing event_id", drop("event_id")),
        ("missing user_id", drop("user_id")),
        ("missing item_id", lambda e: json.dumps({**e, "event_type": "click", "item_id": None}).encode()),
        ("missing ts", drop("ts")),
        ("bad uuid: word", put("event_id", "nope")),
        ("bad uuid: no hyphens", lambda e: json.dumps({**e, "event_id": e["event_id"].replace("-", "")}).encode()),
        ("bad uuid: braces", lambda e: json.dumps({**e, "event_id": "{" + e["event_id"] + "}"}).encode()),
        ("bad uuid: newline", lambda e: json.dumps({**e, "event_id": e["event_id"] + "\n"}).encode()),
        ("bad uuid: urn", lambda e: json.dumps({**e, "event_id": "urn:uuid:" + e["event_id"]}).encode()),
        ("type: event_id number", put("event_id", 12345)),
        ("type: user_id number", put("user_id", 7)),
        ("type: user_id list", put("user_id", ["u1"])),
        ("empty user_id", put("user_id", "")),
        ("long user_id", put("user_id", "u" * (MAX_ID_LEN + 1))),
        ("long session_id", put("session_id", "s" * (MAX_ID_LEN + 5))),
        ("type: feed_id bool", put("feed_id", True)),
        ("type: ts string", put("ts", "yesterday")),
        ("type: ts numeric string", put("ts", str(NOW))),
        ("type: ts float", put("ts", NOW + 0.5)),
        ("type: ts whole float", put("ts", float(NOW))),
        ("type: ts bool", put("ts", True)),
        ("type: ts huge", put("ts", 2**70)),
        ("ts in seconds", put("ts", NOW // 1000)),
        ("ts in the future", put("ts", NOW + 3 * 86_400_000)),
        ("negative dwell", lambda e: json.dumps({**e, "event_type": "dwell", "dwell_ms": -rng.randrange(1, 10**6)}).encode()),
        ("dwell missing", lambda e: json.dumps({**e, "event_type": "dwell", "dwell_ms": None}).encode()),
        ("type: dwell string", lambda e: json.dumps({**e, "event_type": "dwell", "dwell_ms": "5"}).encode()),
        ("negative dwell on a view", lambda e: json.dumps({**e, "event_type": "view", "item_id": "i1", "dwell_ms": -1}).encode()),
        ("negative position", put("position", -1)),
        ("position too large", put("position", INT32_MAX + 1)),
        ("type: position string", put("position", "first")),
        ("search without query", lambda e: json.dumps({**e, "event_type": "search", "item_id": None}).encode()),
        ("search with blank query", lambda e: json.dumps({**e, "event_type": "search", "query": " \t\n"}).encode()),
        ("type: query number", lambda e: json.dumps({**e, "event_type": "view", "item_id": "i", "query": 5}).encode()),
        ("schema_version 2", put("schema_version", 2)),
        ("type: schema_version string", put("schema_version", "1")),
    ]


def corpus(n: int = N_RECORDS, seed: int = 5) -> list[tuple[str, bytes]]:
    """(kind, raw record): about a third valid events, the rest every kind of invalid record."""
    rng = random.Random(seed)
    breakers = _breakers(rng)
    records = []
    for index in range(n):
        event = _valid(rng)
        if index % 3 == 0:
            records.append(("valid", json.dumps(event).encode()))
        else:
            kind, spoil = breakers[index % len(breakers)]
            records.append((kind, spoil(event)))
    return records


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("test-event-rules")
               .config("spark.sql.shuffle.partitions", "2").config("spark.ui.enabled", "false")
               .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    yield session
    session.stop()


def test_the_corpus_covers_every_kind():
    records = corpus()
    kinds = {kind for kind, _ in records}
    assert len(records) >= 10_000 and len(kinds) == len(_breakers(random.Random(0))) + 1
    python = [validate(raw, NOW) for _, raw in records]
    assert sum(not isinstance(r, Rejection) for r in python) >= len(records) // 3
    # every rule's field is exercised by some rejection
    assert {r.field for r in python if isinstance(r, Rejection)} == {
        "record", "event_type", "event_id", "user_id", "item_id", "session_id", "feed_id", "ts", "dwell_ms",
        "position", "query", "schema_version"}


def test_jvm_and_python_validators_agree_on_every_record(spark):
    from spark.event_rules import validated

    records = corpus()
    frame = spark.createDataFrame([(n, raw) for n, (_, raw) in enumerate(records)], "n long, value binary")
    rows = {r["n"]: r for r in validated(frame, now_ms=NOW).collect()}
    assert len(rows) == len(records)
    disagreements = []
    for n, (kind, raw) in enumerate(records):
        expected, row = validate(raw, NOW), rows[n]
        if isinstance(expected, Rejection):
            got_field = row["reason"].split(":")[0] if row["reason"] else None
            if got_field != expected.field or row["raw"] != raw:
                disagreements.append((kind, str(expected), row["reason"]))
        elif row["reason"] is not None:
            disagreements.append((kind, "valid", row["reason"]))
        else:
            got = {name: row[name] for name in FIELDS}
            want = {name: expected[name] for name in FIELDS}
            if got != want or set(row["extra"]) != set(expected["extra"]):
                disagreements.append((kind, want, got))
    assert not disagreements, f"{len(disagreements)} disagreements, first: {disagreements[:3]}"


def test_messages_agree_where_they_name_no_value(spark):
    """The reason text is the same too, except that the JVM words a bad-JSON error without the parser's detail."""
    from spark.event_rules import validated

    records = [(kind, raw) for kind, raw in corpus(600, seed=9) if kind != "valid"]
    frame = spark.createDataFrame([(n, raw) for n, (_, raw) in enumerate(records)], "n long, value binary")
    rows = {r["n"]: r["reason"] for r in validated(frame, now_ms=NOW).collect()}
    for n, (kind, raw) in enumerate(records):
        expected = str(validate(raw, NOW))
        if "not JSON" in expected or "got " in expected:
            assert rows[n].split(" (")[0].split(", got")[0] == expected.split(" (")[0].split(", got")[0], kind
        else:
            assert rows[n] == expected, kind
