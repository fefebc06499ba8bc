"""The Kafka brokers (KRaft, each a combined broker and controller): config per node, classpath, storage
format of the quorum, topics."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

from feedloop.events import DLQ_MAX_MESSAGE_BYTES, EVENTS_MAX_MESSAGE_BYTES
from feedloop.settings import Settings, get_settings
from infra.binaries import java_bin
from infra.errors import ServiceError


MAX_BROKERS = 3  # kafka, kafka-2, kafka-3 in infra.registry


def node_service(node: int) -> str:
    """The service (supervisord program) of broker ``node``: kafka, kafka-2, kafka-3."""
    return "kafka" if node == 1 else f"kafka-{node}"


def service_node(name: str) -> int | None:
    """The broker node of a service name, or None when it is no broker."""
    return next((n for n in range(1, MAX_BROKERS + 1) if node_service(n) == name), None)


def node_dir(settings: Settings, node: int) -> Path:
    """Config and storage of one node: var/kafka for broker 1 (the single-broker layout, unchanged),
    var/kafka/kafka-<n> for the others."""
    base = settings.var / "kafka"
    return base if node == 1 else base / node_service(node)


def controller_addresses(settings: Settings) -> list[str]:
    k = settings.kafka
    return [f"{settings.bind_host}:{k.node_controller_port(n)}" for n in k.nodes]


def broker_props(settings: Settings, node: int) -> dict[str, str]:
    """server.properties of broker ``node``: a combined broker and controller of a quorum of every node."""
    host, k = settings.bind_host, settings.kafka
    port, controller_port = k.node_port(node), k.node_controller_port(node)
    replicas, min_isr = str(k.replicas), str(k.min_isr)
    return {
        "process.roles": "broker,controller",
        "node.id": str(node),
        # a dynamic (KIP-853) quorum: the voters are written at format time (format_storage), every node
        # finds them through these addresses
        "controller.quorum.bootstrap.servers": ",".join(controller_addresses(settings)),
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node_dir(settings, node) / "data"),
        "num.partitions": str(k.partitions),
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        # fewer partitions to recover after kill -9; an existing __consumer_offsets keeps its count (50 on
        # storage formatted before this setting): only freshly formatted storage gets k.offsets_partitions
        "offsets.topic.num.partitions": str(k.offsets_partitions),
        "num.recovery.threads.per.data.dir": str(k.recovery_threads),
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "unclean.leader.election.enable": "false",  # never elect a replica that may miss acknowledged writes
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
        "num.network.threads": "2",
        "num.io.threads": "2",
    }


def kafka_config(settings: Settings, node: int = 1) -> Path:
    directory = node_dir(settings, node)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "server.properties"
    path.write_text("".join(f"{key}={value}\n" for key, value in broker_props(settings, node).items()))
    (settings.var / "kafka" / "log4j2.properties").write_text(
        "rootLogger.level = INFO\nrootLogger.appenderRef.stdout.ref = console\n"
        "appender.console.type = Console\nappender.console.name = console\n"
        "appender.console.layout.type = PatternLayout\nappender.console.layout.pattern = [%d] %p %m (%c)%n\n"
        "logger.kafka.name = kafka\nlogger.kafka.level = WARN\nlogger.apache.name = org.apache.kafka\nlogger.apache.level = WARN\n"
        "logger.started.name = kafka.server.KafkaRaftServer\nlogger.started.level = INFO\n"
    )
    return path


def kafka_command(settings: Settings, node: int) -> list[str]:
    """The foreground command line of broker ``node`` (supervisord's program; the JVM is its pid)."""
    return kafka_java(settings, settings.kafka.heap) + ["kafka.Kafka", str(kafka_config(settings, node))]


def kafka_classpath(settings: Settings) -> str:
    jars = settings.jars / "kafka"
    if not any(jars.glob("kafka_*.jar")):
        raise ServiceError(f"Kafka jars missing under {jars}: run `make jars` (mvn -f infra/pom.xml)")
    return str(jars / "*")


def kafka_java(settings: Settings, heap: str) -> list[str]:
    return [
        java_bin(), f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={settings.var / 'kafka' / 'log4j2.properties'}",
        "-cp", kafka_classpath(settings),
    ]


def check_quorum_started_together(settings: Settings, names: list[str], states: dict[str, str]) -> None:
    """Refuse to start some brokers without the others: a node alone never opens its port (no quorum
    majority to elect a controller), so `up` would wait out its timeout instead of failing now."""
    nodes = [node_service(n) for n in settings.kafka.nodes]
    named = [n for n in nodes if n in names]
    missing = [n for n in nodes if n not in names and states.get(n) != "RUNNING"]
    if named and missing:
        raise ServiceError(f"Kafka's brokers {', '.join(nodes)} form one KRaft quorum and start together: "
                           f"name {', '.join(missing)} too (`feedloop up {' '.join(nodes)}`)")


def formatted_nodes(settings: Settings) -> list[int]:
    """The nodes whose storage is formatted (holds meta.properties)."""
    return [n for n in range(1, MAX_BROKERS + 1) if (node_dir(settings, n) / "data" / "meta.properties").exists()]


def format_storage(settings: Settings) -> None:
    """Format every node's KRaft storage, once, together: one cluster id, one quorum of every node.

    One broker keeps the standalone format it always had. Several are formatted with
    ``--initial-controllers`` (Kafka 4.1's way to bootstrap a dynamic quorum of several voters):
    the same voter list, ``id@host:controller_port:directory_id``, on every node.
    """
    nodes = settings.kafka.nodes
    formatted = formatted_nodes(settings)
    if formatted == nodes:
        return
    if formatted:
        raise ServiceError(
            f"Kafka storage under {settings.var / 'kafka'} was formatted for broker(s) {formatted}, these settings "
            f"run {nodes} (kafka.brokers = {settings.kafka.brokers}): a quorum is formatted once, all members "
            f"together. Use another var dir (FEEDLOOP_VAR_DIR) for this profile, or `make clean-state` (drops "
            f"the topics' data)")
    print(f"  formatting Kafka KRaft storage ({len(nodes)} node{'s' * (len(nodes) > 1)})", flush=True)
    cluster_id = _kafka_uuid()
    if len(nodes) == 1:
        quorum = ["--standalone"]
    else:
        voters = [f"{n}@{address}:{_kafka_uuid()}" for n, address in zip(nodes, controller_addresses(settings))]
        quorum = ["--initial-controllers", ",".join(voters)]
    # the nodes in parallel: each format is a JVM start (~5 s, 20 s on a loaded machine)
    formats = {node: subprocess.Popen(kafka_java(settings, "256m") + [
        "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(kafka_config(settings, node)), *quorum],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in nodes}
    failed = {node: out.strip()[-800:] for node, proc in formats.items()
              if (out := proc.communicate()[0]) is not None and proc.returncode != 0}
    if failed:
        for node in formatted_nodes(settings):  # all or none: a half-formatted quorum would never start
            shutil.rmtree(node_dir(settings, node) / "data")
        raise ServiceError("Kafka storage format failed: "
                           + "; ".join(f"node {node}: {out}" for node, out in failed.items()))


def _kafka_uuid() -> str:
    """A Kafka Uuid (cluster or directory id): 16 random bytes, URL-safe base64 without padding."""
    import base64

    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):  # Kafka's own Uuid.randomUuid() skips these: a CLI reads them as flags
            return value


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    k = settings.kafka
    isr = {"min.insync.replicas": str(k.min_isr)}  # explicit per topic: what acks=all waits for is visible
    return {
        k.events_topic: {"max.message.bytes": str(EVENTS_MAX_MESSAGE_BYTES), **isr},
        k.dlq_topic: {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES), **isr},
        k.served_topic: isr,
    }


def wait_for_brokers(admin, count: int, timeout_s: float) -> None:
    """Wait until ``count`` brokers are registered and unfenced: a topic of RF n needs n of them at creation,
    and a broker's port opens before the controller unfences it."""
    deadline = time.time() + timeout_s
    while True:
        brokers = [b for b in admin.describe_cluster()["brokers"] if not b.get("is_fenced")]
        if len(brokers) >= count:
            return
        if time.time() > deadline:
            raise ServiceError(f"only {len(brokers)} of {count} Kafka brokers registered after {timeout_s:.0f}s "
                               f"(ids {sorted(b['broker_id'] for b in brokers)}); read var/log/kafka*.log")
        time.sleep(0.5)


def create_topics(settings: Settings, wait_s: float = 60.0) -> list[str]:
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    k = settings.kafka
    admin = KafkaAdminClient(bootstrap_servers=k.bootstrap, request_timeout_ms=k.request_timeout_ms, client_id="feedloop-admin")
    try:
        wait_for_brokers(admin, k.replicas, wait_s)
        existing = set(admin.list_topics())
        configs = topic_configs(settings)
        new = [NewTopic(t, num_partitions=k.partitions, replication_factor=k.replicas, topic_configs=c)
               for t, c in configs.items() if t not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        # raise_on_unknown=False: right after creation the broker may not list the topic's
        # dynamic configs yet (seen once in six fresh starts).
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t, configs=c) for t, c in configs.items() if c],
                            raise_on_unknown=False)
        return [t.name for t in new]
    finally:
        admin.close()


def cmd_topics(args) -> int:
    created = create_topics(get_settings())
    print(f"topics created: {created or 'none (all exist)'}")
    return 0

