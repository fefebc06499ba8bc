"""Health checks: is a service answering on its port, its HTTP route, its protocol?"""

from __future__ import annotations

import time
import urllib.request
from typing import Callable

from feedloop.clients import port_open
from feedloop.settings import Settings


def setting_value(settings: Settings, dotted: str):
    value = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (OSError, ValueError):
        return False


def redis_ok(settings: Settings) -> bool:
    from feedloop.clients import redis_client

    try:
        return bool(redis_client(settings).ping())
    except Exception:
        return False


def postgres_ok(settings: Settings) -> bool:
    pg = settings.postgres
    try:
        import psycopg2

        psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname="postgres", connect_timeout=2).close()
        return True
    except Exception:
        return False


def opensearch_ok(settings: Settings) -> bool:
    from infra.opensearch_node import cluster_healthy

    return cluster_healthy(settings.search.endpoint)


def tcp(setting: str) -> Callable[[Settings], bool]:
    def check(settings: Settings) -> bool:
        return port_open(settings.bind_host, setting_value(settings, setting))

    return check


def streaming(name: str) -> Callable[[Settings], bool]:
    """A streaming app is healthy when it is RUNNING and has made progress since this process started: a batch,
    or an idle trigger that polled Kafka (spark.resilient.heartbeat_listener; one every 10 s with no events).
    RUNNING alone says nothing: a Spark app takes minutes to set up, and may be waiting out an outage."""
    def check(settings: Settings) -> bool:
        from feedloop.progress import last_progress_at
        from infra.supervision import supervisor

        try:
            info = supervisor(settings).getProcessInfo(name)
        except Exception:
            return False
        if info["statename"] != "RUNNING":
            return False
        progressed = last_progress_at(settings, name)
        return progressed is not None and progressed >= info["start"]

    return check


def http(setting: str, path: str) -> Callable[[Settings], bool]:
    def check(settings: Settings) -> bool:
        return http_ok(f"http://{settings.bind_host}:{setting_value(settings, setting)}{path}")

    return check


def kafka_ok(settings: Settings) -> bool:
    return port_open(settings.bind_host, settings.kafka.port)


WORKER_PING_TIMEOUT_S = 2.0


def celery_worker_ok(settings: Settings) -> bool:
    """This host's Celery worker answers a ping over the broker: it consumes the queue, not only runs."""
    from celery import Celery

    from infra.airflow_env import celery_broker_url, celery_worker_name

    if not port_open(settings.redis.host, settings.redis.port):
        return False  # at once: kombu's and redis-py's retries take seconds to give up on a closed port
    name = celery_worker_name()
    app = Celery(set_as_current=False)
    app.conf.update(broker_url=celery_broker_url(settings), broker_connection_timeout=1.0,
                    broker_connection_retry=False, broker_connection_max_retries=0)
    try:
        replies = app.control.ping(destination=[name], timeout=WORKER_PING_TIMEOUT_S, limit=1)
    except Exception:
        return False
    finally:
        app.close()
    return any(name in reply for reply in replies)


def running(name: str) -> Callable[[Settings], bool]:
    def check(settings: Settings) -> bool:
        from infra.supervision import supervisor  # supervision's config lists the services: import it late

        try:
            info = supervisor(settings).getProcessInfo(name)
        except Exception:
            return False
        return info["statename"] == "RUNNING" and time.time() - info["start"] > 10

    return check

