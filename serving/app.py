"""The feed API: FastAPI over Redis, events to Kafka. Never imports TensorFlow or Spark.

:func:`create_app` builds the clients once per worker process, keeps them on
``app.state.services`` (:mod:`serving.state`) and includes one router per resource:

* ``serving/routes/feeds.py``: ``/v1/feeds/users/{user_id}``, ``/v1/feeds/segments/{segment}``,
  ``/v1/trending``, ``/v1/popular``;
* ``serving/routes/users.py``: ``/v1/users/{user_id}/stats``;
* ``serving/routes/items.py``: ``/v1/items`` (catalogue search, :mod:`serving.search_index`);
* ``serving/routes/events.py``: ``POST /v1/events`` (to Kafka, behind the API key);
* ``serving/routes/health.py``: ``/healthz``, ``/readyz``;
* ``serving/routes/metrics.py``: ``/metrics`` (:mod:`serving.metrics`).

Errors are answered by :mod:`serving.errors`: a Redis or Kafka failure answers 503
within the configured timeouts, and a circuit breaker (:mod:`serving.breaker`) answers
at once while the dependency is down; the clients reconnect by themselves.

Speed (``python -m bench.serving``, docs/serving.md): handlers are ``async`` and read
Redis through :mod:`serving.resp` (no thread hop, round trips shared by concurrent
requests); a user's feed is one Redis round trip in the common case; responses are
rendered by orjson. The two feed routes are also served by plain Starlette routes
placed first (:func:`serve_plain`), which skip FastAPI's per-request dependency machinery.
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Route

import feedloop
from feedloop.settings import get_settings
from serving import errors
from serving.catalogues import Catalogues
from serving.errors import ORJSONResponse
from serving.kafka_producer import EventPublisher
from serving.metrics import Metrics, TimingMiddleware, use_multiproc_dir
from serving.pages import MAX_OFFSET, decode_cursor, encode_cursor, take_page
from serving.resp import AsyncRedis
from serving.routes import events, feeds, health, items, metrics, users
from serving.served_log import ServedLog
from serving.state import Services
from serving.store import FeedStore

__all__ = ["MAX_OFFSET", "create_app", "decode_cursor", "encode_cursor", "take_page", "app_from_settings", "main"]

ROUTERS = (feeds.router, users.router, items.router, events.router, health.router, metrics.router)
DESCRIPTION = (
    "Personalised feeds from Redis, with fallbacks (user → segment → trending → popular), "
    "catalogue search, and an event collector that writes to Kafka. "
    "Errors are JSON: `error`, and `field` for bad input."
)


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Close the worker's clients at shutdown (queued Kafka records get a bounded flush)."""
    yield
    svc: Services = app.state.services
    await svc.store.close()
    if svc.search_http is not None:
        await svc.search_http.aclose()
    await run_in_threadpool(svc.publisher.close)
    await run_in_threadpool(svc.served.close)


def _redis(settings):
    """The API's Redis client: :mod:`serving.resp`, or on a Redis Cluster :mod:`serving.resp_cluster`."""
    if settings.redis.cluster:
        from serving.resp_cluster import ClusterRedis

        return ClusterRedis.from_settings(settings)
    return AsyncRedis.from_settings(settings)


def create_app(settings=None, *, served_log: ServedLog | None = None, redis_client=None) -> FastAPI:
    """The feed API for ``settings`` (default: the process settings); ``redis_client``
    replaces the :class:`AsyncRedis` of the settings (bench/redis_py_client.py, a benchmark
    variant), ``served_log`` the served-feed log of the settings (tests)."""
    settings = settings or get_settings()
    served = served_log or ServedLog.from_settings(settings)
    svc = Services(
        settings=settings,
        store=FeedStore(redis_client or _redis(settings)),
        publisher=EventPublisher.from_settings(settings),
        served=served,
        metrics=Metrics(),
        catalogues=Catalogues(freeze_gc=True),
        search_http=(httpx.AsyncClient(base_url=settings.search.endpoint, timeout=settings.search.timeout_s)
                     if settings.search.backend == "opensearch" else None),
    )
    served.count_to(svc.metrics)

    app = FastAPI(title="feedloop feed API", version=feedloop.__version__, description=DESCRIPTION,
                  default_response_class=ORJSONResponse, lifespan=lifespan)
    app.state.services = svc
    app.add_middleware(TimingMiddleware, metrics=svc.metrics)
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    serve_plain(app, feeds.HOT_PATHS)
    return app


class _PlainRoute(Route):
    """A Starlette route that, like FastAPI's, records itself in the scope (for the metrics label)."""

    def matches(self, scope):
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def serve_plain(app: FastAPI, paths: tuple[str, ...]) -> None:
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
    """``feedloop serve``: run the API on ``bind_host:api.port`` with ``api.workers`` processes,
    their metrics summed at ``/metrics`` through ``<var>/prometheus/<port>`` (:mod:`serving.metrics`)."""
    import uvicorn

    settings = get_settings()
    use_multiproc_dir(settings)  # before any worker starts: they inherit PROMETHEUS_MULTIPROC_DIR
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
