"""The Kafka broker (KRaft): its config, classpath, storage format and topics."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from feedloop.events import DLQ_MAX_MESSAGE_BYTES, EVENTS_MAX_MESSAGE_BYTES
from feedloop.settings import Settings, get_settings
from infra.binaries import java_bin
from infra.errors import ServiceError


def kafka_config(settings: Settings) -> Path:
    directory = settings.var / "kafka"
    directory.mkdir(parents=True, exist_ok=True)
    host, k = settings.bind_host, settings.kafka
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{host}:{k.controller_port}",
        "listeners": f"PLAINTEXT://{host}:{k.port},CONTROLLER://{host}:{k.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{k.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(directory / "data"),
        "num.partitions": str(k.partitions),
        "offsets.topic.replication.factor": "1",
        # fewer partitions to recover after kill -9; an existing __consumer_offsets keeps its count (50 on
        # storage formatted before this setting): only freshly formatted storage gets k.offsets_partitions
        "offsets.topic.num.partitions": str(k.offsets_partitions),
        "num.recovery.threads.per.data.dir": str(k.recovery_threads),
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
        "num.network.threads": "2",
        "num.io.threads": "2",
    }
    path = directory / "server.properties"
    path.write_text("".join(f"{k_}={v}\n" for k_, v in props.items()))
    (directory / "log4j2.properties").write_text(
        "rootLogger.level = INFO\nrootLogger.appenderRef.stdout.ref = console\n"
        "appender.console.type = Console\nappender.console.name = console\n"
        "appender.console.layout.type = PatternLayout\nappender.console.layout.pattern = [%d] %p %m (%c)%n\n"
        "logger.kafka.name = kafka\nlogger.kafka.level = WARN\nlogger.apache.name = org.apache.kafka\nlogger.apache.level = WARN\n"
        "logger.started.name = kafka.server.KafkaRaftServer\nlogger.started.level = INFO\n"
    )
    return path


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


def format_storage(settings: Settings) -> None:
    data = settings.var / "kafka" / "data"
    if (data / "meta.properties").exists():
        return
    print("  formatting Kafka KRaft storage", flush=True)
    config = kafka_config(settings)
    cluster_id = _kafka_cluster_id()
    cmd = kafka_java(settings, "256m") + ["kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(config)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"Kafka storage format failed: {(result.stderr or result.stdout).strip()[-800:]}")


def _kafka_cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    k = settings.kafka
    return {
        k.events_topic: {"max.message.bytes": str(EVENTS_MAX_MESSAGE_BYTES)},
        k.dlq_topic: {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)},
        k.served_topic: {},
    }


def create_topics(settings: Settings) -> list[str]:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from kafka.admin import ConfigResource, ConfigResourceType

    k = settings.kafka
    admin = KafkaAdminClient(bootstrap_servers=k.bootstrap, request_timeout_ms=k.request_timeout_ms, client_id="feedloop-admin")
    try:
        existing = set(admin.list_topics())
        configs = topic_configs(settings)
        new = [NewTopic(t, num_partitions=k.partitions, replication_factor=1, topic_configs=c)
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

