"""Integration tests run against the real services, started once per test session.

The test stack lives apart from a demo stack: its own state under var/test and
every port shifted by PORT_SHIFT, so `make test` works while `make demo`'s stack
runs. It is stopped at the end of the session (unless KEEP_TEST_STACK=1,
for quick reruns while developing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.stacks import shifted_env

REPO = Path(__file__).resolve().parents[2]
PORT_SHIFT = 20000


def stack_env(var_dir: Path, shift: int) -> dict[str, str]:
    """The environment of a test stack: its own var dir, every port moved by ``shift`` (bench.stacks)."""
    env = shifted_env(var_dir, shift)
    # the test stack's deployment override: a shorter search (the shipped 8 trials cost minutes per retrain)
    env["FEEDLOOP_MODEL__TUNE_TRIALS"] = "3"
    return env


TEST_ENV = stack_env(REPO / "var" / "test", PORT_SHIFT)
os.environ.update(TEST_ENV)
os.environ.pop("FEEDLOOP_KAFKA__BOOTSTRAP", None)  # a shell's own would point the tests at another stack


def leftovers(settings) -> list[str]:
    """What of the test stack still runs: processes naming its var dir, ports still listening."""
    from infra.health import port_open
    from infra.registry import active

    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    procs = [line.strip() for line in out.splitlines() if str(settings.var) in line and "pytest" not in line]
    ports = [f"{s.name}:{s.port(settings)}" for s in active(settings)
             if s.port(settings) and port_open(settings.bind_host, s.port(settings))]
    return procs + ports


def running_stack(label: str):
    """Bring the stack of this process's environment up; yield its settings; stop it and check nothing is left."""
    from feedloop.settings import get_settings
    from infra.stack import down, up

    started = time.time()
    get_settings.cache_clear()
    try:
        up()
    except Exception:
        down(get_settings())
        raise
    get_settings.cache_clear()
    print(f"\n[{label}] stack up in {time.time() - started:.0f}s (profile {get_settings().profile})", file=sys.stderr)
    yield get_settings()
    if os.environ.get("KEEP_TEST_STACK"):  # faster iteration: `up` reuses a running stack
        return
    down(get_settings())
    left = leftovers(get_settings())
    assert not left, f"`feedloop down` left these running: {left}"


@pytest.fixture(scope="session")
def settings():
    """Settings of the test stack, after `feedloop up` brought every service up."""
    yield from running_stack("integration")


@pytest.fixture(scope="session")
def redis_client(settings):
    from feedloop import clients

    return clients.redis_client(settings)


def hive_query(settings, sql: str) -> list[tuple]:
    """Rows of one HiveQL statement over HiveServer2 (PyHive), in the feedloop database."""
    from feedloop.clients import hive_connection

    conn = hive_connection(settings, settings.hive.database)
    try:
        cursor = conn.cursor()
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        conn.close()


def wait_stream_caught_up(settings, timeout_s: float = 300) -> None:
    """Wait until the events sink has committed every record now in its topic (so none is still on its way)."""
    from kafka import KafkaConsumer, TopicPartition

    from spark.stream_events import committed_offsets

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap)
    try:
        topic = settings.kafka.events_topic
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        end = sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()
    deadline = time.time() + timeout_s
    while (committed := committed_offsets(settings)) is None or committed < end:
        assert time.time() < deadline, f"the events sink did not catch up with offset {end} in {timeout_s}s"
        time.sleep(0.5)


def feedloop_cli(*args: str, env: dict | None = None, timeout_s: float = 900) -> subprocess.CompletedProcess:
    """Run `feedloop <args>` on the test stack (the session's environment plus ``env``); it must succeed."""
    run = subprocess.run([sys.executable, "-m", "feedloop.cli", *args], capture_output=True, text=True,
                         timeout=timeout_s, env={**os.environ, **(env or {})})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run




@contextmanager
def api_over_private_redis(settings, directory: Path):
    """(redis client, API TestClient) of the test stack's settings over a redis-server of its own in ``directory``."""
    import warnings

    from bench.private import PrivateRedis
    from serving.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette asks for httpx2; httpx works
        from fastapi.testclient import TestClient

    server = PrivateRedis(directory)
    client = server.start()
    redis_settings = settings.redis.model_copy(update={"port": server.port, "password": ""})
    try:
        with TestClient(create_app(settings.model_copy(update={"redis": redis_settings}))) as api:
            yield client, api
    finally:
        server.stop()
