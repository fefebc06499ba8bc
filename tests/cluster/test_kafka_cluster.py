"""Kafka as three brokers (the cluster profile): a broker killed mid-stream costs no acknowledged event.

The active controller's JVM (a combined broker and controller, leading partitions of the events
topic too) is killed with SIGKILL while 50,000 events stream in through the project's producer
(feedloop.clients.EventProducer: idempotent, acks=all); supervisord restarts it. A second producer
starts during the outage with the dead broker first in its bootstrap list. No send fails, Hive holds
every event exactly once, and the restarted broker rejoins every partition's in-sync replicas.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import datetime, timezone

import pytest

from feedloop.clients import EventProducer
from feedloop.events import new_event
from infra.kafka_broker import node_service
from infra.supervision import supervisor
from tests.cluster.conftest import hive_query, wait_stream_caught_up

RUN = uuid.uuid4().hex[:8]  # this run's users: counts ignore what earlier runs left on a kept stack
DS = "2026-10-21"  # a day of its own: the counts are per day
TOTAL, RATE_PER_S = 50_000, 1_000
KILL_AT, LATE_CLIENT = 12_000, range(12_000, 13_000)  # events the producer started during the outage sends


def admin_client(settings):
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=10_000,
                            client_id="feedloop-cluster-test")


def commit_a_group_offset(settings) -> None:
    """A consumer group's commit: the broker creates __consumer_offsets (with the internal topics' RF)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=f"cluster-test-{RUN}",
                             enable_auto_commit=False)
    try:
        partition = TopicPartition(settings.kafka.events_topic, 0)
        consumer.assign([partition])
        consumer.commit({partition: OffsetAndMetadata(0, "", -1)})
    finally:
        consumer.close()


def partitions(admin, topic: str) -> list[dict]:
    [described] = admin.describe_topics([topic])
    assert described["error_code"] == 0, described
    return described["partitions"]


def wait_all_in_sync(admin, topic: str, replicas: int, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while (short := [p for p in partitions(admin, topic) if len(p["isr_nodes"]) < replicas]):
        assert time.time() < deadline, f"partitions of {topic} still short of in-sync replicas: {short}"
        time.sleep(1)


def test_every_topic_has_three_replicas_two_in_sync_and_the_quorum_three_voters(settings):
    from kafka.admin import ConfigResource, ConfigResourceType

    assert (settings.kafka.brokers, len(settings.kafka.bootstrap.split(","))) == (3, 3)
    commit_a_group_offset(settings)
    k = settings.kafka
    topics = [k.events_topic, k.dlq_topic, k.served_topic]
    admin = admin_client(settings)
    try:
        for topic in topics + ["__consumer_offsets"]:
            assert {len(p["replica_nodes"]) for p in partitions(admin, topic)} == {3}, topic
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])["topic"]
        assert {t: described[t]["min.insync.replicas"]["value"] for t in topics} == dict.fromkeys(topics, "2")
        [broker] = admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")], config_filter="all")["broker"].values()
        internal = ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                    "share.coordinator.state.topic.replication.factor")
        assert [broker[key]["value"] for key in internal] == ["3", "3", "3"]
        assert broker["transaction.state.log.min.isr"]["value"] == "2"
        quorum = admin.describe_metadata_quorum()["topics"][0]["partitions"][0]
        assert sorted(v["replica_id"] for v in quorum["current_voters"]) == [1, 2, 3]
    finally:
        admin.close()


def active_controller(settings) -> int:
    admin = admin_client(settings)
    try:
        return admin.describe_metadata_quorum()["topics"][0]["partitions"][0]["leader_id"]
    finally:
        admin.close()


