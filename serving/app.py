"""The feed API: FastAPI over Redis, events to Kafka. Never imports TensorFlow or Spark.

Reads go through :mod:`feature_store.online` (its key builders and its atomic feed
reads), so serving and the publishers agree on one key layout.

* ``GET /v1/feeds/users/{user_id}``: the user's own feed, else the feed of the user's
  segment walking :func:`feature_store.segments.fallbacks`, else trending (1m, then
  10m), else popular; ``source`` says which. Items the user saw recently are left out.
* Pagination: ``next_cursor`` is opaque; it pins the feed and its publication, so
  pages never mix two publications. When the pinned feed is no longer current
  the next page starts again from the top and says ``cursor_reset: true``.
  ``position`` is an item's index in the whole feed (what events report back).
* A Redis or Kafka failure answers 503 within the configured socket/request
  timeouts; the clients reconnect by themselves when the service is back.
* ``/metrics`` is the Prometheus text format, written by hand (prometheus_client is
  not a dependency); with several workers each process reports its own numbers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, Literal

import orjson
import redis
from fastapi import FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import feedloop
from feature_store import online
from feature_store.segments import ANY, fallbacks
from feedloop.events import MAX_EVENT_BYTES, validate_dict
from feedloop.settings import get_settings
from serving.kafka_producer import EventPublisher, KafkaUnavailable

MAX_ID_LEN = 128
MAX_LIMIT = 200
DEFAULT_LIMIT = 20
MAX_OFFSET = 1_000_000
# Only the most recent history is excluded; older views may come back.
MAX_RECENT = 500
TRENDING_WINDOWS = ("1m", "10m")
UNKNOWN_SEGMENT = "|".join((ANY, ANY, ANY))
RETRY_AFTER_S = 1
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAX_REJECTIONS_LISTED = 20


# -- responses -----------------------------------------------------------


class ORJSONResponse(JSONResponse):
    """JSON rendered by orjson (FastAPI's own ORJSONResponse is deprecated)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> ORJSONResponse:
    return ORJSONResponse(content, status_code=status_code, headers=headers)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- cursors ---------------------------------------------------------------


def encode_cursor(feed_id: str, offset: int) -> str:
    """An opaque, URL-safe cursor for ``offset`` within the feed ``feed_id``."""
    raw = f"{offset}:{feed_id}".encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[str | None, int]:
    """``(feed_id, offset)`` from a cursor; a bare integer is an offset with no feed pinned.

    Raises ValueError on anything else.
    """
    if cursor is None or cursor == "":
        return None, 0
    if cursor.isascii() and cursor.isdigit():
        offset = int(cursor)
        if offset > MAX_OFFSET:
            raise ValueError(f"offset larger than {MAX_OFFSET}")
        return None, offset
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor returned by this API") from None
    offset, sep, feed_id = text.partition(":")
    if not sep or not (offset.isascii() and offset.isdigit()) or int(offset) > MAX_OFFSET or not feed_id:
        raise ValueError("not a cursor returned by this API")
    return feed_id, int(offset)


def feed_id_of(source: str, ident: str, publication: str | None) -> str:
    """What events report as ``feed_id``: kind, id and publication (live rankings have none)."""
    return f"{source}:{ident}@{publication}" if publication else f"{source}:{ident}"


def take_page(
    entries: Sequence[tuple[str, float | None]],
    start: int,
    limit: int,
    exclude: frozenset[str] | set[str],
    total: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` items from ``entries`` (which begin at ``start`` of a ranking of
    ``total`` items), skipping ``exclude``; returns the page and the next offset or None.
    """
    page: list[dict[str, Any]] = []
    next_offset: int | None = None
    for i, (item, score) in enumerate(entries):
        if item in exclude:
            continue
        page.append({"item_id": item, "score": score, "position": start + i})
        if len(page) == limit:
            next_offset = start + i + 1
            break
    if next_offset is not None and next_offset >= total:
        next_offset = None
    return page, next_offset


def _feed_entries(feed: online.Feed, offset: int) -> list[tuple[str, float | None]]:
    scores = feed.scores
    return [(item, scores[i] if i < len(scores) else None) for i, item in enumerate(feed.items)][offset:]


# -- metrics -------------------------------------------------------------


class Metrics:
    """A few counters and one histogram, rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latency: dict[tuple[str, str], list[float]] = {}  # bucket counts..., sum, count
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._help: dict[str, str] = {}

    def observe(self, endpoint: str, source: str, seconds: float) -> None:
        with self._lock:
            row = self._latency.setdefault((endpoint, source), [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    row[i] += 1
            row[-2] += seconds
            row[-1] += 1

    def inc(self, name: str, help_text: str, amount: float = 1, **labels: str) -> None:
        with self._lock:
            self._help.setdefault(name, help_text)
            series = self._counters.setdefault(name, {})
            key = tuple(sorted(labels.items()))
            series[key] = series.get(key, 0) + amount

    def render(self) -> str:
        def fmt(labels: Sequence[tuple[str, str]]) -> str:
            if not labels:
                return ""
            escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in labels)
            return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(labels, escaped)) + "}"

        name = "feedloop_api_request_duration_seconds"
        lines = [
            f"# HELP {name} Request latency by endpoint (route template) and feed source.",
            f"# TYPE {name} histogram",
        ]
        with self._lock:
            for (endpoint, source), row in sorted(self._latency.items()):
                base = [("endpoint", endpoint), ("source", source)]
                for bound, count in zip(LATENCY_BUCKETS, row):
                    lines.append(f"{name}_bucket{fmt(base + [('le', repr(bound))])} {count:g}")
                lines.append(f"{name}_bucket{fmt(base + [('le', '+Inf')])} {row[-1]:g}")
                lines.append(f"{name}_sum{fmt(base)} {row[-2]:.6f}")
                lines.append(f"{name}_count{fmt(base)} {row[-1]:g}")
            for counter, series in sorted(self._counters.items()):
                lines.append(f"# HELP {counter} {self._help[counter]}")
                lines.append(f"# TYPE {counter} counter")
                for labels, value in sorted(series.items()):
                    lines.append(f"{counter}{fmt(labels)} {value:g}")
        return "\n".join(lines) + "\n"


class _TimingMiddleware:
    """Times every HTTP request; labels it by route template and the feed source served."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            source = (scope.get("state") or {}).get("source", "none")
            self.metrics.observe(endpoint, source, time.perf_counter() - started)
            self.metrics.inc(
                "feedloop_api_requests_total", "Requests by endpoint and HTTP status.",
                endpoint=endpoint, status=str(status[0]),
            )


# -- OpenAPI models (documentation; handlers build the JSON directly) ------------------


class FeedItem(BaseModel):
    item_id: str
    score: float | None = Field(description="ranking score; null when the publisher gave none")
    position: int = Field(description="0-based index of the item in the whole feed")


class FeedPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user_id": "u42",
        "source": "segment",
        "segment": "F|25-34|comedy",
        "window": None,
        "feed_id": "seg:F|25-34|comedy@1767225600000",
        "model_version": "7",
        "generated_at": "2026-01-01T00:00:00.000Z",
        "generated_at_ms": 1767225600000,
        "publication": "1767225600000",
        "items": [{"item_id": "i981", "score": 0.83, "position": 0}, {"item_id": "i17", "score": 0.79, "position": 2}],
        "next_cursor": "MzpzZWc6RnwyNS0zNHxjb21lZHlAMTc2NzIyNTYwMDAwMA",
        "cursor_reset": False,
    }]})

    user_id: str | None = Field(None, description="present on user feeds")
    source: Literal["user", "segment", "trending", "popular"]
    segment: str | None = Field(None, description="the segment whose feed was served (source=segment)")
    window: str | None = Field(None, description="trending window (source=trending)")
    feed_id: str = Field(description="report this back in events as feed_id")
    model_version: str | None = Field(description="model version that made the feed; null for live rankings")
    generated_at: str
    generated_at_ms: int
    publication: str | None
    items: list[FeedItem]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")
    cursor_reset: bool = Field(
        description="the cursor's feed or publication is no longer current: this page starts again at 0")


class Ranking(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "source": "trending", "window": "1m", "generated_at": "2026-01-01T00:00:00.000Z",
        "generated_at_ms": 1767225600000, "items": [{"item_id": "i5", "score": 31.0, "position": 0}],
    }]})

    source: Literal["trending", "popular"]
    window: str | None = None
    generated_at: str
    generated_at_ms: int
    items: list[FeedItem]


class UserStats(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"user_id": "u42", "stats": {"click": 3, "view": 12}}]})

    user_id: str
    stats: dict[str, float] = Field(description="counters by event type over the last minutes; empty when idle")


class Accepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"accepted": 2}]})

    accepted: int


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"error": "invalid request", "field": "limit", "message": "Input should be less than or equal to 200"},
        {"error": "invalid event", "index": 1, "field": "ts", "message": "must be an integer (ms since epoch)"},
        {"error": "redis unavailable", "detail": "Timeout connecting to server", "retry_after_s": 1},
    ]})

    error: str
    field: str | None = None


_EVENT_EXAMPLE = {
    "event_id": "4b6f3c1e-8a0e-4d54-9a51-3c2d5f0e7a11", "event_type": "click", "user_id": "u42",
    "item_id": "i981", "ts": 1767225600000, "feed_id": "seg:F|25-34|comedy@1767225600000",
    "position": 0, "model_version": "7", "schema_version": 1,
}
_EVENTS_BODY = {
    "required": True,
    "content": {"application/json": {
        "schema": {"oneOf": [
            {"type": "array", "items": {"type": "object"}},
            {"type": "object", "required": ["events"],
             "properties": {"events": {"type": "array", "items": {"type": "object"}}}},
        ]},
        "examples": {
            "list": {"summary": "a JSON list of events", "value": [_EVENT_EXAMPLE]},
            "wrapped": {"summary": "an object with an events list", "value": {"events": [_EVENT_EXAMPLE]}},
        },
    }},
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


# -- the app ---------------------------------------------------------------------


def _redis_client(settings) -> redis.Redis:
    return online.connect(settings)


def _first_error_field(exc: RequestValidationError) -> dict[str, Any]:
    """422 body: the first bad field named at the top, every error listed below."""
    errors = []
    for e in exc.errors():
        loc = e.get("loc") or ("request",)
        errors.append({"field": str(loc[-1]), "location": str(loc[0]), "message": e.get("msg", "")})
    first = errors[0] if errors else {"field": "request", "message": "invalid request"}
    return {"error": "invalid request", "field": first["field"], "message": first["message"], "errors": errors}


def _zset_pages(client: redis.Redis, keys: Sequence[str], offset: int, count: int) -> list[tuple[int, list]]:
    """For each key: its size and the ``count`` rows from ``offset`` (highest score first)."""
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.zcard(k)
        pipe.zrevrange(k, offset, offset + count - 1, withscores=True)
    out = pipe.execute()
    return [(out[i], out[i + 1]) for i in range(0, len(out), 2)]


def create_app(settings=None) -> FastAPI:
    """The feed API for ``settings`` (default: the process settings)."""
    settings = settings or get_settings()
    metrics = Metrics()
    client = _redis_client(settings)
    publisher = EventPublisher.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(publisher.close)
        client.close()

    app = FastAPI(
        title="feedloop feed API",
        version=feedloop.__version__,
        description=(
            "Personalised feeds from Redis, with fallbacks (user → segment → trending → popular), "
            "and an event collector that writes to Kafka. Errors are JSON: `error`, and `field` for bad input."
        ),
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.redis = client
    app.state.publisher = publisher
    app.state.metrics = metrics
    app.add_middleware(_TimingMiddleware, metrics=metrics)

    # -- errors ---------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _json(_first_error_field(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _json({"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, exc: redis.exceptions.RedisError):
        metrics.inc("feedloop_api_redis_errors_total", "Redis calls that failed, by kind.", kind=type(exc).__name__)
        return _json(
            {"error": "redis unavailable", "detail": str(exc), "retry_after_s": RETRY_AFTER_S},
            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis_error(request: Request, exc: redis.exceptions.RedisError):
        metrics.inc("feedloop_api_redis_errors_total", "Redis calls that failed, by kind.", kind=type(exc).__name__)
        return _json({"error": "redis error", "detail": str(exc)}, status_code=500)

    def bad_cursor(message: str) -> ORJSONResponse:
        return _json({"error": "invalid request", "field": "cursor", "message": message}, status_code=422)

    def paged(feed_id: str, entries_at, size: int, pinned: str | None, offset: int, limit: int,
              exclude: frozenset[str]) -> dict[str, Any]:
        """One page of a ranking; ``entries_at(start)`` gives its (item, score) rows from ``start``."""
        reset = pinned is not None and pinned != feed_id
        start = 0 if reset else offset
        items, nxt = take_page(entries_at(start), start, limit, exclude, size)
        return {
            "feed_id": feed_id,
            "items": items,
            "next_cursor": encode_cursor(feed_id, nxt) if nxt is not None else None,
            "cursor_reset": reset,
        }

    def published_page(feed: online.Feed, source: str, ident: str, pinned: str | None, offset: int,
                       limit: int, exclude: frozenset[str]) -> dict[str, Any]:
        feed_id = feed_id_of("user" if source == "user" else "seg", ident, feed.publication)
        page = paged(feed_id, lambda start: _feed_entries(feed, start), len(feed.items), pinned, offset, limit, exclude)
        return {
            "source": source,
            "segment": ident if source == "segment" else None,
            "window": None,
            "model_version": feed.model_version,
            "generated_at": _iso(feed.generated_at_ms),
            "generated_at_ms": feed.generated_at_ms,
            "publication": feed.publication or None,
            **page,
        }

    def live_page(source: str, window: str | None, size: int, rows: list, rows_from: int, pinned: str | None,
                  offset: int, limit: int, exclude: frozenset[str]) -> dict[str, Any]:
        key = online.trending_key(window) if window else online.popular_key()
        count = limit + len(exclude)  # enough rows to fill a page after exclusion

        def entries_at(start: int) -> list[tuple[str, float]]:
            got = rows if start == rows_from else client.zrevrange(key, start, start + count - 1, withscores=True)
            return [(member, float(score)) for member, score in got]

        page = paged(feed_id_of(source, window or "all", None), entries_at, size, pinned, offset, limit, exclude)
        now = _now_ms()
        return {
            "source": source,
            "segment": None,
            "window": window,
            "model_version": None,
            "generated_at": _iso(now),
            "generated_at_ms": now,
            "publication": None,
            **page,
        }

    def resolve_user_page(user_id: str, pinned: str | None, offset: int, limit: int) -> dict[str, Any]:
        """The first source, in fallback order, that has something for this user.

        A feed whose unseen items are all gone is skipped on a fresh start, but a cursor
        into it runs to its end rather than jumping to another feed.
        """
        pipe = client.pipeline(transaction=False)
        pipe.hget(online.user_profile_key(user_id), "segment")
        pipe.zrevrange(online.user_recent_key(user_id), 0, MAX_RECENT - 1)
        segment, recent = pipe.execute()
        exclude = frozenset(recent)
        first: dict[str, Any] | None = None

        def usable(body: dict[str, Any]) -> bool:
            continuing = body["feed_id"] == pinned if pinned is not None else offset > 0
            return bool(body["items"]) or continuing

        chain = fallbacks(segment or UNKNOWN_SEGMENT)
        published = [("user", user_id)] + [("segment", s) for s in chain]
        found = online.read_feeds(client, [("user" if src == "user" else "seg", ident) for src, ident in published])
        for (source, ident), feed in zip(published, found):
            if feed is not None:
                body = published_page(feed, source, ident, pinned, offset, limit, exclude)
                if usable(body):
                    return body
                first = first or body

        live = [("trending", w) for w in TRENDING_WINDOWS] + [("popular", None)]
        keys = [online.trending_key(w) if w else online.popular_key() for _, w in live]
        for (source, window), (size, rows) in zip(live, _zset_pages(client, keys, offset, limit + len(exclude))):
            if size:
                body = live_page(source, window, size, rows, offset, pinned, offset, limit, exclude)
                if usable(body):
                    return body
                first = first or body
        # Nothing published at all yet: an empty popular page says so.
        return first or live_page("popular", None, 0, [], offset, pinned, offset, limit, exclude)

    # -- feeds ------------------------------------------------------------
    @app.get(
        "/v1/feeds/users/{user_id}", response_model=FeedPage, responses=_errors(422, 503), tags=["feeds"],
        summary="A user's feed, with fallbacks",
        description=(
            "The user's own feed; else the feed of the user's segment (or its coarser parents); else "
            "trending (1m, then 10m); else popular. `source` says which. Recently seen items are left out."
        ),
    )
    def user_feed(
        request: Request,
        user_id: str = Path(min_length=1, max_length=MAX_ID_LEN, examples=["u42"]),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
        cursor: str | None = Query(None, max_length=512, description="`next_cursor` of the previous page"),
    ):
        try:
            pinned, offset = decode_cursor(cursor)
        except ValueError as exc:
            return bad_cursor(str(exc))
        body = resolve_user_page(user_id, pinned, offset, limit)
        if body["source"] != "user":
            metrics.inc("feedloop_api_feed_fallbacks_total", "User feed requests served from a fallback, by source.",
                        source=body["source"])
        request.state.source = body["source"]
        return _json({"user_id": user_id, **body})

    @app.get(
        "/v1/feeds/segments/{segment}", response_model=FeedPage, responses=_errors(404, 422, 503), tags=["feeds"],
        summary="A segment's feed",
        description="The current feed of exactly this segment (e.g. `F|25-34|comedy`); 404 when none is published.",
    )
    def segment_feed(
        request: Request,
        segment: str = Path(min_length=1, max_length=MAX_ID_LEN, examples=["F|25-34|comedy"]),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
        cursor: str | None = Query(None, max_length=512, description="`next_cursor` of the previous page"),
    ):
        try:
            pinned, offset = decode_cursor(cursor)
        except ValueError as exc:
            return bad_cursor(str(exc))
        feed = online.read_feed(client, "seg", segment)
        request.state.source = "segment"
        if feed is None:
            return _json({"error": f"no feed published for segment {segment!r}", "field": "segment",
                          "segment": segment}, status_code=404)
        return _json(published_page(feed, "segment", segment, pinned, offset, limit, frozenset()))

    def ranking(key: str, source: str, window: str | None, limit: int) -> dict[str, Any]:
        rows = client.zrevrange(key, 0, limit - 1, withscores=True)
        now = _now_ms()
        return {
            "source": source, "window": window, "generated_at": _iso(now), "generated_at_ms": now,
            "items": [{"item_id": m, "score": float(s), "position": i} for i, (m, s) in enumerate(rows)],
        }

    @app.get("/v1/trending", response_model=Ranking, responses=_errors(422, 503), tags=["feeds"],
             summary="Items trending in a window")
    def trending(
        request: Request,
        window: Literal["1m", "10m"] = Query("1m", description="1m tumbling or 10m sliding window"),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    ):
        request.state.source = "trending"
        return _json(ranking(online.trending_key(window), "trending", window, limit))

    @app.get("/v1/popular", response_model=Ranking, responses=_errors(422, 503), tags=["feeds"],
             summary="All-time popular items")
    def popular(request: Request, limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)):
        request.state.source = "popular"
        return _json(ranking(online.popular_key(), "popular", None, limit))

    @app.get("/v1/users/{user_id}/stats", response_model=UserStats, responses=_errors(422, 503), tags=["users"],
             summary="A user's recent activity counters")
    def user_stats(user_id: str = Path(min_length=1, max_length=MAX_ID_LEN, examples=["u42"])):
        raw = client.hgetall(online.user_stats_key(user_id))
        stats: dict[str, float] = {}
        for name, value in raw.items():
            try:
                number = float(value)
            except ValueError:
                continue
            stats[name] = int(number) if number.is_integer() else number
        return _json({"user_id": user_id, "stats": stats})

    # -- events -----------------------------------------------------------
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="settings.api.api_key")

    @app.post(
        "/v1/events", status_code=202, response_model=Accepted, tags=["events"],
        responses=_errors(400, 401, 403, 413, 422, 503),
        summary="Collect a batch of events",
        description=(
            "A JSON list of v1 events, or `{\"events\": [...]}`. All are checked first: the first bad "
            "one answers 422 with its `index` and `field`, and nothing is written. Valid batches are "
            "written to Kafka (key = user_id) and acknowledged by the broker before the 202. A 503 "
            "means Kafka did not take the batch in time: retry it whole (event_id makes it idempotent)."
        ),
        openapi_extra={"requestBody": _EVENTS_BODY},
    )
    async def post_events(request: Request, api_key: str | None = Security(api_key_header)):
        expected = settings.api.api_key
        if not api_key:
            return _json({"error": "missing API key", "field": "X-API-Key"}, status_code=401,
                         headers={"WWW-Authenticate": "ApiKey"})
        if not expected or not hmac.compare_digest(api_key.encode(), expected.encode()):
            return _json({"error": "invalid API key", "field": "X-API-Key"}, status_code=403)

        limit = settings.api.max_body_bytes
        too_large = _json({"error": f"body larger than {limit} bytes", "field": "body"}, status_code=413)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
        try:
            payload = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            return _json({"error": "body is not valid JSON", "field": "body", "message": str(exc)}, status_code=400)

        events = payload.get("events") if isinstance(payload, dict) else payload
        if not isinstance(events, list) or not events:
            return _json({"error": "invalid request", "field": "events",
                          "message": "expected a non-empty JSON list of events, or {\"events\": [...]}"},
                         status_code=422)
        rejected = _check_events(events)
        if rejected:
            metrics.inc("feedloop_api_events_total", "Events received, by outcome.", len(events), outcome="rejected")
            first = rejected[0]
            return _json({"error": "invalid event", **first, "rejected": rejected[:MAX_REJECTIONS_LISTED],
                          "rejected_count": len(rejected)}, status_code=422)
        try:
            accepted = await run_in_threadpool(publisher.publish, events)
        except KafkaUnavailable as exc:
            metrics.inc("feedloop_api_kafka_errors_total", "Event batches Kafka did not acknowledge in time.")
            return _json({"error": "kafka unavailable", "detail": str(exc), "retry_after_s": RETRY_AFTER_S},
                         status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        metrics.inc("feedloop_api_events_total", "Events received, by outcome.", accepted, outcome="accepted")
        return _json({"accepted": accepted}, status_code=202)

    # -- operations ---------------------------------------------------------
    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    def healthz():
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["operations"], summary="Redis answers; 503 naming the dependency otherwise")
    def readyz():
        try:
            client.ping()
        except redis.exceptions.RedisError as exc:
            metrics.inc("feedloop_api_redis_errors_total", "Redis calls that failed, by kind.", kind=type(exc).__name__)
            return _json({"status": "unavailable", "error": "redis unavailable", "dependency": "redis",
                          "detail": str(exc)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        return _json({"status": "ready", "redis": "ok", "kafka": publisher.state})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text format)",
             response_class=Response)
    def metrics_text():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _check_events(events: list[Any]) -> list[dict[str, Any]]:
    """Every bad event as ``{index, field, message}``, in order; empty when all are valid."""
    now = _now_ms()
    rejected = []
    for index, event in enumerate(events):
        result = validate_dict(event, now)
        if not isinstance(result, dict):
            rejected.append({"index": index, "field": result.field, "message": result.message})
        elif len(orjson.dumps(event)) > MAX_EVENT_BYTES:
            rejected.append({"index": index, "field": "record", "message": f"larger than {MAX_EVENT_BYTES} bytes"})
    return rejected


def app_from_settings() -> FastAPI:
    """Factory for uvicorn (each worker process builds its own app and clients)."""
    return create_app(get_settings())


def main(args=None) -> int:
    """``feedloop serve``: run the API on ``bind_host:api.port`` with ``api.workers`` processes."""
    import uvicorn

    settings = get_settings()
    print(f"feed API on http://{settings.bind_host}:{settings.api.port} "
          f"({settings.api.workers} worker(s)); docs at /docs", flush=True)
    uvicorn.run(
        "serving.app:app_from_settings",
        factory=True,
        host=settings.bind_host,
        port=settings.api.port,
        workers=settings.api.workers,
        timeout_graceful_shutdown=10,
    )
    return 0
