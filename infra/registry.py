"""The services feedloop runs: name, port setting, start wave, health check, timeout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from feedloop.settings import Settings
from infra.health import (celery_worker_ok, http, kafka_ok, postgres_ok, redis_ok, running, setting_value,
                          streaming, tcp)


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

    def port(self, settings: Settings) -> int | None:
        return setting_value(settings, self.port_setting) if self.port_setting else None

    def log(self, settings: Settings) -> Path:
        return settings.log_dir / f"{self.name}.log"


SERVICES: list[Service] = [
    Service("postgres", "postgres.port", 1, postgres_ok, 60, "metadata DB for Airflow and MLflow"),
    Service("redis", "redis.port", 1, redis_ok, 30, "online store: feeds, trending, user state"),
    Service("kafka", "kafka.port", 1, kafka_ok, 120, "event bus (KRaft, single node)", ["kafka.controller_port"]),
    Service("metastore", "hive.metastore_port", 1, tcp("hive.metastore_port"), 180, "Hive Metastore (Derby behind it)"),
    Service("thriftserver", "hive.hs2_port", 2, tcp("hive.hs2_port"), 240, "Spark Thrift Server: HiveServer2 protocol"),
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

