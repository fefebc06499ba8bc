"""The feed API: FastAPI over Redis, events to Kafka. Never imports TensorFlow or Spark.

* ``GET /v1/feeds/users/{user_id}``: the user's own feed, else the feed of the user's
  segment walking :func:`feature_store.segments.fallbacks`, else trending (1m, then
  10m), else popular; ``source`` says which. Items the user saw recently are left out.
  Pagination is stable (see :mod:`serving.pages`).
* ``GET /v1/items``: catalogue search by category, price range and text.
* Every feed page served (user and segment endpoints) is logged to Kafka for
  attribution, fire-and-forget (:mod:`serving.served_log`).
* A Redis or Kafka failure answers 503 within the configured timeouts; the clients
  reconnect by themselves when the service is back.

Speed (``python -m bench.serving``, docs/serving.md): handlers are ``async`` and read
Redis through :mod:`serving.resp` (no thread hop, round trips shared by concurrent
requests); a user's feed is one Redis round trip in the common case; responses are
rendered by orjson. The two feed endpoints read their query by hand instead of through
FastAPI's parameter injection, which cost a third of the framework's requests/s; their
parameters are documented in OpenAPI all the same, and bad input gets the same 422.
The two feed routes are also served by plain Starlette routes placed first
(:func:`_serve_plain`), which skip FastAPI's per-request dependency machinery.
"""

from __future__ import annotations

import gc
import hmac
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import unquote_plus

import orjson
import redis
from fastapi import FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from fastapi.routing import APIRoute

import feedloop
from feature_store import online
from feature_store.segments import ANY, fallbacks
from feedloop.events import MAX_EVENT_BYTES, validate_dict
from feedloop.settings import get_settings
from serving import items as catalogue_search
from serving.kafka_producer import EventPublisher, KafkaUnavailable
from serving.metrics import Metrics, TimingMiddleware
from serving.pages import (
    MAX_OFFSET,
    decode_cursor,
    encode_cursor,
    iso,
    live_page,
    now_ms,
    published_page,
    take_page,
    usable,
)
from serving.resp import AsyncRedis
from serving.schemas import (
    DEFAULT_LIMIT,
    EVENTS_BODY,
    MAX_CURSOR_LEN,
    MAX_ID_LEN,
    MAX_LIMIT,
    SEGMENT_FEED_PARAMS,
    USER_FEED_PARAMS,
    Accepted,
    FeedPage,
    ItemPage,
    Ranking,
    UserStats,
    errors,
)
from serving.served_log import ServedLog, served_record
from serving.store import FeedStore

__all__ = ["MAX_OFFSET", "create_app", "decode_cursor", "encode_cursor", "take_page", "app_from_settings", "main"]

TRENDING_WINDOWS = ("1m", "10m")
UNKNOWN_SEGMENT = "|".join((ANY, ANY, ANY))
RETRY_AFTER_S = 1
MAX_REJECTIONS_LISTED = 20
MAX_ITEMS_LIMIT = 100
JSON = "application/json"
HOT_PATHS = ("/v1/feeds/users/{user_id}", "/v1/feeds/segments/{segment}")


class ORJSONResponse(JSONResponse):
    """JSON rendered by orjson (FastAPI's own ORJSONResponse is deprecated)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, headers=headers, media_type=JSON)


# -- input errors ------------------------------------------------------------------


class BadInput(Exception):
    """Bad query or path values: a 422 naming the first bad field, every error listed."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(errors[0]["message"])
        self.errors = errors

    def response(self) -> Response:
        first = self.errors[0]
        return _json({"error": "invalid request", "field": first["field"], "message": first["message"],
                      "errors": self.errors}, status_code=422)


def _validation_body(exc: RequestValidationError) -> BadInput:
    found = []
    for e in exc.errors():
        loc = e.get("loc") or ("request",)
        found.append({"field": str(loc[-1]), "location": str(loc[0]), "message": e.get("msg", "")})
    return BadInput(found or [{"field": "request", "location": "request", "message": "invalid request"}])


def _query(raw: bytes) -> dict[str, str]:
    """The query string as Starlette's ``request.query_params`` reads it (the last value of a
    repeated name wins), at a tenth of its cost."""
    out: dict[str, str] = {}
    if raw:
        for part in raw.decode("latin-1").split("&"):
            name, _, value = part.partition("=")
            if "%" in part or "+" in part:
                name, value = unquote_plus(name), unquote_plus(value)
            if name:
                out[name] = value
    return out


