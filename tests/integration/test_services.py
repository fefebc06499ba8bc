"""The supervisor and the stack's operational promises, on the real services."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid

from feedloop.services import BY_NAME, status_rows, supervisor


def test_status_shows_every_service_healthy(settings):
    rows = {r["service"]: r for r in status_rows(settings)}
    # every service a plain `up` starts; optional ones (the online learner) only when started
    assert set(rows) == {name for name, service in BY_NAME.items() if not service.optional}
    unhealthy = [name for name, r in rows.items() if not r["healthy"]]
    assert not unhealthy, unhealthy


def test_services_bind_loopback_by_default(settings):
    # every TCP listener we own is on 127.0.0.1, except the Hive 2.3 metastore, which has no bind option
    import subprocess

    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    ours = {s.port(settings) for s in BY_NAME.values() if s.port(settings)} - {settings.hive.metastore_port}
    for line in out.splitlines():
        local = line.split()[3]
        host, _, port = local.rpartition(":")
        if port.isdigit() and int(port) in ours:
            assert host in ("127.0.0.1", "[::ffff:127.0.0.1]"), line


def test_supervisor_restarts_a_crashed_service(settings, redis_client):
    rpc = supervisor(settings)
    before = rpc.getProcessInfo("redis")
    marker = f"restart-test-{uuid.uuid4()}"
    redis_client.set(marker, "1")
    time.sleep(1.5)  # AOF fsync is every second
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
    from feedloop.services import hive_connection

    cursor = hive_connection(settings, "feedloop").cursor()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        cursor.execute("SELECT COUNT(*) FROM events WHERE event_id = %(id)s", {"id": event_id})
        if cursor.fetchone()[0] == 1:
            return True
        time.sleep(3)
    return False
