"""The services feedloop runs: name, port setting, start wave, health check, timeout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from feedloop.settings import Settings
from infra.health import (celery_worker_ok, http, kafka_ok, opensearch_ok, postgres_ok, redis_ok, running,
                          setting_value, streaming, tcp)
from infra.spark_cluster import master_alive, worker_registered


def celery_executor(settings: Settings) -> bool:
    """Whether Airflow's tasks go to Celery workers (airflow.executor), so a worker must run."""
    return settings.airflow.executor == "CeleryExecutor"


@dataclass
class Service:
    name: str
    port_setting: str  # dotted settings path of the port it listens on ("" for none)
    wave: int
    health: Callable[[Settings], bool]
    start_timeout_s: float = 120.0
    description: str = ""
    extra_ports: list[str] = field(default_factory=list)
    optional: bool = False  # started only when named (`feedloop up stream-learner`), not by a plain `up`
    # whether the settings ask for this service at all (a cluster member: a second broker, a Spark worker)
    enabled: Callable[[Settings], bool] = lambda settings: True
    port_offset: int = 0  # members sharing one port setting: Spark worker n listens on worker_ui_port + n - 1
    # the services it cannot start without, under these settings: `up` starts them too, and first
    needs: Callable[[Settings], list[str]] = lambda settings: []

    def port(self, settings: Settings) -> int | None:
        return setting_value(settings, self.port_setting) + self.port_offset if self.port_setting else None

    def log(self, settings: Settings) -> Path:
        return settings.log_dir / f"{self.name}.log"


def _thriftserver_health(settings: Settings) -> bool:
    """HiveServer2 answers, and so does Spark Connect when the batch steps use it."""
    return tcp("hive.hs2_port")(settings) and (not settings.spark.connect or tcp("spark.connect_port")(settings))


def _metastore_needs(settings: Settings) -> list[str]:
    from infra.hive import metastore_on_local_postgres

    return ["postgres"] if metastore_on_local_postgres(settings) else []


SERVICES: list[Service] = [
    Service("postgres", "postgres.port", 1, postgres_ok, 60, "metadata DB for Airflow, MLflow and the Hive metastore"),
    Service("redis", "redis.port", 1, redis_ok, 30, "online store: feeds, trending, user state"),
    Service("kafka", "kafka.port", 1, kafka_ok, 120, "event bus: Kafka broker 1 (KRaft broker and controller)",
            ["kafka.controller_port"]),
    # brokers 2 and 3 of the cluster profile (kafka.brokers), on ports derived from kafka.port and
    # kafka.controller_port; the three form one KRaft quorum, so they start in one wave
    Service("kafka-2", "kafka.port_2", 1, tcp("kafka.port_2"), 120, "Kafka broker 2 (KRaft broker and controller)",
            ["kafka.controller_port_2"], enabled=lambda settings: settings.kafka.brokers >= 2),
    Service("kafka-3", "kafka.port_3", 1, tcp("kafka.port_3"), 120, "Kafka broker 3 (KRaft broker and controller)",
            ["kafka.controller_port_3"], enabled=lambda settings: settings.kafka.brokers >= 3),
    # only with search.backend: opensearch and no search.url of a real cluster
    Service("opensearch", "search.port", 1, opensearch_ok, 180, "catalogue search (single-node OpenSearch)",
            ["search.transport_port"], enabled=lambda s: s.search.backend == "opensearch" and not s.search.url),
    Service("metastore", "hive.metastore_port", 1, tcp("hive.metastore_port"), 180,
            "Hive Metastore (PostgreSQL or Derby behind it)", needs=_metastore_needs),
    Service("spark-master", "spark.master_ui_port", 1, master_alive, 120, "Spark standalone master",
            ["spark.master_port"], enabled=lambda settings: settings.spark.workers >= 1),
    *[Service(f"spark-worker-{n}", "spark.worker_ui_port", 1, worker_registered(n), 180,
              f"Spark standalone worker {n} (executors of every Spark application)",
              enabled=lambda settings, n=n: settings.spark.workers >= n, port_offset=n - 1) for n in (1, 2)],
    Service("thriftserver", "hive.hs2_port", 2, _thriftserver_health, 240,
            "Spark Thrift Server: HiveServer2 protocol, and Spark Connect for the batch steps (spark.connect)",
            extra_ports=["spark.connect_port"]),
    Service("mlflow", "mlflow.port", 2, http("mlflow.port", "/health"), 120, "MLflow tracking server and registry"),
    Service("airflow-api", "airflow.port", 3, http("airflow.port", "/api/v2/version"), 240, "Airflow 3 api-server and UI"),
    Service("airflow-scheduler", "", 3, running("airflow-scheduler"), 120,
            "Airflow scheduler (and, under the LocalExecutor, the tasks)"),
    Service("airflow-dag-processor", "", 3, running("airflow-dag-processor"), 120, "Airflow DAG processor"),
    Service("airflow-triggerer", "", 3, running("airflow-triggerer"), 120, "Airflow triggerer"),
    Service("airflow-worker", "", 3, celery_worker_ok, 300, "Airflow Celery worker: runs the DAGs' tasks",
            enabled=celery_executor),
    Service("api", "api.port", 3, http("api.port", "/healthz"), 60, "feed API"),
    Service("dashboard", "dashboard.port", 3, http("dashboard.port", "/healthz"), 60, "live dashboard of the loop"),
    Service("stream-events", "", 3, streaming("stream-events"), 420, "streaming sink Kafka -> Hive events"),
    Service("stream-learner", "", 3, streaming("stream-learner"), 420,
            "online learner: clicks/dwell -> fine-tuned champion -> segment feeds", optional=True),
]


BY_NAME = {s.name: s for s in SERVICES}


def active(settings: Settings) -> list[Service]:
    """The services these settings ask for, in start order (the profile decides the cluster members)."""
    return [s for s in SERVICES if s.enabled(settings)]

