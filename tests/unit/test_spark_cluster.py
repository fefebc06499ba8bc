"""Spark standalone under the cluster profile: the derived master, each application's share, command lines."""

import os
import socket
from pathlib import Path

import pytest

from feedloop.settings import REPO_ROOT, SettingsError, load_settings
from feedloop.sparkconf import spark_conf
from infra import commands, spark_cluster
from infra.errors import ServiceError
from infra.preflight import preflight
from infra.registry import active


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("FEEDLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("FEEDLOOP_CONFIG", str(tmp_path / "feedloop.yaml"))
    monkeypatch.setenv("FEEDLOOP_HIVE__PASSWORD", "platform-password")
    monkeypatch.setenv("FEEDLOOP_HIVE__ANALYST_PASSWORD", "analyst-password")
    return tmp_path


def spark_services(settings) -> list[str]:
    return [s.name for s in active(settings) if s.name.startswith("spark-")]


def test_one_machine_runs_spark_in_process_and_no_cluster():
    settings = load_settings()
    assert (settings.spark.workers, settings.spark.master) == (0, "local[2]")
    assert spark_services(settings) == []
    conf = spark_conf(settings, "feedloop-features")
    assert "spark.cores.max" not in conf and "spark.executor.memory" not in conf


def test_the_cluster_profile_runs_a_master_and_two_workers_and_every_app_submits_to_it(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_PROFILE", "cluster")
    monkeypatch.setenv("FEEDLOOP_BIND_HOST", "10.1.2.3")
    monkeypatch.setenv("FEEDLOOP_SPARK__MASTER_PORT", "17077")
    settings = load_settings()
    assert settings.spark.workers == 2
    assert settings.spark.master == "spark://10.1.2.3:17077"
    assert spark_services(settings) == ["spark-master", "spark-worker-1", "spark-worker-2"]
    monkeypatch.setenv("FEEDLOOP_SPARK__WORKERS", "1")
    assert spark_services(load_settings()) == ["spark-master", "spark-worker-1"]


def test_a_master_given_explicitly_wins_over_the_derived_one(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_PROFILE", "cluster")
    monkeypatch.setenv("FEEDLOOP_SPARK__MASTER", "local[2]")
    assert load_settings().spark.master == "local[2]"
    monkeypatch.setenv("FEEDLOOP_SPARK__MASTER", "yarn")
    assert load_settings().spark.master == "yarn"


def test_more_workers_than_the_registry_knows_is_named(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_SPARK__WORKERS", "3")
    with pytest.raises(SettingsError, match="spark.workers"):
        load_settings()


def test_each_application_is_capped_and_finds_the_venvs_python_and_the_code(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_PROFILE", "cluster")
    settings = load_settings()
    conf = spark_conf(settings, "feedloop-features")
    assert conf["spark.master"] == settings.spark.master
    assert (conf["spark.cores.max"], conf["spark.executor.cores"], conf["spark.executor.memory"]) == ("2", "1", "1g")
    assert conf["spark.pyspark.python"] == os.sys.executable
    assert conf["spark.executorEnv.PYTHONPATH"] == str(REPO_ROOT)
    # four applications at once (Thrift Server, stream-events, learner, a DAG step) fit the advertised cores
    assert 4 * settings.spark.app_cores <= settings.spark.workers * settings.spark.worker_cores


def test_yarn_and_kubernetes_get_a_fixed_executor_count_instead_of_a_core_cap(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_SPARK__MASTER", "k8s://https://api.example:6443")
    monkeypatch.setenv("FEEDLOOP_SPARK__APP_CORES", "4")
    monkeypatch.setenv("FEEDLOOP_SPARK__EXECUTOR_CORES", "2")
    conf = spark_conf(load_settings(), "feedloop-features")
    assert conf["spark.executor.instances"] == "2" and "spark.cores.max" not in conf


def test_the_master_and_workers_run_from_pysparks_jars(monkeypatch, isolated):
    monkeypatch.setenv("FEEDLOOP_PROFILE", "cluster")
    settings = load_settings()
    argv, env, _ = commands.service_command(settings, "spark-master")
    assert Path(argv[0]).name == "spark-class" and argv[1] == spark_cluster.MASTER_CLASS
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert (argv[argv.index("--port") + 1], argv[argv.index("--webui-port") + 1]) == ("7077", "8090")
    assert Path(env["SPARK_HOME"]) == Path(argv[0]).parent.parent
    opts = env["SPARK_DAEMON_JAVA_OPTS"]
    assert env["SPARK_DAEMON_MEMORY"] == "256m" and "spark.deploy.defaultCores=2" in opts
    assert "-Dspark.master.rest.enabled=false" in opts.split()  # its port 6066 is fixed and has no login
    for n in (1, 2):
        argv, env, _ = commands.service_command(settings, f"spark-worker-{n}")
        assert Path(argv[0]).name == "nice"  # executors are batch and streaming work, like in local mode
        java = argv[argv.index(spark_cluster.WORKER_CLASS):]
        assert java[1] == "spark://127.0.0.1:7077"
        assert java[java.index("--webui-port") + 1] == str(8090 + n)
        assert (java[java.index("--cores") + 1], java[java.index("--memory") + 1]) == ("6", "6g")
        work = Path(java[java.index("--work-dir") + 1])
        assert work.is_relative_to(isolated / "var") and f"worker-{n}" in work.parts
        assert Path(env["SPARK_LOCAL_DIRS"]).is_dir() and env["SPARK_LOCAL_IP"] == "127.0.0.1"


def test_the_thrift_server_and_airflows_spark_connection_follow_the_derived_master(monkeypatch):
    import json

    from infra.airflow_env import airflow_env

    monkeypatch.setenv("FEEDLOOP_PROFILE", "cluster")
    monkeypatch.setenv("FEEDLOOP_AIRFLOW__JWT_SECRET", "a-jwt-secret")
    settings = load_settings()
    argv, _, _ = commands.service_command(settings, "thriftserver")
    assert argv[argv.index("--master") + 1] == "spark://127.0.0.1:7077"
    assert "spark.cores.max=2" in argv
    connection = json.loads(airflow_env(settings)["AIRFLOW_CONN_SPARK_DEFAULT"])
    assert connection["host"] == "spark://127.0.0.1:7077"


def test_a_worker_is_healthy_only_while_the_master_lists_it_alive():
    state = {"status": "ALIVE", "workers": [
        {"webuiaddress": "http://127.0.0.1:8091", "state": "DEAD"},
        {"webuiaddress": "http://127.0.0.1:8091", "state": "ALIVE"},  # the same worker, restarted
        {"webuiaddress": "http://127.0.0.1:8092", "state": "DEAD"},
    ]}
    assert spark_cluster.alive_worker_ports(state) == {8091}


def test_a_taken_worker_port_is_named(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_PROFILE", "cluster")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        monkeypatch.setenv("FEEDLOOP_SPARK__WORKER_UI_PORT", str(port - 1))  # worker 2's port is the taken one
        with pytest.raises(ServiceError, match=f"port {port} .*spark-worker-2"):
            preflight(load_settings(), ["spark-worker-1", "spark-worker-2"])

