"""Airflow's executor by settings: LocalExecutor on one machine, CeleryExecutor (Redis broker, Postgres
results, the airflow-worker service) in the cluster profile."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from feedloop.settings import SettingsError, load_settings
from infra import commands
from infra.airflow_env import airflow_commands, airflow_env, celery_worker_name
from infra.registry import BY_NAME, active

CELERY_KEYS = ("AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CELERY__WORKER_CONCURRENCY",
               "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT")


@pytest.fixture
def stack(monkeypatch, tmp_path):
    """Settings of a stack in tmp_path, by profile; secrets from the environment."""
    for name in ("FEEDLOOP_PROFILE", "FEEDLOOP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_CONFIG", str(tmp_path / "feedloop.yaml"))
    monkeypatch.setenv("FEEDLOOP_AIRFLOW__JWT_SECRET", "jwt")
    monkeypatch.setenv("FEEDLOOP_REDIS__PASSWORD", "r3dis/p@ss:word")
    monkeypatch.setenv("FEEDLOOP_POSTGRES__PASSWORD", "pg-pass")

    def load(profile: str = "single", **env: str):
        monkeypatch.setenv("FEEDLOOP_PROFILE", profile)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return load_settings()

    return load


def test_one_machine_keeps_the_local_executor_and_runs_no_worker(stack):
    settings = stack()
    env = airflow_env(settings)
    assert settings.airflow.executor == "LocalExecutor"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert not [key for key in env if key.startswith("AIRFLOW__CELERY")]
    assert not BY_NAME["airflow-worker"].enabled(settings)
    assert "airflow-worker" not in {s.name for s in active(settings)}


def test_the_cluster_profile_queues_tasks_in_redis_for_a_worker(stack):
    settings = stack("cluster")
    env = airflow_env(settings)
    assert settings.airflow.executor == "CeleryExecutor"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert BY_NAME["airflow-worker"].enabled(settings)
    assert "airflow-worker" in {s.name for s in active(settings)}
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", settings.redis.host, settings.redis.port)
    assert broker.path == f"/{settings.airflow.celery_broker_db}" != f"/{settings.redis.db}"
    backend = env["AIRFLOW__CELERY__RESULT_BACKEND"]
    assert backend == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] and backend.endswith("/airflow")
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == str(settings.airflow.worker_concurrency)
    # above the tasks' execution_timeout (2 h): a running task is never handed to a second worker
    assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) > 2 * 3600


def test_the_brokers_login_reaches_kombu_intact(stack):
    from kombu.utils.url import parse_url

    settings = stack("cluster", FEEDLOOP_REDIS__USERNAME="feed@loop")
    parts = parse_url(airflow_env(settings)["AIRFLOW__CELERY__BROKER_URL"])
    assert (parts["userid"], parts["password"], parts["virtual_host"]) == ("feed@loop", "r3dis/p@ss:word", "1")


def test_a_broker_database_shared_with_the_online_store_is_refused(stack):
    settings = stack("cluster", FEEDLOOP_AIRFLOW__CELERY_BROKER_DB="0")
    with pytest.raises(SettingsError, match="airflow.celery_broker_db.*FEEDLOOP_AIRFLOW__CELERY_BROKER_DB"):
        airflow_env(settings)


def test_worker_tasks_get_the_environment_local_executor_tasks_had(stack):
    """PATH (the venv's feedloop), PYSPARK_*, SPARK_LOCAL_IP, MLflow's login, every FEEDLOOP_* variable:
    all but the executor's own keys are the same under either executor."""
    local, cluster = airflow_env(stack()), airflow_env(stack("cluster"))
    cluster = {k: v for k, v in cluster.items() if k not in CELERY_KEYS and k != "FEEDLOOP_PROFILE"}
    local = {k: v for k, v in local.items() if k != "FEEDLOOP_PROFILE"}
    differ = {k for k in local.keys() | cluster.keys() if local.get(k) != cluster.get(k)}
    # the profile's Spark standalone master is the one other difference: the Spark provider's connection follows it
    assert differ == {"AIRFLOW__CORE__EXECUTOR", "AIRFLOW_CONN_SPARK_DEFAULT"}
    assert "spark://" in cluster["AIRFLOW_CONN_SPARK_DEFAULT"] and "local" in local["AIRFLOW_CONN_SPARK_DEFAULT"]
    assert cluster["PYSPARK_PYTHON"] and cluster["FEEDLOOP_AIRFLOW__JWT_SECRET"] == "jwt"


def test_the_worker_command_names_this_host_and_runs_at_the_batch_priority(stack):
    settings = stack("cluster", FEEDLOOP_AIRFLOW__WORKER_CONCURRENCY="3")
    argv = airflow_commands(settings)["airflow-worker"]
    assert argv[1:3] == ["celery", "worker"]
    assert argv[argv.index("--concurrency") + 1] == "3"
    assert argv[argv.index("--celery-hostname") + 1] == celery_worker_name()
    assert "--skip-serve-logs" in argv  # no log server on every interface (as the scheduler's)
    full, env, _ = commands.service_command(settings, "airflow-worker")
    assert Path(full[0]).name == "nice" and full[1:3] == ["-n", str(settings.batch_nice)] and full[3:] == argv
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_the_heartbeat_timeout_follows_the_setting(stack):
    assert airflow_env(stack())["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "300"
    env = airflow_env(stack("cluster", FEEDLOOP_AIRFLOW__TASK_HEARTBEAT_TIMEOUT_S="60"))
    assert env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "60"


def test_the_worker_health_check_says_down_at_once_when_redis_is_not_there(stack):
    from infra.health import celery_worker_ok

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = stack("cluster", FEEDLOOP_REDIS__PORT=str(port))
    started = time.monotonic()
    assert celery_worker_ok(settings) is False
    assert time.monotonic() - started < 1.0


def test_a_worker_on_another_host_reports_to_the_api_servers_host(stack):
    env = airflow_env(stack("cluster", FEEDLOOP_BIND_HOST="10.0.0.7", FEEDLOOP_AIRFLOW__API_HOST="airflow.internal"))
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow.internal:8080/execution/"
    assert env["AIRFLOW__API__HOST"] == "10.0.0.7"  # the api-server still binds its own bind_host
