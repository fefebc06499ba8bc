"""Publishing validated events to Kafka from the API, bounded in time.

One idempotent producer (acks=all) per process, created on first use and reused.
Every call either returns once the broker acknowledged every record or raises
:class:`KafkaUnavailable` within about ``kafka.request_timeout_ms``: the API
answers 503 then, never hangs. A retried batch is safe: the Hive sink keeps one
row per ``event_id``.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

import orjson

# After a failed batch, fail at once for this long instead of making every request
# wait out its own timeout (and pile up worker threads) while Kafka is down.
COOLDOWN_S = 1.0
RECONNECT_BACKOFF_MAX_MS = 1000


class KafkaUnavailable(RuntimeError):
    """The broker could not take the batch in time; the message says why."""


class EventPublisher:
    """Sends event dicts to one topic, keyed by ``user_id``, and waits for the acks."""

    def __init__(self, bootstrap: str, topic: str, timeout_ms: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_ms / 1000
        self._producer = None
        self._lock = threading.Lock()
        self._failed_until = 0.0
        self._state = "unused"

    @classmethod
    def from_settings(cls, settings) -> "EventPublisher":
        kafka = settings.kafka
        return cls(kafka.bootstrap, kafka.events_topic, kafka.request_timeout_ms)

    @property
    def state(self) -> str:
        """``unused`` until the first batch, then ``ok`` or ``unavailable`` after each one."""
        return self._state

    def _make_producer(self, producer_class):
        timeout_ms = int(self.timeout_s * 1000)
        return producer_class(
            bootstrap_servers=[s.strip() for s in self.bootstrap.split(",")],
            client_id="feedloop-api",
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            request_timeout_ms=timeout_ms,
            delivery_timeout_ms=timeout_ms,
            max_block_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        )

    def _get_producer(self, deadline: float):
        if self._producer is not None:
            return self._producer
        # Imported here so that the API starts fast and feeds work without kafka-python loaded;
        # kafka-python 3.0 warns about its own use of importlib.resources on import.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from kafka import KafkaProducer

        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise KafkaUnavailable(f"timed out waiting to connect to Kafka at {self.bootstrap}")
        try:
            if self._producer is None:
                try:
                    self._producer = self._make_producer(KafkaProducer)
                except Exception as exc:  # kafka-python raises several types here
                    self._failed_until = time.monotonic() + COOLDOWN_S
                    raise KafkaUnavailable(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc
            return self._producer
        finally:
            self._lock.release()

    def publish(self, events: Sequence[dict[str, Any]]) -> int:
        """Send every event and wait for all acks; return how many were written."""
        if not events:
            return 0
        now = time.monotonic()
        if now < self._failed_until:
            raise KafkaUnavailable(f"Kafka at {self.bootstrap} failed less than {COOLDOWN_S:g}s ago")
        deadline = now + self.timeout_s
        try:
            producer = self._get_producer(deadline)
        except KafkaUnavailable:
            self._state = "unavailable"
            raise
        try:
            futures = [
                producer.send(
                    self.topic,
                    key=str(event["user_id"]).encode("utf-8"),
                    value=orjson.dumps(event),
                )
                for event in events
            ]
            for future in futures:
                future.get(timeout=max(0.001, deadline - time.monotonic()))
        except Exception as exc:  # KafkaTimeoutError, KafkaError, BufferError...
            self._failed_until = time.monotonic() + COOLDOWN_S
            self._state = "unavailable"
            raise KafkaUnavailable(f"Kafka did not acknowledge the batch: {exc}") from exc
        self._state = "ok"
        return len(futures)

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=self.timeout_s)
