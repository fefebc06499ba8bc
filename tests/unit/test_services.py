import configparser
import os
import socket

from pathlib import Path

import pytest

from feedloop.settings import load_settings, mlflow_client_env
from infra import binaries, commands, hive, mlflow_auth, opensearch_node
from infra.airflow_env import airflow_commands
from infra.errors import ServiceError
from infra.preflight import preflight
from infra.registry import BY_NAME, SERVICES, active


def test_port_in_use_is_named_with_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        monkeypatch.setenv("FEEDLOOP_REDIS__PORT", str(port))
        with pytest.raises(ServiceError) as err:
            preflight(load_settings(), ["redis"])
    message = str(err.value)
    assert f"port {port} (redis.port)" in message and "FEEDLOOP_REDIS__PORT" in message


def test_missing_java_is_named(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(binaries.shutil, "which", lambda name: None)
    with pytest.raises(ServiceError, match="Java not found"):
        binaries.java_bin()


def test_every_service_has_a_command(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_MLFLOW__ADMIN_PASSWORD", "a-long-password")
    monkeypatch.setenv("FEEDLOOP_HIVE__PASSWORD", "platform-password")
    monkeypatch.setenv("FEEDLOOP_HIVE__ANALYST_PASSWORD", "analyst-password")
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_PASSWORD", "metastore-db-password")
    settings = load_settings()
    for svc in SERVICES:
        if svc.name.startswith(("airflow-", "kafka")) or svc.name == "opensearch":
            continue  # need generated Airflow config / resolved jars; covered by integration tests
        argv, env, _ = commands.service_command(settings, svc.name)
        assert argv and argv[0]


def test_the_thrift_server_asks_every_client_for_a_login(monkeypatch, tmp_path):
    import hashlib

    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_HIVE__PASSWORD", "platform-password")
    monkeypatch.setenv("FEEDLOOP_HIVE__ANALYST_PASSWORD", "analyst-password")
    settings = load_settings()
    argv, env, _ = commands.service_command(settings, "thriftserver")
    assert "hive.server2.authentication=CUSTOM" in argv
    assert f"hive.server2.custom.authentication.class={hive.HIVE_AUTH_CLASS}" in argv
    assert argv[argv.index("--driver-class-path") + 1] == str(settings.hive_auth_jar)
    text = Path(env["FEEDLOOP_HIVE_PASSWORD_FILE"]).read_text()
    assert "platform-password" not in text and "analyst-password" not in text
    logins = {}
    for line in text.splitlines():
        user, scheme, iterations, salt, digest = line.split()
        assert scheme == "pbkdf2-sha256"
        logins[user] = (int(iterations), bytes.fromhex(salt), bytes.fromhex(digest))
    assert set(logins) == {"feedloop", "analyst"}
    iterations, salt, digest = logins["analyst"]
    assert hashlib.pbkdf2_hmac("sha256", b"analyst-password", salt, iterations) == digest
    assert hashlib.pbkdf2_hmac("sha256", b"platform-password", salt, iterations) != digest


def test_a_missing_hive_password_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_HIVE__PASSWORD", "platform-password")
    with pytest.raises(ServiceError, match="no password for Hive user 'analyst'"):
        commands.service_command(load_settings(), "thriftserver")


def test_ddl_files_are_idempotent():
    for name, stmt in hive.ddl_statements():
        assert "IF NOT EXISTS" in stmt.upper(), f"{name}: {stmt[:60]}"


# -- binds: every listener on the bind host ------------------------------------------


def test_the_metastore_runs_the_launcher_bound_to_the_bind_host(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_BIND_HOST", "10.1.2.3")
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_PASSWORD", "metastore-db-password")
    argv, _, _ = commands.service_command(load_settings(), "metastore")
    assert argv[-3:] == [str(hive.METASTORE_LAUNCHER), "10.1.2.3", "9083"]
    assert hive.METASTORE_LAUNCHER.exists()


def test_the_metastore_without_a_jdk_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_PASSWORD", "metastore-db-password")
    jre = tmp_path / "jre" / "bin"
    jre.mkdir(parents=True)
    (jre / "java").touch()
    monkeypatch.setattr(commands, "java_bin", lambda: str(jre / "java"))
    with pytest.raises(ServiceError, match="needs a JDK"):
        commands.service_command(load_settings(), "metastore")


def test_spark_uis_bind_the_bind_host(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_BIND_HOST", "10.1.2.3")
    monkeypatch.setenv("FEEDLOOP_HIVE__PASSWORD", "platform-password")
    monkeypatch.setenv("FEEDLOOP_HIVE__ANALYST_PASSWORD", "analyst-password")
    _, env, _ = commands.service_command(load_settings(), "thriftserver")
    assert env["SPARK_LOCAL_IP"] == "10.1.2.3"  # the UI's bind address; spark.driver.bindAddress is not


def test_airflow_tasks_bind_spark_uis_and_log_in_to_mlflow(monkeypatch, tmp_path):
    from infra.airflow_env import airflow_env

    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_BIND_HOST", "10.1.2.3")
    monkeypatch.setenv("FEEDLOOP_AIRFLOW__JWT_SECRET", "jwt")
    monkeypatch.setenv("FEEDLOOP_MLFLOW__ADMIN_PASSWORD", "s3cret-s3cret")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    env = airflow_env(load_settings())
    # SparkSubmitOperator's spark-submit starts the driver JVM, whose UI binds SPARK_LOCAL_IP
    assert env["SPARK_LOCAL_IP"] == "10.1.2.3"
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("admin", "s3cret-s3cret")


def test_airflow_starts_no_log_server():
    commands = airflow_commands(load_settings())
    assert "--skip-serve-logs" in commands["airflow-scheduler"]
    assert "--skip-serve-logs" in commands["airflow-triggerer"]


# -- MLflow with a login ----------------------------------------------------------------


def test_mlflow_runs_the_basic_auth_app_with_the_configured_admin(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_MLFLOW__ADMIN_PASSWORD", "s3cret-s3cret")
    argv, env, _ = commands.service_command(load_settings(), "mlflow")
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert (env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == ("admin", "s3cret-s3cret")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] and "s3cret-s3cret" not in env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    ini = configparser.ConfigParser()
    ini.read(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini["mlflow"]["database_uri"] == f"sqlite:///{tmp_path / 'mlflow' / 'basic_auth.db'}"
    assert "s3cret-s3cret" not in open(env["MLFLOW_AUTH_CONFIG_PATH"]).read()


@pytest.mark.parametrize("password", ["", "short"])
def test_mlflow_without_a_usable_admin_password_names_the_setting(monkeypatch, tmp_path, password):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_MLFLOW__ADMIN_PASSWORD", password)
    with pytest.raises(ServiceError, match="FEEDLOOP_MLFLOW__ADMIN_PASSWORD"):
        commands.service_command(load_settings(), "mlflow")


def test_asking_for_the_tracking_uri_gives_the_process_mlflows_login(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_MLFLOW__ADMIN_PASSWORD", "s3cret-s3cret")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    settings = load_settings()
    assert settings.mlflow_uri == "http://127.0.0.1:5000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("admin", "s3cret-s3cret")


def test_a_login_of_the_process_own_is_kept(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "analyst")
    monkeypatch.setenv("FEEDLOOP_MLFLOW__ADMIN_PASSWORD", "s3cret-s3cret")
    assert mlflow_client_env(load_settings()) == {}


def test_the_admin_password_in_mlflows_user_db_follows_the_setting(monkeypatch, tmp_path):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    (tmp_path / "mlflow").mkdir()
    monkeypatch.setenv("FEEDLOOP_MLFLOW__ADMIN_PASSWORD", "the-old-password")
    mlflow_auth.sync_mlflow_admin(load_settings())  # creates the user DB; no admin yet (MLflow adds it)
    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{tmp_path / 'mlflow' / 'basic_auth.db'}")
    store.create_user("admin", "the-old-password", is_admin=True)
    monkeypatch.setenv("FEEDLOOP_MLFLOW__ADMIN_PASSWORD", "the-new-password")
    mlflow_auth.sync_mlflow_admin(load_settings())
    assert store.authenticate_user("admin", "the-new-password")
    assert not store.authenticate_user("admin", "the-old-password")


def test_batch_and_streaming_services_run_at_a_lower_cpu_priority(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_HIVE__PASSWORD", "platform-password")
    monkeypatch.setenv("FEEDLOOP_HIVE__ANALYST_PASSWORD", "analyst-password")
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_PASSWORD", "metastore-db-password")
    settings = load_settings()
    assert settings.batch_nice == 10
    for name in ("stream-events", "stream-learner", "thriftserver"):
        argv, _, _ = commands.service_command(settings, name)
        assert Path(argv[0]).name == "nice" and argv[1:3] == ["-n", "10"], argv
    for name in ("api", "redis", "metastore"):  # the read path (and what it waits on) keeps the normal priority
        argv, _, _ = commands.service_command(settings, name)
        assert Path(argv[0]).name != "nice", argv
    assert commands.with_priority(settings, "airflow-scheduler", ["airflow", "scheduler"])[-2:] == ["airflow", "scheduler"]
    monkeypatch.setenv("FEEDLOOP_BATCH_NICE", "0")
    argv, _, _ = commands.service_command(load_settings(), "stream-events")
    assert Path(argv[0]).name == "feedloop"


def test_kafka_recovers_with_parallel_threads_and_few_offsets_partitions(monkeypatch, tmp_path):
    from infra.kafka_broker import kafka_config

    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FEEDLOOP_KAFKA__OFFSETS_PARTITIONS", "3")
    props = dict(line.split("=", 1) for line in kafka_config(load_settings()).read_text().splitlines())
    assert props["offsets.topic.num.partitions"] == "3"
    assert props["num.recovery.threads.per.data.dir"] == "2"


def test_batch_jobs_wait_a_bounded_while_for_the_metastore_and_the_thrift_server_does_not(monkeypatch, tmp_path):
    from feedloop.sparkconf import spark_conf

    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    settings = load_settings()
    conf = spark_conf(settings, "feedloop-features")
    assert conf["spark.hadoop.hive.metastore.connect.retries"] == "24"
    assert conf["spark.hadoop.hive.metastore.client.connect.retry.delay"] == "5s"  # 2 min, then a clear failure
    args = commands.spark_submit_conf(settings, "feedloop-thriftserver", 4041)
    assert "spark.hadoop.hive.metastore.connect.retries=3" in args


def test_up_estimates_the_rest_from_the_last_start_and_only_when_every_service_was_timed():
    from infra.registry import BY_NAME
    from infra.stack import wave_eta

    waves = [[BY_NAME["redis"], BY_NAME["kafka"]], [BY_NAME["thriftserver"]], []]
    times = {"redis": 1.5, "kafka": 12.0, "thriftserver": 40.0}
    assert wave_eta(times, waves) == 52.0  # each wave as long as its slowest member
    assert wave_eta(times, waves[1:]) == 40.0
    assert wave_eta({"redis": 1.5}, waves) is None  # a service never timed: no ETA rather than a wrong one


def test_opensearch_runs_only_for_its_backend_without_a_cluster_url(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    assert BY_NAME["opensearch"] not in active(load_settings())
    monkeypatch.setenv("FEEDLOOP_SEARCH__BACKEND", "opensearch")
    settings = load_settings()
    assert BY_NAME["opensearch"] in active(settings) and settings.search.endpoint == "http://127.0.0.1:9200"
    monkeypatch.setenv("FEEDLOOP_SEARCH__URL", "http://search.internal:9200/")
    settings = load_settings()
    assert BY_NAME["opensearch"] not in active(settings) and settings.search.endpoint == "http://search.internal:9200"


def test_opensearch_runs_the_launcher_on_the_search_ports_and_names_missing_jars(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("FEEDLOOP_JAR_CACHE", str(tmp_path / "jars"))
    monkeypatch.setenv("FEEDLOOP_BIND_HOST", "10.1.2.3")
    monkeypatch.setenv("FEEDLOOP_SEARCH__PORT", "9201")
    with pytest.raises(ServiceError, match="OpenSearch jars missing.*make install"):
        commands.service_command(load_settings(), "opensearch")
    (tmp_path / "jars" / "opensearch").mkdir(parents=True)
    (tmp_path / "jars" / "opensearch" / "opensearch-2.19.6.jar").touch()
    argv, _, _ = commands.service_command(load_settings(), "opensearch")
    assert argv[-5:] == [str(opensearch_node.LAUNCHER), str(tmp_path / "var" / "opensearch"), "10.1.2.3", "9201", "9300"]
    assert "-Xmx512m" in argv and opensearch_node.LAUNCHER.exists() and opensearch_node.LOG4J.exists()
