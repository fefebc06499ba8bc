"""The supervisor and the stack's operational promises, on the real services."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid
from pathlib import Path

import psutil

from infra.health import setting_value
from infra.registry import BY_NAME, active
from infra.stack import status_rows
from infra.supervision import supervisor


def test_status_shows_every_service_healthy(settings):
    rows = {r["service"]: r for r in status_rows(settings)}
    # every service a plain `up` of this profile starts; optional ones (the online learner) only when started,
    # and the cluster profile's members (a second broker, Spark workers, a Celery worker) not on one machine
    assert set(rows) == {service.name for service in active(settings) if not service.optional}
    assert settings.profile == "single" and not {"kafka-2", "spark-master", "airflow-worker"} & set(rows)
    unhealthy = [name for name, r in rows.items() if not r["healthy"]]
    assert not unhealthy, unhealthy


def stack_listeners(settings) -> list[tuple[str, int, str]]:
    """(address, port, "pid name") of every listening TCP socket of supervisord and its process tree."""
    root = psutil.Process(int((settings.var / "run" / "supervisord.pid").read_text()))
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            connections = proc.net_connections(kind="tcp")
            name = f"{proc.pid} {' '.join(proc.cmdline())[:160]}"
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # ended while we walked (an Airflow task, a py4j helper)
        found += [(c.laddr.ip, c.laddr.port, name) for c in connections if c.status == psutil.CONN_LISTEN]
    return found


def test_every_listening_socket_of_the_stack_is_on_the_bind_host(settings):
    # Not one port per service: every socket any process of the stack listens on, the JVMs'
    # ephemeral ones (Spark driver RPC, block manager, UI; py4j) included.
    listeners = stack_listeners(settings)
    ports = {port for _, port, _ in listeners}
    running = {p["name"] for p in supervisor(settings).getAllProcessInfo() if p["statename"] == "RUNNING"}
    expected = {setting_value(settings, setting) for service in BY_NAME.values() if service.name in running
                for setting in [service.port_setting, *service.extra_ports] if setting}
    assert expected <= ports, f"the walk missed the services' own ports {sorted(expected - ports)}"
    assert len(ports) > len(expected)  # and it sees the ephemeral ones too (Spark, py4j)
    allowed = {settings.bind_host, f"::ffff:{settings.bind_host}"}
    outside = [f"{ip}:{port} ({name})" for ip, port, name in listeners if ip not in allowed]
    assert not outside, f"listening beyond {settings.bind_host}:\n" + "\n".join(outside)


def _tail(path: Path, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read()


def test_supervisor_restarts_a_crashed_service(settings, redis_client):
    rpc = supervisor(settings)
    before = rpc.getProcessInfo("redis")
    marker = f"restart-test-{uuid.uuid4()}"
    redis_client.set(marker, "1")
    # kill -9 loses what redis-server has not yet written to its AOF (the page cache
    # survives a process crash): wait until the write is in the file, then kill
    aof_dir = settings.var / "redis" / "appendonlydir"
    deadline = time.time() + 10
    while not any(marker.encode() in _tail(f, 4 << 20) for f in aof_dir.glob("*.incr.aof")):
        assert time.time() < deadline, f"the write did not reach the AOF under {aof_dir}"
        time.sleep(0.05)
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline:
        info = rpc.getProcessInfo("redis")
        if info["statename"] == "RUNNING" and info["pid"] != before["pid"]:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"redis was not restarted: {rpc.getProcessInfo('redis')}")
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            assert redis_client.get(marker) == "1"  # AOF kept the write across the crash
            return
        except Exception as exc:  # still loading
            last = exc
            time.sleep(0.3)
    raise AssertionError(f"redis did not come back with its data: {last}")


def test_malformed_events_go_to_the_dlq_with_reason(settings):
    from kafka import KafkaConsumer, KafkaProducer

    from feedloop.events import new_event

    tag = str(uuid.uuid4())
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", enable_idempotence=True)
    bad = [b"{not json " + tag.encode(), json.dumps({"event_type": "click", "tag": tag}).encode()]
    good = new_event("click", "u-dlq", "i-dlq", tag=tag)
    for payload in bad:
        producer.send(settings.kafka.events_topic, payload, key=b"u-dlq")
    producer.send(settings.kafka.events_topic, json.dumps(good).encode(), key=b"u-dlq")
    producer.flush(30)
    producer.close()

    consumer = KafkaConsumer(settings.kafka.dlq_topic, bootstrap_servers=settings.kafka.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000, group_id=None)
    found, deadline = [], time.time() + 240
    while len(found) < len(bad) and time.time() < deadline:
        for record in consumer:
            body = json.loads(record.value)
            if tag.encode() in base64.b64decode(body["raw_base64"]):
                found.append(body["reason"])
    consumer.close()
    assert len(found) == len(bad), found
    assert any(r.startswith("record: not JSON") for r in found)
    assert any(r.startswith("event_id") for r in found)
    assert _hive_has_event(settings, good["event_id"]), "the valid event next to the bad ones did not land"


def _hive_has_event(settings, event_id: str, timeout_s: float = 120) -> bool:
    from feedloop.clients import hive_connection

    cursor = hive_connection(settings, "feedloop").cursor()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        cursor.execute("SELECT COUNT(*) FROM events WHERE event_id = %(id)s", {"id": event_id})
        if cursor.fetchone()[0] == 1:
            return True
        time.sleep(3)
    return False


def test_mlflow_answers_only_with_credentials(settings):
    import httpx
    from mlflow import MlflowClient

    base = settings.mlflow_uri.rstrip("/")
    login = (settings.mlflow.admin_user, settings.mlflow.admin_password)
    search = "/api/2.0/mlflow/registered-models/search"
    attempt = {"name": f"intruder-{uuid.uuid4().hex[:8]}"}
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get(search).status_code == 401
        assert http.get(search, auth=(login[0], "not-the-password")).status_code == 401
        assert http.post("/api/2.0/mlflow/registered-models/create", json=attempt).status_code == 401
        assert http.get(search, auth=login).status_code == 200
        assert http.get("/health").status_code == 200  # the supervisor's health check needs no login
        assert http.get("/api/2.0/mlflow/registered-models/get", params=attempt, auth=login).status_code == 404
    # and a feedloop client logs in by itself: the credentials come with settings.mlflow_uri
    MlflowClient(tracking_uri=settings.mlflow_uri).search_experiments(max_results=1)