def _feed_query(request: Request, id_name: str) -> tuple[str, int, str | None, int]:
    """``(id, limit, pinned feed, offset)`` of a feed request; the same checks and messages
    as FastAPI's declared parameters (see schemas.USER_FEED_PARAMS)."""
    found = []
    ident = request.path_params[id_name]
    if len(ident) > MAX_ID_LEN:
        found.append({"field": id_name, "location": "path",
                      "message": f"String should have at most {MAX_ID_LEN} characters"})
    query = _query(request.scope["query_string"])
    limit, raw = DEFAULT_LIMIT, query.get("limit")
    if raw is not None:
        digits = raw.strip()
        if not (digits.isascii() and digits.lstrip("+-").isdigit() and len(digits) <= 20):
            found.append({"field": "limit", "location": "query",
                          "message": "Input should be a valid integer, unable to parse string as an integer"})
        else:
            limit = int(digits)
            if not 1 <= limit <= MAX_LIMIT:
                bound = "greater than or equal to 1" if limit < 1 else f"less than or equal to {MAX_LIMIT}"
                found.append({"field": "limit", "location": "query", "message": f"Input should be {bound}"})
    cursor = query.get("cursor")
    pinned, offset = None, 0
    if cursor is not None and len(cursor) > MAX_CURSOR_LEN:
        found.append({"field": "cursor", "location": "query",
                      "message": f"String should have at most {MAX_CURSOR_LEN} characters"})
    elif cursor is not None:
        try:
            pinned, offset = decode_cursor(cursor)
        except ValueError as exc:
            found.append({"field": "cursor", "location": "query", "message": str(exc)})
    if found:
        raise BadInput(found)
    return ident, limit, pinned, offset


def _check_events(events: list[Any]) -> list[dict[str, Any]]:
    """Every bad event as ``{index, field, message}``, in order; empty when all are valid."""
    now = now_ms()
    rejected = []
    for index, event in enumerate(events):
        result = validate_dict(event, now)
        if not isinstance(result, dict):
            rejected.append({"index": index, "field": result.field, "message": result.message})
        elif len(orjson.dumps(event)) > MAX_EVENT_BYTES:
            rejected.append({"index": index, "field": "record", "message": f"larger than {MAX_EVENT_BYTES} bytes"})
    return rejected


# -- the app ---------------------------------------------------------------------


