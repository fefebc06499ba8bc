"""Prometheus metrics of the API through prometheus_client, summed over uvicorn workers.

**Multiprocess mode.** ``feedloop serve`` (:func:`serving.app.main`) calls
:func:`use_multiproc_dir` before uvicorn starts: it empties (or creates)
``<settings.var>/prometheus/<api.port>`` and sets ``PROMETHEUS_MULTIPROC_DIR`` to it, so
every worker inherits the variable. Each worker then writes its counts to its own
memory-mapped files there (``counter_<pid>.db``, ``histogram_<pid>.db``), and ``/metrics``,
whichever worker answers it, sums all of them with ``MultiProcessCollector``. Files of
workers that died stay and keep counting in the sums, as counters should; there are no
gauges, so nothing needs ``mark_process_dead``.

prometheus_client picks its value class (in-process float or memory-mapped file) when
``prometheus_client.values`` is first imported (0.26: ``ValueClass = get_value_class()``),
and ``serving.app`` has imported it by the time ``main`` sets the variable. With
``api.workers: 1`` uvicorn builds the app in that same process, so :func:`_sync_value_class`
re-chooses the class whenever a :class:`Metrics` is built (no metric exists before); with
more workers uvicorn spawns fresh interpreters that read the variable at import.

**Without ``main``** (tests calling ``create_app(settings)``, ``bench/serving.py`` running
``uvicorn --factory serving.app:app_from_settings``): no ``PROMETHEUS_MULTIPROC_DIR``, so
each :class:`Metrics` uses prometheus_client's ordinary in-process values in a registry of
its own (not the global ``REGISTRY``: tests build many apps in one process, and each must
show its own counts, as before). A private directory was the other choice; it was not
taken because nothing would empty it after a crash, nor could one process tell which
files are its own, and a single process gains nothing from it. So a server started that
way with several workers reports per worker, as before; use ``feedloop serve`` (or set
the variable to an empty directory) for summed numbers.

**Cost** (``python -m bench.metrics_cost``; docs/serving.md, "Metrics"). Per request the
middleware does one histogram observation and one counter increment, through label
children cached by ``(endpoint, source, status)``; the feed routes add one served-record
counter increment. Each increment of a file-backed value takes a lock, calls
``os.getpid()`` and writes 16 bytes to the mapped file: ``Metrics.observe`` costs 2.82 µs
in multiprocess mode, 1.43 µs in-process, against 0.88 µs for the hand-written renderer
before (4 interleaved rounds, medians); a served-record count 0.97 µs (0.33 in-process).
A whole user-feed request through the ASGI app (Redis canned, 10 interleaved rounds,
medians, load average 16-26 on 2 cores): 59.2 µs in multiprocess mode, 55.6 µs
in-process, 54.5 µs before; the rounds spread about ±10 µs, so the whole-app figure
only bounds the ~3 µs the parts add up to.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DURATION = ("feedloop_api_request_duration_seconds", "Request latency by endpoint (route template) and feed source.")
REQUESTS = ("feedloop_api_requests_total", "Requests by endpoint and HTTP status.")

# Counters the routes increment: (name, help) for Metrics.inc(*COUNTER, amount, **labels).
FEED_FALLBACKS = ("feedloop_api_feed_fallbacks_total", "User feed requests served from a fallback, by source.")
REDIS_ERRORS = ("feedloop_api_redis_errors_total", "Redis calls that failed, by kind.")
EVENTS = ("feedloop_api_events_total", "Events received, by outcome.")
KAFKA_ERRORS = ("feedloop_api_kafka_errors_total", "Event batches Kafka did not acknowledge in time.")


def multiproc_dir(settings) -> Path:
    """Where the workers of the API on ``settings.api.port`` keep their metric files."""
    return Path(settings.var) / "prometheus" / str(settings.api.port)


def prepare_multiproc_dir(path: Path | str) -> Path:
    """Empty ``path`` (files of an earlier run would be summed in) or create it."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.mkdir(parents=True)
    return path


def use_multiproc_dir(settings) -> Path:
    """For the serving entry point, before uvicorn starts: a fresh multiprocess directory,
    named in ``PROMETHEUS_MULTIPROC_DIR`` for this process and the workers it starts."""
    path = prepare_multiproc_dir(multiproc_dir(settings))
    os.environ[MULTIPROC_ENV] = str(path)
    _sync_value_class()
    return path


def _sync_value_class() -> bool:
    """Make prometheus_client's value class follow ``PROMETHEUS_MULTIPROC_DIR`` now (see the
    module docstring); only metrics created afterwards are affected. True in multiprocess mode."""
    multiprocess = bool(os.environ.get(MULTIPROC_ENV))
    if getattr(_values.ValueClass, "_multiprocess", False) != multiprocess:
        _values.ValueClass = _values.get_value_class()
    return multiprocess


class Metrics:
    """The API's counters and its latency histogram (by endpoint and feed source)."""

    def __init__(self) -> None:
        self.multiprocess = _sync_value_class()
        self.registry = CollectorRegistry()  # what /metrics renders
        if self.multiprocess:
            MultiProcessCollector(self.registry, os.environ[MULTIPROC_ENV])
            self._own = None  # the values live in the files; the collector reads them all
        else:
            prometheus_client.disable_created_metrics()  # render the same series as multiprocess mode
            self._own = self.registry
        self._counters: dict[str, tuple[tuple[str, ...], Counter]] = {}
        self._children: dict[tuple, Counter] = {}
        self._duration = Histogram(*DURATION, ("endpoint", "source"), buckets=LATENCY_BUCKETS, registry=self._own)
        self._requests = self.counter(*REQUESTS, ("endpoint", "status"))
        self._by_request: dict[tuple[str, str, int], tuple[Histogram, Counter]] = {}

    def observe(self, endpoint: str, source: str, status: int, seconds: float) -> None:
        """One finished request."""
        pair = self._by_request.get((endpoint, source, status))
        if pair is None:
            pair = self._by_request[(endpoint, source, status)] = (
                self._duration.labels(endpoint, source), self._requests.labels(endpoint, str(status)))
        pair[0].observe(seconds)
        pair[1].inc()

    def counter(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> Counter:
        """The counter ``name`` (created on first use); the same label names every time."""
        known = self._counters.get(name)
        if known is None:
            known = self._counters[name] = (labelnames, Counter(name, help_text, labelnames, registry=self._own))
        elif known[0] != labelnames:
            raise ValueError(f"{name} has labels {known[0]}, not {labelnames}")
        return known[1]

    def inc(self, name: str, help_text: str, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` to the counter ``name`` with these labels (declared on first use)."""
        key = (name, *labels.items())
        child = self._children.get(key)
        if child is None:
            counter = self.counter(name, help_text, tuple(sorted(labels)))
            child = self._children[key] = counter.labels(**labels) if labels else counter
        child.inc(amount)

    def render(self) -> bytes:
        """The text format (:data:`CONTENT_TYPE`), summed over the workers in multiprocess mode."""
        return generate_latest(self.registry)


def label_source(request, source: str) -> None:
    """Label this request's latency with the feed ``source`` served (read by :class:`TimingMiddleware`).

    Written straight into the scope's state dict: ``request.state.source = ...`` builds a
    Starlette ``State`` per request first, 1.7 µs of a feed request's ~110 µs of CPU
    (cProfile, ``python -m bench.serving_ab``)."""
    request.scope.setdefault("state", {})["source"] = source


class TimingMiddleware:
    """Times every HTTP request; labels it by route template and the feed source served."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            source = (scope.get("state") or {}).get("source", "none")
            self.metrics.observe(endpoint, source, status, time.perf_counter() - started)
