"""Clients of the platform's services, made from the settings: HiveServer2 (PyHive),
Redis (redis-py) and the Kafka event producer.

Every part of feedloop that talks to these services gets its client here, so
timeouts, logins and delivery guarantees are the same everywhere.
"""

from __future__ import annotations

import socket

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from feedloop.settings import Settings


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts a TCP connection there (health checks, and a fast failure before a client's
    own retries)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class LoginRefused(RuntimeError):
    """HiveServer2 refused the login; the message names the user and the settings to check."""


def hive_password(settings: Settings, user: str) -> str:
    """The (secret) password of one of the HiveServer2 accounts: the platform's own or the analysts'."""
    password = {settings.hive.user: settings.hive.password, settings.hive.analyst_user: settings.hive.analyst_password}[user]
    if not password:
        raise LoginRefused(f"no password for Hive user {user!r}: set FEEDLOOP_HIVE__PASSWORD / "
                           "FEEDLOOP_HIVE__ANALYST_PASSWORD or let `feedloop up` generate var/secrets/hive__*")
    return password


def hive_connection(settings: Settings, database: str = "default", user: str | None = None, password: str | None = None):
    """A PyHive connection to HiveServer2, logged in as the platform's account unless told otherwise."""
    from pyhive import hive

    user = user or settings.hive.user
    if password is None:
        known = (settings.hive.user, settings.hive.analyst_user)
        password = hive_password(settings, user) if user in known else ""
    try:
        return hive.Connection(host=settings.hive.hs2_host, port=settings.hive.hs2_port, database=database,
                               auth="CUSTOM", username=user, password=password)
    except Exception as exc:
        if "Error validating the login" in str(exc):
            raise LoginRefused(f"HiveServer2 refused the login of {user!r}: wrong user or password "
                               "(settings hive.user / hive.password, var/secrets/hive__*)") from exc
        raise



def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client with bounded timeouts, so a dead server fails fast.

    redis-py retries 10 times with backoff by default, which turns a dead server
    into a multi-second wait; one immediate retry still heals a pooled connection
    that went stale across a Redis restart.
    """
    rs = settings.redis
    if rs.cluster:
        return redis_cluster_client(settings)
    return redis.Redis(
        host=rs.host,
        port=rs.port,
        username=rs.username or None,
        password=rs.password or None,
        db=rs.db,
        socket_timeout=rs.socket_timeout_s,
        socket_connect_timeout=rs.socket_timeout_s,
        retry=Retry(NoBackoff(), 1),
        decode_responses=True,
    )


def redis_cluster_client(settings: Settings):
    """A Redis Cluster client (``redis.cluster: true``), with the same timeouts and login; it learns the
    other nodes from ``redis.host:port``. Keys that meet in one call must share a hash tag (docs/cluster.md)."""
    from redis.cluster import RedisCluster

    rs = settings.redis
    return RedisCluster(
        host=rs.host,
        port=rs.port,
        username=rs.username or None,
        password=rs.password or None,
        socket_timeout=rs.socket_timeout_s,
        socket_connect_timeout=rs.socket_timeout_s,
        retry=Retry(NoBackoff(), 1),
        decode_responses=True,
    )



PRODUCERS = ("kafka-python", "confluent")


class EventProducer:
    """Idempotent (acks=all) producer of events keyed by user_id; counts what the broker refused.

    ``kafka-python`` is the project's client; ``confluent`` (librdkafka) is faster.
    Both partition keys with murmur2 like the Java client, so a user's events land
    on the same partition whichever producer sent them.
    """

    def __init__(self, settings: Settings, backend: str = "kafka-python", client_id: str = "feedloop-simulator"):
        if backend not in PRODUCERS:
            raise ValueError(f"producer must be one of {', '.join(PRODUCERS)}, got {backend!r}")
        import orjson

        self._dumps = orjson.dumps
        self.backend = backend
        self.failed = 0
        self.last_error: str | None = None
        self._pending = 0
        k = settings.kafka
        self.timeout_s = k.request_timeout_ms / 1000 * 6
        if backend == "kafka-python":
            from kafka import KafkaProducer

            self._producer = KafkaProducer(
                bootstrap_servers=[s.strip() for s in k.bootstrap.split(",")],
                client_id=client_id,
                enable_idempotence=True,
                acks="all",
                linger_ms=20,
                batch_size=512 * 1024,
                metrics_enabled=False,  # its per-record sensors cost more CPU than the send itself
                max_block_ms=k.request_timeout_ms,
                request_timeout_ms=k.request_timeout_ms * 6,
            )
        else:
            from confluent_kafka import Producer

            self._producer = Producer({
                "bootstrap.servers": k.bootstrap,
                "client.id": client_id,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "batch.num.messages": 100_000,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 512 * 1024,
                "compression.type": "lz4",
                "partitioner": "murmur2_random",
                "message.timeout.ms": k.request_timeout_ms * 6,
            })

    def _failed(self, exc) -> None:
        self.failed += 1
        self.last_error = str(exc)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failed(err)

    def send(self, topic: str, event: dict) -> None:
        key, value = event["user_id"].encode(), self._dumps(event)
        if self.backend == "kafka-python":
            self._producer.send(topic, key=key, value=value).add_errback(self._failed)
            return
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._delivered)
                break
            except BufferError:  # local queue full: let librdkafka deliver some first
                self._producer.poll(0.05)
        self._pending += 1
        if self._pending >= 1000:
            self._producer.poll(0)
            self._pending = 0

    def flush(self) -> None:
        """Wait until every sent event is acknowledged or failed; raise if some were left undelivered."""
        if self.backend == "kafka-python":
            self._producer.flush(timeout=self.timeout_s)
            return
        left = self._producer.flush(self.timeout_s)
        if left:
            raise TimeoutError(f"{left} events not acknowledged by Kafka within {self.timeout_s:.0f}s")

    def close(self) -> None:
        if self.backend == "kafka-python":
            self._producer.close(timeout=10)
        else:
            self._producer.flush(10)


def make_producer(settings: Settings, backend: str = "kafka-python") -> EventProducer:
    """An idempotent, acks=all event producer; fails fast when Kafka is down."""
    return EventProducer(settings, backend)