def create_app(settings=None, *, served_log: ServedLog | None = None, redis_client=None) -> FastAPI:
    """The feed API for ``settings`` (default: the process settings); ``redis_client``
    replaces the :class:`AsyncRedis` of the settings (bench/redis_py_client.py, a benchmark variant)."""
    settings = settings or get_settings()
    metrics = Metrics()
    store = FeedStore(redis_client or AsyncRedis.from_settings(settings))
    publisher = EventPublisher.from_settings(settings)
    served = served_log or ServedLog.from_settings(settings)
    metrics.add_collector(served.counters)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await store.close()
        await run_in_threadpool(publisher.close)
        await run_in_threadpool(served.close)

    app = FastAPI(
        title="feedloop feed API",
        version=feedloop.__version__,
        description=(
            "Personalised feeds from Redis, with fallbacks (user → segment → trending → popular), "
            "catalogue search, and an event collector that writes to Kafka. "
            "Errors are JSON: `error`, and `field` for bad input."
        ),
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.publisher = publisher
    app.state.served = served
    app.state.metrics = metrics
    app.add_middleware(TimingMiddleware, metrics=metrics)

    # -- errors ---------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_body(exc).response()

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

    def bad_cursor(message: str, field: str = "cursor") -> Response:
        return BadInput([{"field": field, "location": "query", "message": message}]).response()

    def log_served(body: dict[str, Any], user_id: str | None) -> None:
        if body["items"]:
            served.log(served_record(body, user_id, now_ms()), user_id or body["segment"] or body["feed_id"])

    # -- feeds ------------------------------------------------------------
    async def live_candidate(source: str, window: str | None, key: str, size: int, rows: list, pinned: str | None,
                             offset: int, limit: int, exclude: frozenset[str]) -> dict[str, Any]:
        reset = pinned is not None and pinned != f"{source}:{window or 'all'}"
        if reset and offset:
            rows = await store.zrevrange(key, 0, limit + len(exclude))
        return live_page(source, window, rows, size, 0 if reset else offset, reset, limit, exclude)

    async def resolve_user_page(user_id: str, pinned: str | None, offset: int, limit: int) -> dict[str, Any]:
        """The first source, in fallback order, that has something for this user.

        A feed whose unseen items are all gone is skipped on a fresh start, but a cursor
        into it runs to its end rather than jumping to another feed.
        """
        segment, exclude, own = await store.user_view(user_id)
        first: dict[str, Any] | None = None
        if own is not None:
            body = published_page(own, "user", user_id, pinned, offset, limit, exclude)
            if usable(body, pinned, offset):
                return body
            first = body

        chain = fallbacks(segment or UNKNOWN_SEGMENT)
        for ident, feed in zip(chain, await store.feeds([("seg", s) for s in chain])):
            if feed is not None:
                body = published_page(feed, "segment", ident, pinned, offset, limit, exclude)
                if usable(body, pinned, offset):
                    return body
                first = first or body

        live = [("trending", w, online.trending_key(w)) for w in TRENDING_WINDOWS]
        live.append(("popular", None, online.popular_key()))
        pages = await store.zset_pages([key for _, _, key in live], offset, limit + len(exclude))
        for (source, window, key), (size, rows) in zip(live, pages):
            if size:
                body = await live_candidate(source, window, key, size, rows, pinned, offset, limit, exclude)
                if usable(body, pinned, offset):
                    return body
                first = first or body
        # Nothing published at all yet: an empty popular page says so.
        return first or live_page("popular", None, [], 0, 0, False, limit, exclude)

    @app.get(
        "/v1/feeds/users/{user_id}", response_model=FeedPage, responses=errors(422, 503), tags=["feeds"],
        summary="A user's feed, with fallbacks",
        description=(
            "The user's own feed; else the feed of the user's segment (or its coarser parents); else "
            "trending (1m, then 10m); else popular. `source` says which. Recently seen items are left out."
        ),
        openapi_extra={"parameters": USER_FEED_PARAMS},
    )
    async def user_feed(request: Request):
        try:
            user_id, limit, pinned, offset = _feed_query(request, "user_id")
        except BadInput as exc:
            return exc.response()
        body = await resolve_user_page(user_id, pinned, offset, limit)
        if body["source"] != "user":
            metrics.inc("feedloop_api_feed_fallbacks_total", "User feed requests served from a fallback, by source.",
                        source=body["source"])
        request.state.source = body["source"]
        log_served(body, user_id)
        return _json({"user_id": user_id, **body})

    @app.get(
        "/v1/feeds/segments/{segment}", response_model=FeedPage, responses=errors(404, 422, 503), tags=["feeds"],
        summary="A segment's feed",
        description="The current feed of exactly this segment (e.g. `F|25-34|comedy`); 404 when none is published.",
        openapi_extra={"parameters": SEGMENT_FEED_PARAMS},
    )
    async def segment_feed(request: Request):
        try:
            segment, limit, pinned, offset = _feed_query(request, "segment")
        except BadInput as exc:
            return exc.response()
        (feed,) = await store.feeds([("seg", segment)])
        request.state.source = "segment"
        if feed is None:
            return _json({"error": f"no feed published for segment {segment!r}", "field": "segment",
                          "segment": segment}, status_code=404)
        body = published_page(feed, "segment", segment, pinned, offset, limit, frozenset())
        log_served(body, None)
        return _json(body)

    async def ranking(key: str, source: str, window: str | None, limit: int) -> Response:
        rows = await store.zrevrange(key, 0, limit)
        now = now_ms()
        return _json({
            "source": source, "window": window, "generated_at": iso(now), "generated_at_ms": now,
            "items": [{"item_id": m, "score": s, "position": i} for i, (m, s) in enumerate(rows)],
        })

    @app.get("/v1/trending", response_model=Ranking, responses=errors(422, 503), tags=["feeds"],
             summary="Items trending in a window")
    async def trending(
        request: Request,
        window: Literal["1m", "10m"] = Query("1m", description="1m tumbling or 10m sliding window"),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    ):
        request.state.source = "trending"
        return await ranking(online.trending_key(window), "trending", window, limit)

    @app.get("/v1/popular", response_model=Ranking, responses=errors(422, 503), tags=["feeds"],
             summary="All-time popular items")
    async def popular(request: Request, limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)):
        request.state.source = "popular"
        return await ranking(online.popular_key(), "popular", None, limit)

    @app.get("/v1/users/{user_id}/stats", response_model=UserStats, responses=errors(422, 503), tags=["users"],
             summary="A user's recent activity counters")
    async def user_stats(user_id: str = Path(min_length=1, max_length=MAX_ID_LEN, examples=["u42"])):
        raw = await store.execute("HGETALL", online.user_stats_key(user_id))
        stats: dict[str, float] = {}
        for name, value in zip(raw[::2], raw[1::2]):
            try:
                number = float(value)
            except ValueError:
                continue
            stats[name] = int(number) if number.is_integer() else number
        return _json({"user_id": user_id, "stats": stats})

    # -- catalogue --------------------------------------------------------
    @app.get(
        "/v1/items", response_model=ItemPage, responses=errors(422, 503), tags=["items"],
        summary="Search the catalogue",
        description=(
            "Items by `category`, price range (`min_price` ≤ price ≤ `max_price`) and text: `q` matches "
            "items whose title or keywords contain each of its words (any case). Cheapest first. With `q`, "
            "at most 2000 candidates are read per request, so a page may be short and still have a "
            "`next_cursor`."
        ),
    )
    async def search_items(
        category: str | None = Query(None, min_length=1, max_length=64, examples=["comedy"]),
        min_price: float | None = Query(None, ge=0, allow_inf_nan=False),
        max_price: float | None = Query(None, ge=0, allow_inf_nan=False),
        q: str | None = Query(None, min_length=1, max_length=100, description="words to find", examples=["epic"]),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_ITEMS_LIMIT),
        cursor: str | None = Query(None, max_length=MAX_CURSOR_LEN, description="`next_cursor` of the previous page"),
    ):
        if min_price is not None and max_price is not None and min_price > max_price:
            return bad_cursor(f"must be at least min_price ({min_price:g})", field="max_price")
        try:
            pinned, offset = decode_cursor(cursor)
        except ValueError as exc:
            return bad_cursor(str(exc))
        if pinned is not None and not pinned.startswith("items@"):
            return bad_cursor("not a cursor of /v1/items")
        page = await catalogue_search.search(
            store, category=category, min_price=min_price, max_price=max_price, text=q, limit=limit,
            offset=offset, pinned=pinned[len("items@"):] if pinned else None,
        )
        nxt = encode_cursor(f"items@{page.version}", page.next_offset) if page.next_offset is not None else None
        return _json({"items": page.items, "catalogue_version": page.version, "next_cursor": nxt,
                      "cursor_reset": page.reset, "scanned": page.scanned})

    # -- events -----------------------------------------------------------
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="settings.api.api_key")

    @app.post(
        "/v1/events", status_code=202, response_model=Accepted, tags=["events"],
        responses=errors(400, 401, 403, 413, 422, 503),
        summary="Collect a batch of events",
        description=(
            "A JSON list of v1 events, or `{\"events\": [...]}`. All are checked first: the first bad "
            "one answers 422 with its `index` and `field`, and nothing is written. Valid batches are "
            "written to Kafka (key = user_id) and acknowledged by the broker before the 202. A 503 "
            "means Kafka did not take the batch in time: retry it whole (event_id makes it idempotent)."
        ),
        openapi_extra={"requestBody": EVENTS_BODY},
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
    async def healthz():
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["operations"], summary="Redis answers; 503 naming the dependency otherwise")
    async def readyz():
        try:
            await store.execute("PING")
        except redis.exceptions.RedisError as exc:
            metrics.inc("feedloop_api_redis_errors_total", "Redis calls that failed, by kind.", kind=type(exc).__name__)
            return _json({"status": "unavailable", "error": "redis unavailable", "dependency": "redis",
                          "detail": str(exc)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        return _json({"status": "ready", "redis": "ok", "kafka": publisher.state, "served_log": served.state})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text format)",
             response_class=Response)
    async def metrics_text():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    _serve_plain(app, HOT_PATHS)
    return app


