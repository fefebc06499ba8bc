"""The feed API's input checks, cursors, Redis wire client and failure answers, with no service running.

Redis and Kafka point at closed ports: every request here is answered before either
is needed, or must fail fast with a 503 when it is.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
import warnings

import pytest
import redis

from feedloop.settings import REPO_ROOT, Settings
from serving import resp
from serving.app import MAX_OFFSET, create_app, decode_cursor, encode_cursor, take_page
from serving.store import FeedStore, RedisUnavailable

with warnings.catch_warnings():
    # starlette's TestClient asks for httpx2, which is not a dependency; httpx works.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

API_KEY = "test-key"
CLOSED_PORT = 1


@pytest.fixture(scope="module")
def client():
    settings = Settings(
        api={"api_key": API_KEY, "max_body_bytes": 10_000},
        redis={"port": CLOSED_PORT, "socket_timeout_s": 0.2},
        kafka={"bootstrap": f"127.0.0.1:{CLOSED_PORT}", "request_timeout_ms": 500},
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _event(**overrides):
    event = {
        "event_id": str(uuid.uuid4()), "event_type": "click", "user_id": "u1",
        "item_id": "i1", "ts": int(time.time() * 1000),
    }
    event.update(overrides)
    return event


# -- cursors and paging -------------------------------------------------------------


@pytest.mark.parametrize("feed_id", ["user:u1@1700000000000", "seg:F|25-34|comedy@17", "trending:1m", "seg:é:x@1"])
def test_cursor_round_trip(feed_id):
    cursor = encode_cursor(feed_id, 40)
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_cursor(cursor) == (feed_id, 40)


def test_cursor_absent_or_bare_offset():
    assert decode_cursor(None) == (None, 0)
    assert decode_cursor("") == (None, 0)
    assert decode_cursor("0") == (None, 0)
    assert decode_cursor("25") == (None, 25)


@pytest.mark.parametrize("bad", ["!!", "abc", encode_cursor("x", 1)[:-3] + "***", "-1", str(MAX_OFFSET + 1), "²"])
def test_cursor_rejects_garbage(bad):
    with pytest.raises(ValueError):
        decode_cursor(bad)


def test_take_page_skips_excluded_and_keeps_feed_positions():
    entries = [(f"i{i}", 1.0 - i / 10) for i in range(6)]
    page, nxt = take_page(entries, 0, 3, {"i1", "i2"}, total=6)
    assert [(r["item_id"], r["position"]) for r in page] == [("i0", 0), ("i3", 3), ("i4", 4)]
    assert nxt == 5
    page, nxt = take_page(entries[5:], 5, 3, {"i1", "i2"}, total=6)
    assert [r["item_id"] for r in page] == ["i5"] and nxt is None


def test_take_page_ends_exactly_at_last_item():
    page, nxt = take_page([("a", None), ("b", None)], 0, 2, set(), total=2)
    assert [r["item_id"] for r in page] == ["a", "b"] and nxt is None


# -- bad input answers 4xx naming the field, before touching Redis -------------------


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/feeds/users/u1?limit=0", "limit"),
        ("/v1/feeds/users/u1?limit=201", "limit"),
        ("/v1/feeds/users/u1?limit=ten", "limit"),
        ("/v1/feeds/users/" + "u" * 129, "user_id"),
        ("/v1/feeds/users/u1?cursor=not-a-cursor", "cursor"),
        ("/v1/feeds/segments/" + "s" * 129, "segment"),
        ("/v1/feeds/segments/F%7C25-34%7Ccomedy?limit=500", "limit"),
        ("/v1/trending?window=5m", "window"),
        ("/v1/popular?limit=-3", "limit"),
        ("/v1/users/" + "u" * 129 + "/stats", "user_id"),
        ("/v1/feeds/users/u1?limit=1.5", "limit"),
        ("/v1/feeds/users/u1?limit=%C2%B2", "limit"),
        ("/v1/feeds/users/u1?cursor=" + "x" * 513, "cursor"),
        ("/v1/feeds/segments/F%7C25-34%7Ccomedy?cursor=***", "cursor"),
        ("/v1/items?limit=101", "limit"),
        ("/v1/items?min_price=-1", "min_price"),
        ("/v1/items?max_price=nan", "max_price"),
        ("/v1/items?min_price=5&max_price=2", "max_price"),
        ("/v1/items?q=", "q"),
        ("/v1/items?cursor=" + encode_cursor("user:u1@1", 3), "cursor"),
        ("/v1/items?q=%20%20", "q"),
        ("/v1/items?q=!!%3F", "q"),
        ("/v1/items?sort=cheap", "sort"),
        ("/v1/feeds/users/u1?exclude=" + ",".join(f"i{n}" for n in range(101)), "exclude"),
        ("/v1/feeds/users/u1?exclude=i1,,i2", "exclude"),
        ("/v1/feeds/users/u1?exclude=" + "i" * 129, "exclude"),
        ("/v1/feeds/users/u1?category=" + ",".join(f"c{n}" for n in range(11)), "category"),
        ("/v1/feeds/segments/F%7C25-34%7Ccomedy?category=comedy,", "category"),
        ("/v1/feeds/segments/F%7C25-34%7Ccomedy?exclude=" + ",".join(f"i{n}" for n in range(101)), "exclude"),
    ],
)
def test_bad_query_names_the_field(client, path, field):
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_feed_query_errors_list_every_bad_field(client):
    response = client.get("/v1/feeds/users/" + "u" * 129 + "?limit=0&cursor=nope")
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "user_id" and body["error"] == "invalid request"
    assert [(e["field"], e["location"]) for e in body["errors"]] == [("user_id", "path"), ("limit", "query"),
                                                                    ("cursor", "query")]
    assert body["errors"][1]["message"] == "Input should be greater than or equal to 1"


def test_events_need_the_api_key(client):
    assert client.post("/v1/events", json=[_event()]).status_code == 401
    response = client.post("/v1/events", json=[_event()], headers={"X-API-Key": "wrong"})
    assert response.status_code == 403
    assert response.json()["field"] == "X-API-Key"


def test_events_with_no_key_configured_are_refused():
    settings = Settings(api={"api_key": ""}, redis={"port": CLOSED_PORT})
    with TestClient(create_app(settings)) as local:
        assert local.post("/v1/events", json=[_event()], headers={"X-API-Key": ""}).status_code == 401
        assert local.post("/v1/events", json=[_event()], headers={"X-API-Key": "anything"}).status_code == 403


def test_events_body_too_large(client):
    events = [_event(query="x" * 2000, event_type="search", item_id=None) for _ in range(10)]
    response = client.post("/v1/events", json=events, headers={"X-API-Key": API_KEY})
    assert response.status_code == 413
    assert response.json()["field"] == "body"


def test_events_body_not_json(client):
    response = client.post("/v1/events", content=b"{nope", headers={"X-API-Key": API_KEY})
    assert response.status_code == 400
    assert response.json()["field"] == "body"


@pytest.mark.parametrize("body", [[], {"events": []}, {"event": [1]}, "click"])
def test_events_body_must_hold_a_list(client, body):
    response = client.post("/v1/events", json=body, headers={"X-API-Key": API_KEY})
    assert response.status_code == 422
    assert response.json()["field"] == "events"


def test_first_bad_event_is_named_by_index_and_field(client):
    batch = [_event(), _event(ts="yesterday"), _event(event_type="teleport")]
    response = client.post("/v1/events", json={"events": batch}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 422
    body = response.json()
    assert (body["index"], body["field"]) == (1, "ts")
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [(1, "ts"), (2, "event_type")]


# -- dependencies down: fast 503s ------------------------------------------------------


def test_kafka_unreachable_answers_503_quickly(client):
    started = time.monotonic()
    response = client.post("/v1/events", json=[_event()], headers={"X-API-Key": API_KEY})
    assert response.status_code == 503
    assert response.json()["error"] == "kafka unavailable"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("path", ["/v1/feeds/users/u1", "/v1/feeds/segments/any%7Cany%7Cany", "/v1/trending",
                                  "/v1/popular", "/v1/users/u1/stats", "/v1/items?q=epic"])
def test_redis_unreachable_answers_503_quickly(client, path):
    started = time.monotonic()
    response = client.get(path)
    assert response.status_code == 503
    assert response.json()["error"] == "redis unavailable"
    assert response.headers["Retry-After"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["dependency"] == "redis"
    assert time.monotonic() - started < 3


# -- operations --------------------------------------------------------------------


def test_healthz_needs_no_dependency(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_metrics_are_prometheus_text(client):
    client.get("/v1/feeds/users/u1?limit=0")
    text = client.get("/metrics").text
    assert "# TYPE feedloop_api_request_duration_seconds histogram" in text
    assert 'feedloop_api_requests_total{endpoint="/v1/feeds/users/{user_id}",status="422"}' in text
    assert 'le="+Inf"' in text


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/feeds/users/{user_id}", "/v1/feeds/segments/{segment}", "/v1/trending", "/v1/popular",
                 "/v1/users/{user_id}/stats", "/v1/items", "/v1/events", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    # the feed endpoints read their query by hand: their parameters are documented all the same
    for path, ident in (("/v1/feeds/users/{user_id}", "user_id"), ("/v1/feeds/segments/{segment}", "segment")):
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        assert set(params) == {ident, "limit", "cursor", "category", "exclude"}
        assert params["limit"]["schema"]["maximum"] == 200 and params[ident]["in"] == "path"
    assert "examples" in spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert client.get("/docs").status_code == 200


def test_serving_never_imports_tensorflow_or_spark():
    code = (
        "import sys, serving.app\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'pyspark', 'keras'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# -- the API's Redis client: wire format, split replies, timeouts --------------------

REPLIES = [
    (b"+OK\r\n", "OK"),
    (b":42\r\n", 42),
    (b"$5\r\nhello\r\n", "hello"),
    (b"$0\r\n\r\n", ""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n$1\r\na\r\n$-1\r\n*2\r\n:1\r\n$3\r\nb\xc3\xa9\r\n", ["a", None, [1, "bé"]]),
    (b"$12\r\nwith\r\ncrlf!!\r\n", "with\r\ncrlf!!"),
    (b"-ERR wrong type\r\n", redis.exceptions.ResponseError),
    (b"-NOSCRIPT No matching script\r\n", redis.exceptions.NoScriptError),
]


class _Transport:
    def __init__(self):
        self.written, self.aborted = [], False

    def write(self, data):
        self.written.append(data)

    def abort(self):
        self.aborted = True

    def close(self):
        pass


def _outcome(future):
    exc = future.exception()
    return type(exc) if exc else future.result()


def test_commands_are_encoded_as_resp_arrays():
    assert resp.encode(("GET", "k:é", 5)) == b"*3\r\n$3\r\nGET\r\n$4\r\nk:\xc3\xa9\r\n$1\r\n5\r\n"
    assert resp.encode(("SET", "k", b"\x00")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\x00\r\n"


def test_replies_split_at_any_byte_resolve_in_order():
    stream = b"".join(raw for raw, _ in REPLIES)
    expected = [value for _, value in REPLIES]

    async def run():
        for cut in range(len(stream) + 1):
            protocol = resp._Protocol(timeout_s=5)
            protocol.connection_made(_Transport())
            futures = protocol.send(b"", len(REPLIES))
            protocol.data_received(stream[:cut])
            protocol.data_received(stream[cut:])
            assert [_outcome(f) for f in futures] == expected, f"cut at {cut}"
            protocol.connection_lost(None)

    asyncio.run(run())


def test_a_silent_server_times_out_every_pending_command():
    async def run():
        protocol = resp._Protocol(timeout_s=0.05)
        transport = _Transport()
        protocol.connection_made(transport)
        futures = protocol.send(b"", 2)
        await asyncio.sleep(0.2)
        assert [_outcome(f) for f in futures] == [redis.exceptions.TimeoutError] * 2
        assert transport.aborted and protocol.closed

    asyncio.run(run())


def test_a_lost_connection_fails_pending_commands():
    async def run():
        protocol = resp._Protocol(timeout_s=5)
        protocol.connection_made(_Transport())
        (future,) = protocol.send(b"", 1)
        protocol.connection_lost(ConnectionResetError())
        assert _outcome(future) is redis.exceptions.ConnectionError and protocol.closed

    asyncio.run(run())


def test_unreachable_redis_is_a_connection_error_then_the_breaker_answers_at_once():
    async def run():
        store = FeedStore(resp.AsyncRedis("127.0.0.1", CLOSED_PORT, timeout_s=0.2), cooldown_s=30)
        with pytest.raises(redis.exceptions.ConnectionError) as first:
            await store.execute("PING")
        assert not isinstance(first.value, RedisUnavailable)
        with pytest.raises(RedisUnavailable):
            await store.execute("PING")

    asyncio.run(run())


def test_the_documented_event_schema_names_every_field_and_admits_what_the_validator_takes():
    import jsonschema

    from feedloop.events import EVENT_TYPES, FIELDS, new_event, validate_dict
    from serving.schemas import EVENT_EXAMPLE, EVENT_SCHEMA

    assert set(EVENT_SCHEMA["properties"]) == set(FIELDS)
    valid = [EVENT_EXAMPLE, *(new_event(t, "u1", None if t == "search" else "i1", query="shoes" if t == "search" else None,
                                        dwell_ms=5000 if t == "dwell" else None) for t in EVENT_TYPES)]
    for event in valid:
        assert isinstance(validate_dict(event), dict), event
        jsonschema.validate(event, EVENT_SCHEMA)
    for bad in ({**EVENT_EXAMPLE, "event_id": "not-a-uuid"}, {**EVENT_EXAMPLE, "ts": 1767225600},
                {**EVENT_EXAMPLE, "position": -1}, {k: v for k, v in EVENT_EXAMPLE.items() if k != "user_id"}):
        assert not isinstance(validate_dict(bad), dict), bad
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, EVENT_SCHEMA)


# -- the one circuit breaker, on both dependencies --------------------------------------


def test_breaker_opens_on_a_failure_and_closes_after_the_cooldown():
    from serving.breaker import Breaker

    breaker = Breaker(cooldown_s=0.05)
    assert not breaker.is_open()
    breaker.trip()
    assert breaker.is_open()
    time.sleep(0.06)
    assert not breaker.is_open()


def test_unreachable_kafka_is_unavailable_in_time_then_the_breaker_answers_at_once():
    from serving.kafka_producer import EventPublisher, KafkaUnavailable

    publisher = EventPublisher(f"127.0.0.1:{CLOSED_PORT}", "feedback.events", timeout_ms=300, cooldown_s=30)
    assert publisher.state == "unused"
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable) as first:
        publisher.publish([_event()])
    assert time.monotonic() - started < 2
    assert "less than" not in str(first.value) and publisher.state == "unavailable"
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match="failed less than 30s ago"):
        publisher.publish([_event()])
    assert time.monotonic() - started < 0.1
    publisher.close()
