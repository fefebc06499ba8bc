"""Served-feed log: every feed page the API serves, to Kafka, fire-and-forget.

One JSON record per served page on ``settings.kafka.served_topic`` (key: the user id,
else the segment)::

    {"feed_id": "user:u42@1767225600000", "user_id": "u42", "segment": null,
     "source": "user", "model_version": "7", "items": ["i981", "i17"],
     "served_at": 1767225601234}

The Kafka -> Hive ``served_feeds`` sink joins these to click events on ``feed_id``
for click-through rates per model version and segment.

:meth:`ServedLog.log` never blocks and never raises: records go to librdkafka's
in-memory queue (bounded by :data:`QUEUE_MAX_MESSAGES` / :data:`QUEUE_MAX_KBYTES`),
which a background thread sends. When Kafka is down the queue fills and new records
are dropped; records that wait longer than :data:`MESSAGE_TIMEOUT_MS` are dropped
too. Every drop is counted (``feedloop_api_served_dropped_total`` by reason) and
shown in ``/metrics``; a request is never slowed or failed by it.

The counts are prometheus_client counters, incremented where each record is
acknowledged or dropped, and for queued records at each poll (every :data:`POLL_EVERY`
records, and before ``/metrics`` renders): a counter increment per served page cost
about a microsecond, ~1% of a feed request (docs/serving.md). So in multiprocess mode
``/metrics`` sums them over the workers like the API's other counters
(:mod:`serving.metrics`). The plain attributes ``queued``, ``delivered`` and ``dropped``
count the same things for this process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import orjson

from serving.kafka_producer import make_producer

QUEUE_MAX_MESSAGES = 20_000
QUEUE_MAX_KBYTES = 16_384
MESSAGE_TIMEOUT_MS = 30_000
LINGER_MS = 20
FLUSH_TIMEOUT_S = 2.0
POLL_EVERY = 64  # records between polls for delivery reports (each poll costs a call into librdkafka)

QUEUED = ("feedloop_api_served_queued_total", "Served-feed records queued for Kafka.")
DELIVERED = ("feedloop_api_served_delivered_total", "Served-feed records Kafka acknowledged.")
DROPPED = ("feedloop_api_served_dropped_total", "Served-feed records dropped, by reason.")

log = logging.getLogger("feedloop.served")


class _Uncounted:
    """Stands in for a counter until :meth:`ServedLog.count_to` is called."""

    def inc(self, amount: float = 1) -> None:
        pass

    def labels(self, *values: str) -> "_Uncounted":
        return self


class ServedLog:
    """A non-blocking, bounded producer of served-feed records (created on first use)."""

    def __init__(self, bootstrap: str, topic: str, queue_max_messages: int = QUEUE_MAX_MESSAGES,
                 message_timeout_ms: int = MESSAGE_TIMEOUT_MS) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.queue_max_messages = queue_max_messages
        self.message_timeout_ms = message_timeout_ms
        self._producer = None
        self._lock = threading.Lock()
        self._since_poll = 0
        self.queued = 0
        self._queued_counted = 0  # of ``queued``, what the counter has been given
        self.delivered = 0
        self.dropped: dict[str, int] = {}
        self.state = "unused"
        self._queued_total = self._delivered_total = self._dropped_total = _Uncounted()

    def count_to(self, metrics) -> None:
        """Count queued, delivered and dropped records in ``metrics`` (a :class:`serving.metrics.Metrics`)."""
        self._queued_total = metrics.counter(*QUEUED)
        self._delivered_total = metrics.counter(*DELIVERED)
        self._dropped_total = metrics.counter(*DROPPED, ("reason",))

    @classmethod
    def from_settings(cls, settings) -> "ServedLog":
        return cls(settings.kafka.bootstrap, settings.kafka.served_topic)

    def _make_producer(self):
        return make_producer(self.bootstrap, "feedloop-api-served", self._on_error, **{
            "linger.ms": LINGER_MS,
            "queue.buffering.max.messages": self.queue_max_messages,
            "queue.buffering.max.kbytes": QUEUE_MAX_KBYTES,
            "message.timeout.ms": self.message_timeout_ms,
        })

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        self._dropped_total.labels(reason).inc(count)

    def _on_error(self, error) -> None:
        if self.state != "unavailable":
            log.warning("served-feed log: Kafka at %s unavailable: %s", self.bootstrap, error)
        self.state = "unavailable"

    def _on_delivery(self, error, message) -> None:
        if error is None:
            self.delivered += 1
            self._delivered_total.inc()
            if self.state != "ok":
                self.state = "ok"
        else:
            self._drop("delivery_failed")

    def log(self, record: dict[str, Any], key: str | None) -> None:
        """Queue one record; drops (and counts) it rather than wait or fail."""
        producer = self._producer
        try:
            if producer is None:
                with self._lock:
                    if self._producer is None:
                        self._producer = self._make_producer()
                    producer = self._producer
            producer.produce(self.topic, orjson.dumps(record), key.encode("utf-8") if key else None,
                             on_delivery=self._on_delivery)
            self.queued += 1
        except BufferError:
            self._drop("queue_full")
        except Exception:  # a bad config or a closed producer must not fail the request
            self._drop("error")
            if self.dropped["error"] == 1:  # once: /metrics counts the rest
                log.exception("served-feed log: cannot queue a record")
        self._since_poll += 1
        if self._since_poll >= POLL_EVERY:
            self.poll()

    def poll(self) -> None:
        """Count the records queued since the last poll and serve pending delivery reports
        (their counts); called every :data:`POLL_EVERY` records and before ``/metrics`` renders."""
        self._since_poll = 0
        if self.queued > self._queued_counted:
            self._queued_total.inc(self.queued - self._queued_counted)
            self._queued_counted = self.queued
        if self._producer is not None:
            self._producer.poll(0)  # never waits

    def close(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Send what is queued, waiting at most ``timeout_s``; what is left is counted as dropped."""
        self.poll()
        producer, self._producer = self._producer, None
        if producer is None:
            return
        left = producer.flush(timeout_s)
        if left:
            self._drop("shutdown", left)


def served_record(body: dict[str, Any], user_id: str | None, now_ms: int) -> dict[str, Any]:
    """The record for one served feed page (``body`` is the API's FeedPage)."""
    return {
        "feed_id": body["feed_id"],
        "user_id": user_id,
        "segment": body["segment"],
        "source": body["source"],
        "model_version": body["model_version"],
        "items": [row["item_id"] for row in body["items"]],
        "served_at": now_ms,
    }
