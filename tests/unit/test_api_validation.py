"""The feed API's input checks, cursors and failure answers, with no service running.

Redis and Kafka point at closed ports: every request here is answered before either
is needed, or must fail fast with a 503 when it is.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
import warnings

import pytest

from feedloop.settings import REPO_ROOT, Settings
from serving.app import MAX_OFFSET, create_app, decode_cursor, encode_cursor, take_page

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
    ],
)
def test_bad_query_names_the_field(client, path, field):
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


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


def test_redis_unreachable_answers_503_quickly(client):
    started = time.monotonic()
    response = client.get("/v1/feeds/users/u1")
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
                 "/v1/users/{user_id}/stats", "/v1/events", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path
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