def kill_9(settings, node: int) -> int:
    """SIGKILL to broker ``node``'s JVM (supervisord's pid: `feedloop supervise` execs java); its pid."""
    pid = supervisor(settings).getProcessInfo(node_service(node))["pid"]
    assert b"kafka.Kafka" in open(f"/proc/{pid}/cmdline", "rb").read(), "the supervised pid is not the broker's JVM"
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_restarted(settings, node: int, old_pid: int, timeout_s: float = 120) -> None:
    rpc, name = supervisor(settings), node_service(node)
    deadline = time.time() + timeout_s
    while (info := rpc.getProcessInfo(name))["statename"] != "RUNNING" or info["pid"] in (0, old_pid):
        assert time.time() < deadline, f"{name} was not restarted: {info}"
        time.sleep(0.5)


def broker_rss_mb(settings) -> dict[str, int]:
    """Resident memory of each broker's JVM (a measurement for docs/cluster.md, not a check)."""
    rss = {}
    for node in settings.kafka.nodes:
        pid = supervisor(settings).getProcessInfo(node_service(node))["pid"]
        status = open(f"/proc/{pid}/status").read()
        rss[node_service(node)] = int(status.split("VmRSS:")[1].split()[0]) // 1024
    return rss


def dead_broker_first(settings, node: int):
    """The settings with broker ``node`` first in the bootstrap list: a client starting now must move on."""
    servers = settings.kafka.bootstrap.split(",")
    first = servers.pop(node - 1)
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"bootstrap": ",".join([first, *servers])})})


def test_kill_9_of_a_broker_mid_stream_loses_and_doubles_no_acknowledged_event(settings):
    topic = settings.kafka.events_topic
    base_ts = int(datetime.fromisoformat(DS).replace(tzinfo=timezone.utc).timestamp() * 1000)
    producer, late = EventProducer(settings, client_id="cluster-test"), None
    started, killed = time.time(), None
    for n in range(TOTAL):
        if n == KILL_AT:
            killed = active_controller(settings)
            old_pid = kill_9(settings, killed)
            late = EventProducer(dead_broker_first(settings, killed), client_id="cluster-test-late")
        sender = late if n in LATE_CLIENT else producer
        sender.send(topic, new_event("view", f"{RUN}-u{n % 997}", f"i{n % 113}", base_ts + n))
        if n % 100 == 0:
            time.sleep(max(0.0, n / RATE_PER_S - (time.time() - started)))
    late.flush()
    producer.flush()
    sent_s = time.time() - started
    failed = (producer.failed, late.failed, producer.last_error, late.last_error)
    producer.close()
    late.close()
    assert failed == (0, 0, None, None), "a send failed"
    wait_restarted(settings, killed, old_pid)
    admin = admin_client(settings)
    try:  # the restarted broker caught up and is a full replica again (meanwhile the sink writes Hive)
        wait_all_in_sync(admin, topic, 3, timeout_s=120)
    finally:
        admin.close()
    in_sync_s = time.time() - started - sent_s

    deadline = time.time() + 180
    query = (f"SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events WHERE dt = '{DS}' "
             f"AND user_id LIKE '{RUN}-%'")
    while (counts := tuple(hive_query(settings, query)[0]))[0] < TOTAL and time.time() < deadline:
        time.sleep(2)
    wait_stream_caught_up(settings)  # a late duplicate would be in Hive by now
    counts = tuple(hive_query(settings, query)[0])
    print(f"\n{TOTAL:,} events sent in {sent_s:.0f}s; broker {killed} (the active controller) killed at event "
          f"{KILL_AT:,}; in Hive {counts}; brokers' RSS (MB) {broker_rss_mb(settings)}")
    print(f"every partition in sync again {in_sync_s:.0f}s after the last send")
    assert counts == (TOTAL, TOTAL)


@pytest.fixture(autouse=True, scope="module")
def _brokers_running(settings):
    """A failed test may leave a broker stopped; start it for the next module."""
    yield
    rpc = supervisor(settings)
    for node in settings.kafka.nodes:
        if rpc.getProcessInfo(node_service(node))["statename"] != "RUNNING":
            rpc.startProcess(node_service(node), True)