class _PlainRoute(Route):
    """A Starlette route that, like FastAPI's, records itself in the scope (for the metrics label)."""

    def matches(self, scope):
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def _serve_plain(app: FastAPI, paths: tuple[str, ...]) -> None:
    """Serve the GET routes at ``paths`` through plain Starlette routes placed first.

    Their handlers take the ``Request`` and read the query themselves, so FastAPI's
    per-request machinery (dependency solving, an exit stack per request) buys them
    nothing; skipping it is worth about a tenth of the feed endpoint's CPU. The FastAPI
    routes stay registered, and only they appear in the OpenAPI schema and ``/docs``.
    """
    plain = [_PlainRoute(r.path, r.endpoint, methods=["GET"], include_in_schema=False)
             for r in app.router.routes if isinstance(r, APIRoute) and r.path in paths]
    app.router.routes[:0] = plain


# Each feed page allocates a few dozen small containers; with many requests in flight the
# default collector (every 700 net allocations) scans them over and over. The objects built
# at start are frozen out of the scans, and young collections run less often.
GC_THRESHOLDS = (10_000, 50, 100)


def app_from_settings() -> FastAPI:
    """Factory for uvicorn (each worker process builds its own app and clients)."""
    app = create_app(get_settings())
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return app


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
        loop="uvloop",
        http="httptools",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0
