"""Keep a streaming app's queries alive through an outage of Kafka or the metastore, in the same SparkSession.

A Kafka source query fails when the broker does not answer for a minute
(``Timeout of 60000ms expired before the position for partition ... could be
determined``, ``Cannot fetch record for offset ... in 120000 milliseconds``), and
the events sink's batch fails when the metastore refuses its partition
registration. Exiting then costs a Spark start-up (minutes on a busy machine), so
:func:`run_resilient` instead waits, with backoff, until the dependency answers
again, and restarts the queries from their checkpoints in the same session.

Exactly once still holds: a restarted query replays its unfinished batch with the
same id, offsets and de-duplication state, as after a crash (the sinks' replay
rules are in :mod:`spark.stream_events` and :mod:`models.online_service`).

A failure that names neither dependency, or a query that fails again and again
(``MAX_RESTARTS_WITHOUT_PROGRESS``) without a single trigger in between, still
ends the app (the supervisor restarts it): a broken JVM is not retried forever.

Progress for the health checks: :func:`heartbeat_listener` writes the app's
heartbeat (:func:`feedloop.progress.write_heartbeat`) after every trigger that
reached its source — a batch, or an idle trigger (Spark reports one every
``spark.sql.streaming.noDataProgressEventInterval``, 10 s, while no data comes) —
so an app that polls Kafka successfully is healthy even when no event arrives.
"""

from __future__ import annotations

import socket
import time
from typing import Callable
from urllib.parse import urlparse

from feedloop.progress import write_heartbeat
from feedloop.settings import Settings

# What a failure says when a dependency did not answer (matched in the exception's text).
TRANSIENT: dict[str, tuple[str, ...]] = {
    "kafka": (
        "org.apache.kafka.common.errors.TimeoutException",
        "before the position for partition",
        "Cannot fetch record for offset",
        "Timed out waiting for a node assignment",
        "org.apache.kafka.common.errors.DisconnectException",
        "org.apache.kafka.common.errors.NetworkException",
    ),
    "metastore": (
        "Could not connect to meta store",
        "Unable to instantiate org.apache.hadoop.hive.ql.metadata.SessionHiveMetaStoreClient",
        "org.apache.thrift.transport.TTransportException",
    ),
}
MAX_RESTARTS_WITHOUT_PROGRESS = 5
BACKOFF_S = (1, 2, 4, 8, 15, 30)  # then every 30 s


def dependency_of(failure: str) -> str | None:
    """The dependency a query failure blames ("kafka", "metastore"), or None for any other failure."""
    for name, marks in TRANSIENT.items():
        if any(mark in failure for mark in marks):
            return name
    return None


def backoff(attempt: int) -> float:
    return BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]


def probe_config(settings: Settings) -> dict:
    """kafka-python consumer options of the probe: a few seconds at most, whatever the broker does."""
    return {"bootstrap_servers": settings.kafka.bootstrap, "request_timeout_ms": 5000, "bootstrap_timeout_ms": 5000}


def kafka_answers(settings: Settings, topic: str | None = None) -> bool:
    """True when the broker answers a metadata request for the topic (a port that accepts is not enough:
    a broker recovering its logs may not serve yet)."""
    try:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(**probe_config(settings))
        try:
            return bool(consumer.partitions_for_topic(topic or settings.kafka.events_topic))
        finally:
            consumer.close()
    except Exception:
        return False


def metastore_answers(settings: Settings) -> bool:
    uri = urlparse(settings.hive.metastore_uri.split(",")[0])
    try:
        with socket.create_connection((uri.hostname or settings.bind_host, uri.port or 9083), timeout=2):
            return True
    except OSError:
        return False


def wait_for(name: str, answers: Callable[[], bool], log=print, sleep=time.sleep, clock=time.time) -> float:
    """Block until ``answers()``, logging what it waits for; returns the seconds waited."""
    started, attempt = clock(), 0
    while not answers():
        pause = backoff(attempt)
        log(f"waiting for {name} to answer ({clock() - started:.0f}s so far); next check in {pause:.0f}s")
        sleep(pause)
        attempt += 1
    return clock() - started


def heartbeat_listener(settings: Settings, app: str, names: set[str] | None = None):
    """A query listener that writes the app's heartbeat after every trigger that reached its source."""
    from pyspark.sql.streaming import StreamingQueryListener

    class Heartbeat(StreamingQueryListener):
        def onQueryStarted(self, event):
            pass

        def onQueryProgress(self, event):
            if names is None or event.progress.name in names:
                write_heartbeat(settings, app)

        def onQueryIdle(self, event):
            write_heartbeat(settings, app)

        def onQueryTerminated(self, event):
            pass

    return Heartbeat()


def run_resilient(spark, start: Callable[[], list], settings: Settings, app: str, log=print,
                  checks: dict[str, Callable[[], bool]] | None = None) -> None:
    """Run the queries ``start()`` returns until they stop; ride out Kafka and metastore outages (module doc)."""
    from pyspark.errors import StreamingQueryException

    checks = checks or {"kafka": lambda: kafka_answers(settings), "metastore": lambda: metastore_answers(settings)}
    restarts_without_progress = 0
    while True:
        queries = start()
        try:
            spark.streams.awaitAnyTermination()
            return  # stopped without a failure
        except StreamingQueryException as exc:
            # the message, and the JVM stack trace (its "Caused by:" lines name the Kafka or Thrift exception)
            failure = f"{exc}\n{getattr(exc, '_stackTrace', '') or ''}"
            dependency = dependency_of(failure)
            progressed = any(q.lastProgress for q in queries)
            restarts_without_progress = 0 if progressed else restarts_without_progress + 1
            if dependency is None or restarts_without_progress > MAX_RESTARTS_WITHOUT_PROGRESS:
                raise
            log(f"{app}: a query failed because {dependency} did not answer "
                f"({failure.splitlines()[0][:300]}); stopping the others and waiting for {dependency}")
        for query in queries:
            if query.isActive:
                query.stop()
        spark.streams.resetTerminated()
        waited = wait_for(dependency, checks[dependency], log=lambda m: log(f"{app}: {m}"))
        log(f"{app}: {dependency} answers again after {waited:.0f}s; restarting the queries from their checkpoints "
            f"(an unfinished batch is replayed with the same id)")
