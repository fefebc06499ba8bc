"""Each service's command line and environment, built from the settings at start time."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from feedloop.settings import Settings, get_settings
from infra.binaries import VENV_BIN, java_bin, postgres_bin, pyspark_home
from infra.errors import ServiceError
from infra.hive import (HIVE_AUTH_CLASS, METASTORE_LAUNCHER, metastore_classpath, write_hive_password_file,
                        write_hive_site)
from infra.kafka_broker import kafka_command, service_node
from infra.mlflow_auth import mlflow_auth_env, sync_mlflow_admin
from infra.redis_server import redis_conf
from infra.registry import BY_NAME


# Services that run at the lower CPU priority settings.batch_nice: batch and streaming work, whose delay costs
# seconds of freshness, never a failed read. Airflow's tasks inherit the priority of what starts them: the
# scheduler (the LocalExecutor forks them) or the Celery worker. The API, Redis, Kafka, Postgres, MLflow and
# the metastore keep the normal one. Spark workers too: their executors (children, so at the same priority)
# run the Spark work of every application.
BACKGROUND = ("stream-events", "stream-learner", "thriftserver", "airflow-scheduler", "airflow-dag-processor",
              "airflow-triggerer", "airflow-worker", "spark-worker-1", "spark-worker-2")


def spark_submit_conf(settings: Settings, app_name: str, ui_port: int) -> list[str]:
    from feedloop.sparkconf import spark_conf

    conf = spark_conf(settings, app_name)
    conf["spark.ui.port"] = str(ui_port)
    # a server answering analysts: Hive's fast default (3 tries, 1 s apart), not the batch jobs' patience
    conf["spark.hadoop.hive.metastore.connect.retries"] = "3"
    conf["spark.hadoop.hive.metastore.client.connect.retry.delay"] = "1s"
    args: list[str] = []
    for name, value in conf.items():
        if name in ("spark.master", "spark.driver.memory", "spark.app.name"):
            continue
        args += ["--conf", f"{name}={value}"]
    return args


def service_command(settings: Settings, name: str) -> tuple[list[str], dict[str, str], str | None]:
    """(argv, extra env, user to run as) of one service, in the foreground."""
    env: dict[str, str] = {}
    run_as = None
    if name == "postgres":
        run_as = "postgres" if os.geteuid() == 0 else None
        pg = settings.postgres
        argv = [postgres_bin(settings, "postgres"), "-D", str(settings.var / "pgdata"), "-h", pg.host, "-p", str(pg.port),
                "-k", str(settings.var / "run" / "pg"), "-c", "shared_buffers=64MB", "-c", "max_connections=100",
                "-c", "fsync=on", "-c", "logging_collector=off"]
    elif name == "redis":
        argv = [shutil.which("redis-server") or "/usr/bin/redis-server", str(redis_conf(settings))]
    elif service_node(name):
        argv = kafka_command(settings, service_node(name))
    elif name == "opensearch":
        from infra.opensearch_node import service_argv

        argv = service_argv(settings)
    elif name == "metastore":
        argv = metastore_argv(settings)
    elif name == "thriftserver":
        from feedloop.sparkconf import connect_server_conf, connect_server_env, spark_env

        home = pyspark_home()
        if not settings.hive_auth_jar.exists():
            raise ServiceError(f"HiveServer2's password provider {settings.hive_auth_jar} is missing: run `make install` "
                               "(it builds infra/hive-auth with Maven)")
        env["SPARK_HOME"] = str(home)
        env.update(spark_env(settings))
        env["FEEDLOOP_HIVE_PASSWORD_FILE"] = str(write_hive_password_file(settings))
        env.update(connect_server_env(settings))
        argv = [str(home / "bin" / "spark-submit"), "--master", settings.spark.master,
                "--driver-memory", settings.hive.thrift_heap, "--name", "feedloop-thriftserver",
                "--driver-class-path", str(settings.hive_auth_jar),
                "--class", "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2",
                *spark_submit_conf(settings, "feedloop-thriftserver", settings.spark.ui_port + 1),
                *(arg for name, value in connect_server_conf(settings).items() for arg in ("--conf", f"{name}={value}")),
                "--hiveconf", f"hive.server2.thrift.port={settings.hive.hs2_port}",
                "--hiveconf", f"hive.server2.thrift.bind.host={settings.hive.hs2_host}",
                "--hiveconf", "hive.server2.authentication=CUSTOM",
                "--hiveconf", f"hive.server2.custom.authentication.class={HIVE_AUTH_CLASS}",
                "spark-internal"]
    elif name == "spark-master":
        from infra.spark_cluster import master_command

        argv, env = master_command(settings)
    elif name.startswith("spark-worker-"):
        from infra.spark_cluster import worker_command

        argv, env = worker_command(settings, int(name.rsplit("-", 1)[1]))
    elif name == "mlflow":
        pg = settings.postgres
        art = settings.var / "mlflow" / "artifacts"
        art.mkdir(parents=True, exist_ok=True)
        argv = [str(VENV_BIN / "mlflow"), "server", "--host", settings.bind_host, "--port", str(settings.mlflow.port),
                "--artifacts-destination", str(art), "--workers", "1", "--app-name", "basic-auth"]
        # The DB password travels in the environment, not on the command line (visible in ps).
        env["MLFLOW_BACKEND_STORE_URI"] = f"postgresql+psycopg2://{pg.user}:{pg.password}@{pg.host}:{pg.port}/mlflow"
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no GenAI job workers: ~1 GB less RSS
        env["MLFLOW_SERVER_ALLOWED_HOSTS"] = f"{settings.bind_host}:*,localhost:*,127.0.0.1:*"
        env.update(mlflow_auth_env(settings))
    elif name.startswith("airflow-"):
        from infra.airflow_env import airflow_commands, airflow_env

        argv = airflow_commands(settings)[name]
        env.update(airflow_env(settings))
    elif name == "api":
        argv = [str(VENV_BIN / "feedloop"), "serve"]
    elif name == "dashboard":
        argv = [str(VENV_BIN / "feedloop"), "dashboard"]
    elif name in ("stream-events", "stream-learner"):
        argv = [str(VENV_BIN / "feedloop"), name]
        env["SPARK_HOME"] = str(pyspark_home())
    else:
        raise ServiceError(f"unknown service {name!r}; known: {', '.join(BY_NAME)}")
    return with_priority(settings, name, argv), env, run_as


def metastore_argv(settings: Settings) -> list[str]:
    """The Hive metastore's launcher (infra/metastore), run from source by the JDK's java."""
    conf_dir = write_hive_site(settings)
    java = java_bin()
    if not (Path(java).resolve().parent / "javac").exists():
        raise ServiceError(f"the metastore's launcher ({METASTORE_LAUNCHER.name}) runs from source, which needs "
                           f"a JDK, not only a JRE, beside {java}: apt-get install openjdk-17-jdk-headless")
    # Hive 2.3's HiveMetaStore listens on every interface; the launcher binds bind_host.
    return [java, f"-Xmx{settings.hive.metastore_heap}", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={conf_dir / 'log4j2.properties'}", f"-Dderby.system.home={settings.var}",
            "-cp", metastore_classpath(settings, pyspark_home() / "jars"),
            str(METASTORE_LAUNCHER), settings.bind_host, str(settings.hive.metastore_port)]


def with_priority(settings: Settings, name: str, argv: list[str]) -> list[str]:
    """``argv`` behind ``nice -n settings.batch_nice`` for a BACKGROUND service; unchanged otherwise."""
    if name not in BACKGROUND or settings.batch_nice == 0:
        return argv
    return [shutil.which("nice") or "/usr/bin/nice", "-n", str(settings.batch_nice), *argv]


def cmd_supervise(args) -> int:
    """Exec one service in the foreground (supervisord's program command)."""
    settings = get_settings()
    argv, env, run_as = service_command(settings, args.service)
    if args.service == "mlflow":
        sync_mlflow_admin(settings)
    full_env = {**os.environ, **env}
    if run_as:
        import pwd

        user = pwd.getpwnam(run_as)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
        full_env["HOME"] = user.pw_dir
    sys.stdout.flush()
    os.execvpe(argv[0], argv, full_env)
    return 1  # unreachable

