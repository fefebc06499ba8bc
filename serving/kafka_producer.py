"""Kafka from the API, through one client library: confluent-kafka (librdkafka).

Two producers use it, both made by :func:`make_producer` (idempotent, ``acks=all``):

* :class:`EventPublisher` (``POST /v1/events``): one producer per process, created on
  first use. Every call either returns once the broker acknowledged every record or
  raises :class:`KafkaUnavailable` within about ``kafka.request_timeout_ms``: the API
  answers 503 then, never hangs. A retried batch is safe: the Hive sink keeps one row
  per ``event_id``. Keys are partitioned by murmur2 like the Java client (and the
  simulator), so a user's events land on one partition whoever sent them.
* :class:`serving.served_log.ServedLog`: served-feed records, fire-and-forget.

Until issue 14 the event publisher used kafka-python; librdkafka was already loaded for
the served-feed log (its non-blocking, bounded queue costs ~2 µs a record on the hot
path), so the API now has one Kafka library, one set of settings and one log format.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from serving.breaker import Breaker

# After a failed batch, fail at once for this long instead of making every request
# wait out its own timeout (and pile up worker threads) while Kafka is down.
COOLDOWN_S = 1.0
RECONNECT_BACKOFF_MAX_MS = 1000
# How long one wait for delivery reports lasts: another thread's poll may serve this
# batch's reports, so the wait is short and the batch's own state is checked after it.
POLL_S = 0.01

log = logging.getLogger("feedloop.kafka")


class KafkaUnavailable(RuntimeError):
    """The broker could not take the batch in time; the message says why."""


def make_producer(bootstrap: str, client_id: str, on_error: Callable[[Any], None], **config: Any):
    """A librdkafka producer, idempotent with ``acks=all``; ``config`` adds or overrides settings."""
    # Imported here so that the API starts fast and serves feeds before Kafka is needed.
    from confluent_kafka import Producer

    return Producer({
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
        "log_level": 2,  # connection errors come through on_error instead
        "error_cb": on_error,
        **config,
    })


class _Batch:
    """The delivery reports of one batch: ``done`` once every record is acknowledged or failed."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.error = None
        self.done = threading.Event()
        self._lock = threading.Lock()  # reports may be served by any thread that polls

    def on_delivery(self, error, message) -> None:
        with self._lock:
            if error is not None and self.error is None:
                self.error = error
            self.left -= 1
            if self.left == 0:
                self.done.set()


class EventPublisher:
    """Sends event dicts to one topic, keyed by ``user_id``, and waits for the acks."""

    def __init__(self, bootstrap: str, topic: str, timeout_ms: int, cooldown_s: float = COOLDOWN_S) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_ms / 1000
        self.breaker = Breaker(cooldown_s)
        self._producer = None
        self._lock = threading.Lock()
        self._state = "unused"
        self._error_logged = False

    @classmethod
    def from_settings(cls, settings) -> "EventPublisher":
        kafka = settings.kafka
        return cls(kafka.bootstrap, kafka.events_topic, kafka.request_timeout_ms)

    @property
    def state(self) -> str:
        """``unused`` until the first batch, then ``ok`` or ``unavailable`` after each one."""
        return self._state

    def _on_error(self, error) -> None:
        if not self._error_logged:  # once until the next acknowledged batch
            self._error_logged = True
            log.warning("event publisher: Kafka at %s: %s", self.bootstrap, error)

    def _get_producer(self):
        if self._producer is None:
            with self._lock:
                if self._producer is None:
                    timeout_ms = max(1, int(self.timeout_s * 1000))
                    self._producer = make_producer(
                        self.bootstrap, "feedloop-api", self._on_error,
                        **{"linger.ms": 0, "message.timeout.ms": timeout_ms, "request.timeout.ms": timeout_ms,
                           "partitioner": "murmur2_random"})
        return self._producer

    def publish(self, events: Sequence[dict[str, Any]]) -> int:
        """Send every event and wait for all acks; return how many were written."""
        if not events:
            return 0
        if self.breaker.is_open():
            raise KafkaUnavailable(f"Kafka at {self.bootstrap} failed less than {self.breaker.cooldown_s:g}s ago")
        try:
            self._send(events, time.monotonic() + self.timeout_s)
        except KafkaUnavailable:
            self.breaker.trip()
            self._state = "unavailable"
            raise
        self._state = "ok"
        self._error_logged = False
        return len(events)

    def _send(self, events: Sequence[dict[str, Any]], deadline: float) -> None:
        batch = _Batch(len(events))
        try:
            producer = self._get_producer()
            for event in events:
                producer.produce(self.topic, orjson.dumps(event), str(event["user_id"]).encode("utf-8"),
                                 on_delivery=batch.on_delivery)
        except Exception as exc:  # BufferError (queue full), KafkaException, a bad setting
            raise KafkaUnavailable(f"cannot send to Kafka at {self.bootstrap}: {exc}") from exc
        while not batch.done.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaUnavailable(f"Kafka at {self.bootstrap} did not acknowledge the batch "
                                       f"within {self.timeout_s:g}s")
            producer.poll(min(left, POLL_S))
        if batch.error is not None:
            raise KafkaUnavailable(f"Kafka did not acknowledge the batch: {batch.error}")

    def close(self) -> None:
        """Send what is queued, waiting at most the request timeout."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(self.timeout_s)
