"""Prometheus metrics of the API, in the text format, written by hand.

prometheus_client is not a dependency (it is not in requirements.lock), so with
several uvicorn workers each process reports its own numbers, and a scrape of
``/metrics`` reaches whichever worker takes the connection. Issue 14 asks for
prometheus_client's multiprocess mode once the package is locked; until then, run
one worker where the counts must be exact (the default, ``api.workers: 1``).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DURATION = "feedloop_api_request_duration_seconds"
REQUESTS = "feedloop_api_requests_total"

# Counters the routes increment: (name, help) for Metrics.inc(*COUNTER, amount, **labels).
FEED_FALLBACKS = ("feedloop_api_feed_fallbacks_total", "User feed requests served from a fallback, by source.")
REDIS_ERRORS = ("feedloop_api_redis_errors_total", "Redis calls that failed, by kind.")
EVENTS = ("feedloop_api_events_total", "Events received, by outcome.")
KAFKA_ERRORS = ("feedloop_api_kafka_errors_total", "Event batches Kafka did not acknowledge in time.")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


class Metrics:
    """Counters and one latency histogram (by endpoint and feed source)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (endpoint, source) -> per-bucket counts (not cumulative; the last is +Inf), sum
        self._latency: dict[tuple[str, str], list[float]] = {}
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._help: dict[str, str] = {REQUESTS: "Requests by endpoint and HTTP status."}
        self._collectors: list[Callable[[], list[tuple[str, str, dict[str, str], float]]]] = []

    def observe(self, endpoint: str, source: str, status: int, seconds: float) -> None:
        """One finished request."""
        with self._lock:
            row = self._latency.get((endpoint, source))
            if row is None:
                row = self._latency[(endpoint, source)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            row[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            row[-1] += seconds
            series = self._counters.setdefault(REQUESTS, {})
            key = (("endpoint", endpoint), ("status", str(status)))
            series[key] = series.get(key, 0) + 1

    def inc(self, name: str, help_text: str, amount: float = 1, **labels: str) -> None:
        with self._lock:
            self._help.setdefault(name, help_text)
            series = self._counters.setdefault(name, {})
            key = tuple(sorted(labels.items()))
            series[key] = series.get(key, 0) + amount

    def add_collector(self, collect: Callable[[], list[tuple[str, str, dict[str, str], float]]]) -> None:
        """``collect()`` gives ``(name, help, labels, value)`` counters read at render time."""
        self._collectors.append(collect)

    def render(self) -> str:
        lines = [
            f"# HELP {DURATION} Request latency by endpoint (route template) and feed source.",
            f"# TYPE {DURATION} histogram",
        ]
        with self._lock:
            latency = {k: list(v) for k, v in self._latency.items()}
            counters = {name: dict(series) for name, series in self._counters.items()}
            help_texts = dict(self._help)
        for collect in self._collectors:
            for name, help_text, labels, value in collect():
                help_texts.setdefault(name, help_text)
                counters.setdefault(name, {})[tuple(sorted(labels.items()))] = value
        for (endpoint, source), row in sorted(latency.items()):
            base = [("endpoint", endpoint), ("source", source)]
            running = 0.0
            for bound, count in zip(LATENCY_BUCKETS, row):
                running += count
                lines.append(f"{DURATION}_bucket{_labels(base + [('le', repr(bound))])} {running:g}")
            total = running + row[-2]
            lines.append(f"{DURATION}_bucket{_labels(base + [('le', '+Inf')])} {total:g}")
            lines.append(f"{DURATION}_sum{_labels(base)} {row[-1]:.6f}")
            lines.append(f"{DURATION}_count{_labels(base)} {total:g}")
        for name, series in sorted(counters.items()):
            lines.append(f"# HELP {name} {help_texts[name]}")
            lines.append(f"# TYPE {name} counter")
            for labels, value in sorted(series.items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
        return "\n".join(lines) + "\n"


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
