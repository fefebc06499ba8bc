"""Kafka's per-node config under the single and cluster profiles: ids, ports, voters, replication."""

from __future__ import annotations

import pytest

from feedloop.settings import SettingsError, load_settings
from infra import commands
from infra.errors import ServiceError
from infra.kafka_broker import broker_props, format_storage, kafka_config, node_dir, service_node, topic_configs
from infra.registry import active


pytestmark = pytest.mark.usefixtures("isolated")  # tests/unit/conftest.py


def cluster(monkeypatch, **env):
    monkeypatch.setenv("FEEDLOOP_PROFILE", "cluster")
    for name, value in env.items():
        monkeypatch.setenv(f"FEEDLOOP_KAFKA__{name.upper()}", str(value))
    return load_settings()


def props_of(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_the_single_profile_keeps_one_standalone_broker_in_var_kafka(isolated):
    settings = load_settings()
    assert settings.kafka.brokers == 1 and settings.kafka.bootstrap == "127.0.0.1:9092"
    assert [s.name for s in active(settings) if s.name.startswith("kafka")] == ["kafka"]
    props = props_of(kafka_config(settings))
    assert kafka_config(settings) == isolated / "var" / "kafka" / "server.properties"
    assert props["log.dirs"] == str(isolated / "var" / "kafka" / "data")
    assert props["node.id"] == "1"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert (props["default.replication.factor"], props["min.insync.replicas"]) == ("1", "1")
    assert props["offsets.topic.replication.factor"] == props["transaction.state.log.replication.factor"] == "1"
    assert topic_configs(settings)[settings.kafka.events_topic]["min.insync.replicas"] == "1"


def test_the_cluster_profile_runs_three_nodes_with_distinct_ids_ports_and_dirs(monkeypatch, isolated):
    settings = cluster(monkeypatch)
    assert [s.name for s in active(settings) if s.name.startswith("kafka")] == ["kafka", "kafka-2", "kafka-3"]
    props = {n: broker_props(settings, n) for n in (1, 2, 3)}
    assert [p["node.id"] for p in props.values()] == ["1", "2", "3"]
    assert [p["listeners"] for p in props.values()] == [
        f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}" for port in (9092, 9102, 9112)]
    assert len({p["log.dirs"] for p in props.values()}) == 3
    assert props[1]["log.dirs"] == str(isolated / "var" / "kafka" / "data")  # broker 1 where it always was
    assert props[3]["log.dirs"] == str(node_dir(settings, 3) / "data") == str(isolated / "var" / "kafka" / "kafka-3" / "data")
    # every node finds the whole quorum; clients find every broker
    assert {p["controller.quorum.bootstrap.servers"] for p in props.values()} == {
        "127.0.0.1:9093,127.0.0.1:9103,127.0.0.1:9113"}
    assert settings.kafka.bootstrap == "127.0.0.1:9092,127.0.0.1:9102,127.0.0.1:9112"
    for p in props.values():
        assert (p["default.replication.factor"], p["min.insync.replicas"]) == ("3", "2")
        assert p["offsets.topic.replication.factor"] == p["transaction.state.log.replication.factor"] == "3"
        assert p["share.coordinator.state.topic.replication.factor"] == "3"
        assert p["transaction.state.log.min.isr"] == p["share.coordinator.state.topic.min.isr"] == "2"
    assert {c["min.insync.replicas"] for c in topic_configs(settings).values()} == {"2"}


def test_a_port_shift_moves_every_node(monkeypatch):
    settings = cluster(monkeypatch, port=23092, controller_port=23093)
    rows = {s.name: (s.port(settings), *[getattr(settings.kafka, p.split(".")[1]) for p in s.extra_ports])
            for s in active(settings) if s.name.startswith("kafka")}
    assert rows == {"kafka": (23092, 23093), "kafka-2": (23102, 23103), "kafka-3": (23112, 23113)}
    assert settings.kafka.bootstrap == "127.0.0.1:23092,127.0.0.1:23102,127.0.0.1:23112"


@pytest.mark.parametrize("brokers,replicas,min_isr", [(1, 1, 1), (2, 2, 1), (3, 3, 2)])
def test_replication_follows_the_brokers(monkeypatch, brokers, replicas, min_isr):
    monkeypatch.setenv("FEEDLOOP_KAFKA__BROKERS", str(brokers))
    k = load_settings().kafka
    assert (k.replicas, k.min_isr, len(k.bootstrap.split(","))) == (replicas, min_isr, brokers)


def test_replication_can_be_set_but_not_beyond_the_brokers(monkeypatch):
    k = cluster(monkeypatch, replication_factor=2, min_insync_replicas=2).kafka
    assert (k.replicas, k.min_isr) == (2, 2)
    with pytest.raises(SettingsError, match="replication_factor 3 exceeds brokers 2"):
        cluster(monkeypatch, brokers=2, replication_factor=3, min_insync_replicas=0)
    with pytest.raises(SettingsError, match="min_insync_replicas 4 exceeds"):
        cluster(monkeypatch, brokers=3, replication_factor=0, min_insync_replicas=4)


def test_an_explicit_bootstrap_wins(monkeypatch):
    assert cluster(monkeypatch, bootstrap="k1:9092,k2:9092").kafka.bootstrap == "k1:9092,k2:9092"


def test_brokers_run_elsewhere_take_the_replication_they_are_given(monkeypatch):
    """A real cluster: no local broker beyond the default, an explicit bootstrap, RF 3 for its topics."""
    monkeypatch.setenv("FEEDLOOP_KAFKA__BOOTSTRAP", "k1:9092,k2:9092,k3:9092")
    monkeypatch.setenv("FEEDLOOP_KAFKA__REPLICATION_FACTOR", "3")
    k = load_settings().kafka
    assert (k.brokers, k.replicas, k.min_isr) == (1, 3, 2)


def test_each_broker_service_runs_its_own_config(monkeypatch, isolated):
    settings = cluster(monkeypatch)
    monkeypatch.setattr("infra.kafka_broker.kafka_classpath", lambda settings: "jars/*")
    for name, node in (("kafka", 1), ("kafka-2", 2), ("kafka-3", 3)):
        assert service_node(name) == node
        argv, _, _ = commands.service_command(settings, name)
        assert argv[-2:] == ["kafka.Kafka", str(node_dir(settings, node) / "server.properties")]
        assert f"-Xmx{settings.kafka.heap}" in argv
    assert service_node("kafka-4") is None and service_node("redis") is None


def test_storage_formatted_for_another_broker_count_is_refused(monkeypatch, isolated):
    single = load_settings()
    (node_dir(single, 1) / "data").mkdir(parents=True)
    (node_dir(single, 1) / "data" / "meta.properties").write_text("node.id=1\n")
    format_storage(single)  # formatted as it needs: nothing to do, no JVM started
    with pytest.raises(ServiceError, match=r"formatted for broker\(s\) \[1\], these settings run \[1, 2, 3\]"):
        format_storage(cluster(monkeypatch))


def test_brokers_of_the_quorum_are_started_together(monkeypatch):
    from infra.kafka_broker import check_quorum_started_together

    settings = cluster(monkeypatch)
    with pytest.raises(ServiceError, match="name kafka-2, kafka-3 too"):
        check_quorum_started_together(settings, ["redis", "kafka"], {})
    check_quorum_started_together(settings, ["kafka", "kafka-2", "kafka-3"], {})
    check_quorum_started_together(settings, ["kafka"], {"kafka-2": "RUNNING", "kafka-3": "RUNNING"})  # a restart
    check_quorum_started_together(settings, ["api"], {})
    monkeypatch.delenv("FEEDLOOP_PROFILE")
    check_quorum_started_together(load_settings(), ["redis", "kafka"], {})  # one broker: nothing to wait for
