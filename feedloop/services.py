"""Start, stop and health-check every feedloop service on one machine.

supervisord (from PyPI) is the process supervisor: it restarts what crashes and
writes each service's output to ``var/log/<service>.log``. Each supervised
program is ``feedloop supervise <name>``, which builds the service's command and
environment from the settings at start time and execs it, so the supervisor
config never holds a secret.

``feedloop up`` starts services in dependency waves, waiting for each wave to be
healthy; a port in use, a missing Java, or a service that does not come up stops
it with a message naming the service, the setting and the log to read.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from feedloop.settings import REPO_ROOT, Settings, generate_local_secrets, get_settings

VENV_BIN = Path(sys.executable).parent


class ServiceError(RuntimeError):
    """A service could not be started; the message says which and where to look."""


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

    def port(self, settings: Settings) -> int | None:
        return _setting(settings, self.port_setting) if self.port_setting else None

    def log(self, settings: Settings) -> Path:
        return settings.log_dir / f"{self.name}.log"


def _setting(settings: Settings, dotted: str):
    value = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


# ---------------------------------------------------------------- health checks
def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (OSError, ValueError):
        return False


def _redis_ok(settings: Settings) -> bool:
    from feature_store.online import connect

    try:
        return bool(connect(settings).ping())
    except Exception:
        return False


def _postgres_ok(settings: Settings) -> bool:
    pg = settings.postgres
    try:
        import psycopg2

        psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname="postgres", connect_timeout=2).close()
        return True
    except Exception:
        return False


def _tcp(setting: str) -> Callable[[Settings], bool]:
    def check(settings: Settings) -> bool:
        return port_open(settings.bind_host, _setting(settings, setting))

    return check


def _http(setting: str, path: str) -> Callable[[Settings], bool]:
    def check(settings: Settings) -> bool:
        return http_ok(f"http://{settings.bind_host}:{_setting(settings, setting)}{path}")

    return check


def _kafka_ok(settings: Settings) -> bool:
    return port_open(settings.bind_host, settings.kafka.port)


def _running(name: str) -> Callable[[Settings], bool]:
    def check(settings: Settings) -> bool:
        try:
            info = supervisor(settings).getProcessInfo(name)
        except Exception:
            return False
        return info["statename"] == "RUNNING" and time.time() - info["start"] > 10

    return check


SERVICES: list[Service] = [
    Service("postgres", "postgres.port", 1, _postgres_ok, 60, "metadata DB for Airflow and MLflow"),
    Service("redis", "redis.port", 1, _redis_ok, 30, "online store: feeds, trending, user state"),
    Service("kafka", "kafka.port", 1, _kafka_ok, 120, "event bus (KRaft, single node)", ["kafka.controller_port"]),
    Service("metastore", "hive.metastore_port", 1, _tcp("hive.metastore_port"), 180, "Hive Metastore (Derby behind it)"),
    Service("thriftserver", "hive.hs2_port", 2, _tcp("hive.hs2_port"), 240, "Spark Thrift Server: HiveServer2 protocol"),
    Service("mlflow", "mlflow.port", 2, _http("mlflow.port", "/health"), 120, "MLflow tracking server and registry"),
    Service("airflow-api", "airflow.port", 3, _http("airflow.port", "/api/v2/version"), 240, "Airflow 3 api-server and UI"),
    Service("airflow-scheduler", "", 3, _running("airflow-scheduler"), 120, "Airflow scheduler (LocalExecutor)"),
    Service("airflow-dag-processor", "", 3, _running("airflow-dag-processor"), 120, "Airflow DAG processor"),
    Service("airflow-triggerer", "", 3, _running("airflow-triggerer"), 120, "Airflow triggerer"),
    Service("api", "api.port", 3, _http("api.port", "/healthz"), 60, "feed API"),
    Service("stream-events", "", 3, _running("stream-events"), 180, "streaming sink Kafka -> Hive events"),
    Service("stream-learner", "", 3, _running("stream-learner"), 180,
            "online learner: clicks/dwell -> fine-tuned champion -> segment feeds", optional=True),
]
BY_NAME = {s.name: s for s in SERVICES}


# ---------------------------------------------------------------- commands per service
def pyspark_home() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.origin:
        raise ServiceError("pyspark is not installed in this Python; run `make install`")
    return Path(spec.origin).parent


def java_bin() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    found = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not found:
        raise ServiceError("Java not found: install OpenJDK 17 (apt-get install openjdk-17-jdk-headless) or set JAVA_HOME")
    return found


def postgres_bin(settings: Settings, tool: str) -> str:
    if settings.postgres.bin_dir:
        return str(Path(settings.postgres.bin_dir) / tool)
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise ServiceError("PostgreSQL server binaries not found: apt-get install postgresql, or set FEEDLOOP_POSTGRES__BIN_DIR")
    return found[-1]


def _hive_conf_dir(settings: Settings) -> Path:
    return settings.var / "hive-conf"


def _write_hive_site(settings: Settings) -> Path:
    directory = _hive_conf_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    props = {
        "javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={settings.var / 'metastore_db'};create=true",
        "javax.jdo.option.ConnectionDriverName": "org.apache.derby.jdbc.EmbeddedDriver",
        "datanucleus.schema.autoCreateAll": "true",
        "hive.metastore.schema.verification": "false",
        "hive.metastore.warehouse.dir": settings.warehouse.as_uri(),
        "hive.async.log.enabled": "false",
        "hive.metastore.event.db.notification.api.auth": "false",
    }
    body = "\n".join(f"  <property><name>{k}</name><value>{v}</value></property>" for k, v in props.items())
    (directory / "hive-site.xml").write_text(f"<?xml version=\"1.0\"?>\n<configuration>\n{body}\n</configuration>\n")
    (directory / "log4j2.properties").write_text(
        "rootLogger.level = WARN\nrootLogger.appenderRef.stdout.ref = console\n"
        "appender.console.type = Console\nappender.console.name = console\n"
        "appender.console.layout.type = PatternLayout\nappender.console.layout.pattern = %d %p %c{1}: %m%n\n"
        "logger.metastore.name = org.apache.hadoop.hive.metastore\nlogger.metastore.level = INFO\n"
    )
    return directory


METASTORE_LAUNCHER = REPO_ROOT / "infra" / "metastore" / "LoopbackMetastore.java"


# ---------------------------------------------------------------- HiveServer2 login
HIVE_AUTH_CLASS = "io.feedloop.hive.PasswordFileAuthenticator"  # infra/hive-auth, built by `make install`
HIVE_PBKDF2_ITERATIONS = 100_000  # ~40 ms per login in the JVM; logins are per connection, not per query


def hive_logins(settings: Settings) -> dict[str, str]:
    """The HiveServer2 accounts: the platform's own and the analysts'; passwords are secrets."""
    logins = {settings.hive.user: settings.hive.password, settings.hive.analyst_user: settings.hive.analyst_password}
    for user, password in logins.items():
        if not password:
            raise ServiceError(f"no password for Hive user {user!r}: set FEEDLOOP_HIVE__PASSWORD / "
                               "FEEDLOOP_HIVE__ANALYST_PASSWORD or let `feedloop up` generate var/secrets/hive__*")
    return logins


def write_hive_password_file(settings: Settings) -> Path:
    """var/secrets/hive_passwords: one salted PBKDF2-SHA256 hash per login, read by the provider."""
    import hashlib

    path = settings.var / "secrets" / "hive_passwords"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for user, password in hive_logins(settings).items():
        salt = os.urandom(16)
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, HIVE_PBKDF2_ITERATIONS)
        lines.append(f"{user} pbkdf2-sha256 {HIVE_PBKDF2_ITERATIONS} {salt.hex()} {digest.hex()}\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- MLflow login
MLFLOW_MIN_PASSWORD = 12  # mlflow.utils.validation refuses shorter passwords


def _mlflow_auth_db(settings: Settings) -> str:
    return f"sqlite:///{settings.var / 'mlflow' / 'basic_auth.db'}"


def _write_mlflow_auth_config(settings: Settings) -> Path:
    """MLflow's basic-auth config: its user DB under var/mlflow; the admin's password is not in it."""
    path = settings.var / "mlflow" / "basic_auth.ini"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {_mlflow_auth_db(settings)}\n"
        f"admin_username = {settings.mlflow.admin_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return path


def mlflow_auth_env(settings: Settings) -> dict[str, str]:
    """The environment of the MLflow server: the basic-auth app's config and the admin's login."""
    password = settings.mlflow.admin_password
    if len(password) < MLFLOW_MIN_PASSWORD:
        raise ServiceError(f"setting mlflow.admin_password is {'empty' if not password else 'too short'} (MLflow "
                           f"wants {MLFLOW_MIN_PASSWORD} characters or more): set FEEDLOOP_MLFLOW__ADMIN_PASSWORD "
                           "or let `feedloop up` generate var/secrets/mlflow__admin_password")
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(_write_mlflow_auth_config(settings)),
        "MLFLOW_AUTH_ADMIN_USERNAME": settings.mlflow.admin_user,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        # signs the UI's CSRF tokens; derived, so one secret less to manage
        "MLFLOW_FLASK_SERVER_SECRET_KEY": hashlib.sha256(f"feedloop:mlflow-flask:{password}".encode()).hexdigest(),
    }


def sync_mlflow_admin(settings: Settings) -> None:
    """Make the admin's password in MLflow's user DB the configured one.

    MLflow creates the admin from MLFLOW_AUTH_ADMIN_PASSWORD only into an empty user DB;
    a password changed since (a new secret, FEEDLOOP_MLFLOW__ADMIN_PASSWORD) would
    otherwise lock every feedloop client out.
    """
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(_mlflow_auth_db(settings))
    user = settings.mlflow.admin_user
    if store.has_user(user):
        store.update_user(user, password=settings.mlflow.admin_password, is_admin=True)


def _kafka_config(settings: Settings) -> Path:
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


def _kafka_classpath(settings: Settings) -> str:
    jars = settings.jars / "kafka"
    if not any(jars.glob("kafka_*.jar")):
        raise ServiceError(f"Kafka jars missing under {jars}: run `make jars` (mvn -f infra/pom.xml)")
    return str(jars / "*")


def _kafka_java(settings: Settings, heap: str) -> list[str]:
    return [
        java_bin(), f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={settings.var / 'kafka' / 'log4j2.properties'}",
        "-cp", _kafka_classpath(settings),
    ]


def _redis_conf(settings: Settings) -> Path:
    directory = settings.var / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    rs = settings.redis
    lines = [
        f"bind {settings.bind_host}", f"port {rs.port}", "daemonize no", f"dir {directory}",
        "appendonly yes", "appendfsync everysec", "save \"\"", "protected-mode yes",
        "maxmemory-policy noeviction", "loglevel notice", "logfile \"\"",
    ]
    if rs.password:
        lines.append(f"requirepass {rs.password}")
    path = directory / "redis.conf"
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def _spark_submit_conf(settings: Settings, app_name: str, ui_port: int) -> list[str]:
    from feedloop.spark import spark_conf

    conf = spark_conf(settings, app_name)
    conf["spark.ui.port"] = str(ui_port)
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
        argv = [shutil.which("redis-server") or "/usr/bin/redis-server", str(_redis_conf(settings))]
    elif name == "kafka":
        argv = _kafka_java(settings, settings.kafka.heap) + ["kafka.Kafka", str(_kafka_config(settings))]
    elif name == "metastore":
        conf_dir = _write_hive_site(settings)
        java = java_bin()
        if not (Path(java).resolve().parent / "javac").exists():
            raise ServiceError(f"the metastore's launcher ({METASTORE_LAUNCHER.name}) runs from source, which needs "
                               f"a JDK, not only a JRE, beside {java}: apt-get install openjdk-17-jdk-headless")
        # Hive 2.3's HiveMetaStore listens on every interface; the launcher binds bind_host.
        argv = [java, f"-Xmx{settings.hive.metastore_heap}", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={conf_dir / 'log4j2.properties'}", f"-Dderby.system.home={settings.var}",
                "-cp", f"{conf_dir}:{pyspark_home() / 'jars'}/*",
                str(METASTORE_LAUNCHER), settings.bind_host, str(settings.hive.metastore_port)]
    elif name == "thriftserver":
        from feedloop.spark import spark_env

        home = pyspark_home()
        if not settings.hive_auth_jar.exists():
            raise ServiceError(f"HiveServer2's password provider {settings.hive_auth_jar} is missing: run `make install` "
                               "(it builds infra/hive-auth with Maven)")
        env["SPARK_HOME"] = str(home)
        env.update(spark_env(settings))
        env["FEEDLOOP_HIVE_PASSWORD_FILE"] = str(write_hive_password_file(settings))
        argv = [str(home / "bin" / "spark-submit"), "--master", settings.spark.master,
                "--driver-memory", settings.hive.thrift_heap, "--name", "feedloop-thriftserver",
                "--driver-class-path", str(settings.hive_auth_jar),
                "--class", "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2",
                *_spark_submit_conf(settings, "feedloop-thriftserver", settings.spark.ui_port + 1),
                "--hiveconf", f"hive.server2.thrift.port={settings.hive.hs2_port}",
                "--hiveconf", f"hive.server2.thrift.bind.host={settings.hive.hs2_host}",
                "--hiveconf", "hive.server2.authentication=CUSTOM",
                "--hiveconf", f"hive.server2.custom.authentication.class={HIVE_AUTH_CLASS}",
                "spark-internal"]
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
        from feedloop.airflow_env import airflow_commands, airflow_env

        argv = airflow_commands(settings)[name]
        env.update(airflow_env(settings))
    elif name == "api":
        argv = [str(VENV_BIN / "feedloop"), "serve"]
    elif name in ("stream-events", "stream-learner"):
        argv = [str(VENV_BIN / "feedloop"), name]
        env["SPARK_HOME"] = str(pyspark_home())
    else:
        raise ServiceError(f"unknown service {name!r}; known: {', '.join(BY_NAME)}")
    return argv, env, run_as


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


# ---------------------------------------------------------------- supervisord
def _supervisor_conf(settings: Settings) -> Path:
    run = settings.var / "run"
    conf = [
        "[unix_http_server]", f"file={run / 'supervisor.sock'}", "chmod=0700", "",
        "[supervisord]", f"logfile={settings.log_dir / 'supervisord.log'}", f"pidfile={run / 'supervisord.pid'}",
        "logfile_maxbytes=10MB", "logfile_backups=2", "loglevel=info", f"directory={REPO_ROOT}", "nodaemon=false",
        "minfds=4096", "",
        "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{run / 'supervisor.sock'}", "",
    ]
    for svc in SERVICES:
        conf += [
            f"[program:{svc.name}]",
            f"command={VENV_BIN / 'feedloop'} supervise {svc.name}",
            f"directory={REPO_ROOT}",
            "autostart=false", "autorestart=true", "startsecs=3", "startretries=5",
            "stopasgroup=true", "killasgroup=true", "stopwaitsecs=30", "stopsignal=TERM",
            f"stdout_logfile={svc.log(settings)}", "redirect_stderr=true",
            "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=2", "",
        ]
    path = settings.var / "supervisord.conf"
    path.write_text("\n".join(conf))
    return path


def supervisor(settings: Settings):
    from supervisor.xmlrpc import SupervisorTransport

    sock = settings.var / "run" / "supervisor.sock"
    transport = SupervisorTransport(None, None, f"unix://{sock}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def supervisor_running(settings: Settings) -> bool:
    try:
        return supervisor(settings).getState()["statename"] == "RUNNING"
    except Exception:
        return False


def _start_supervisord(settings: Settings) -> None:
    if supervisor_running(settings):
        supervisor(settings).reloadConfig()
        return
    conf = _supervisor_conf(settings)
    subprocess.run([str(VENV_BIN / "supervisord"), "-c", str(conf)], check=True)
    deadline = time.time() + 15
    while not supervisor_running(settings):
        if time.time() > deadline:
            raise ServiceError(f"supervisord did not start; read {settings.log_dir / 'supervisord.log'}")
        time.sleep(0.2)


# ---------------------------------------------------------------- one-time init
def _prepare_dirs(settings: Settings) -> None:
    for sub in ("log", "run", "warehouse", "mlflow", "checkpoints"):
        (settings.var / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(settings.var / "run", 0o755)
    pg_socket_dir = settings.var / "run" / "pg"
    pg_socket_dir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(pg_socket_dir, "postgres", "postgres")


def _init_postgres(settings: Settings) -> None:
    data = settings.var / "pgdata"
    if (data / "PG_VERSION").exists():
        return
    print("  initialising PostgreSQL data directory", flush=True)
    data.mkdir(parents=True, exist_ok=True)
    pwfile = settings.var / "run" / "pgpass.tmp"
    pwfile.write_text(settings.postgres.password + "\n")
    cmd = [postgres_bin(settings, "initdb"), "-D", str(data), "-U", settings.postgres.user, f"--pwfile={pwfile}",
           "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--locale=C.UTF-8"]
    try:
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(cmd)]
        result = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise ServiceError(f"initdb failed: {result.stderr.strip()[-800:]}")


def _create_databases(settings: Settings) -> None:
    import psycopg2

    pg = settings.postgres
    conn = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname="postgres", connect_timeout=5)
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in ("airflow", "mlflow"):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if not cur.fetchone():
                cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()


def _format_kafka(settings: Settings) -> None:
    data = settings.var / "kafka" / "data"
    if (data / "meta.properties").exists():
        return
    print("  formatting Kafka KRaft storage", flush=True)
    config = _kafka_config(settings)
    cluster_id = _kafka_cluster_id()
    cmd = _kafka_java(settings, "256m") + ["kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(config)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"Kafka storage format failed: {(result.stderr or result.stdout).strip()[-800:]}")


def _kafka_cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


# ---------------------------------------------------------------- preflight
def _port_owner_hint(port: int) -> str:
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=3).stdout.strip()
        return f" ({out.split('users:')[-1].strip()})" if "users:" in out else ""
    except Exception:
        return ""


def preflight(settings: Settings, names: list[str]) -> None:
    """Fail early, naming the problem: no Java, a port taken by someone else."""
    java_bin()
    state = _states(settings)
    for name in names:
        svc = BY_NAME[name]
        if state.get(name) == "RUNNING":
            continue
        for setting in [svc.port_setting, *svc.extra_ports]:
            if not setting:
                continue
            port = _setting(settings, setting)
            if port_open(settings.bind_host, port):
                env = "FEEDLOOP_" + setting.replace(".", "__").upper()
                raise ServiceError(
                    f"port {port} ({setting}) needed by {name} is already in use{_port_owner_hint(port)}; "
                    f"stop that process or choose another port with {env}=<port>")


def _states(settings: Settings) -> dict[str, str]:
    if not supervisor_running(settings):
        return {}
    return {p["name"]: p["statename"] for p in supervisor(settings).getAllProcessInfo()}


# ---------------------------------------------------------------- up / down / status
def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log yet)"


def _wait_healthy(settings: Settings, services: list[Service]) -> None:
    pending = {s.name: s for s in services}
    started = time.time()
    while pending:
        for name, svc in list(pending.items()):
            if svc.health(settings):
                print(f"  {name:<22} up   ({time.time() - started:5.1f}s)", flush=True)
                del pending[name]
                continue
            info = supervisor(settings).getProcessInfo(name)
            if info["statename"] in ("FATAL", "EXITED") or time.time() - started > svc.start_timeout_s:
                raise ServiceError(
                    f"{name} did not come up (state {info['statename']} after {time.time() - started:.0f}s); "
                    f"read {svc.log(settings)}\n--- last lines ---\n{_tail(svc.log(settings))}")
        time.sleep(0.5)


def up(names: list[str] | None = None, settings: Settings | None = None) -> Settings:
    """Start the named services (default all) and their waves' prerequisites; return settings."""
    generate_local_secrets()
    get_settings.cache_clear()
    settings = settings or get_settings()
    wanted = names or [s.name for s in SERVICES if not s.optional]
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise ServiceError(f"unknown service(s) {unknown}; known: {', '.join(BY_NAME)}")
    _prepare_dirs(settings)
    preflight(settings, wanted)
    _init_postgres(settings)
    _format_kafka(settings)
    _start_supervisord(settings)
    rpc = supervisor(settings)
    for wave in sorted({s.wave for s in SERVICES}):
        batch = [s for s in SERVICES if s.wave == wave and s.name in wanted]
        if wave == 2:
            _after_wave1(settings)
        states = _states(settings)
        if wave == 3 and any(s.name.startswith("airflow-") and states.get(s.name) != "RUNNING" for s in batch):
            from feedloop.airflow_env import airflow_init

            print("  migrating the Airflow database", flush=True)
            airflow_init(settings)
        for svc in batch:
            if states.get(svc.name) != "RUNNING":
                rpc.startProcess(svc.name, False)
        _wait_healthy(settings, batch)
        if wave == 2 and "thriftserver" in wanted:
            apply_ddl(settings)
    return settings


def _after_wave1(settings: Settings) -> None:
    """Databases and topics the later waves need, wherever Postgres and Kafka run."""
    if _postgres_ok(settings):
        _create_databases(settings)
    if _kafka_ok(settings):
        create_topics(settings)


def cmd_up(args) -> int:
    started = time.time()
    try:
        settings = up(args.services or None)
    except ServiceError as exc:
        print(f"feedloop up: {exc}", file=sys.stderr)
        return 1
    print(f"feedloop up: {len(args.services or [s for s in SERVICES if not s.optional])} services healthy in {time.time() - started:.0f}s; logs in {settings.log_dir}")
    return 0


def down(settings: Settings | None = None) -> None:
    """Stop every supervised process and supervisord itself; wait until they are gone."""
    settings = settings or get_settings()
    if not supervisor_running(settings):
        return
    pidfile = settings.var / "run" / "supervisord.pid"
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    rpc = supervisor(settings)
    try:
        rpc.stopAllProcesses(True)
    except Exception:
        pass
    try:
        rpc.shutdown()
    except Exception:
        pass
    deadline = time.time() + 60
    while pid and time.time() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.2)


def cmd_down(args) -> int:
    settings = get_settings()
    was_running = supervisor_running(settings)
    down(settings)
    print("feedloop down: every feedloop process stopped" if was_running else "feedloop down: nothing was running")
    return 0


def status_rows(settings: Settings) -> list[dict]:
    states = _states(settings)
    rows = []
    for svc in SERVICES:
        if svc.optional and states.get(svc.name, "STOPPED") == "STOPPED":
            continue  # not asked for: not part of the stack's health
        port = svc.port(settings)
        healthy = svc.health(settings) if states.get(svc.name) == "RUNNING" else False
        rows.append({"service": svc.name, "state": states.get(svc.name, "STOPPED"), "healthy": healthy,
                     "address": f"{settings.bind_host}:{port}" if port else "-", "log": str(svc.log(settings))})
    return rows


def cmd_status(args) -> int:
    settings = get_settings()
    if not supervisor_running(settings):
        print("feedloop status: not running (start with `make up`)")
        return 3
    rows = status_rows(settings)
    print(f"{'service':<22} {'state':<9} {'health':<7} {'address':<18} log")
    for r in rows:
        print(f"{r['service']:<22} {r['state']:<9} {'ok' if r['healthy'] else 'DOWN':<7} {r['address']:<18} {r['log']}")
    extra = _stream_status(settings)
    if extra:
        print(extra)
    return 0 if all(r["healthy"] for r in rows) else 1


def _stream_status(settings: Settings) -> str:
    from spark import stream_learner
    from spark.stream_events import progress_summary

    return "\n".join(line for line in (progress_summary(settings), stream_learner.progress_summary(settings)) if line)


# ---------------------------------------------------------------- DDL and topics
def hive_connection(settings: Settings, database: str = "default", user: str | None = None, password: str | None = None):
    """A PyHive connection to HiveServer2, logged in as the platform's account unless told otherwise."""
    from pyhive import hive

    user = user or settings.hive.user
    if password is None:
        password = hive_logins(settings)[user] if user in (settings.hive.user, settings.hive.analyst_user) else ""
    try:
        return hive.Connection(host=settings.hive.hs2_host, port=settings.hive.hs2_port, database=database,
                               auth="CUSTOM", username=user, password=password)
    except Exception as exc:
        if "Error validating the login" in str(exc):
            raise ServiceError(f"HiveServer2 refused the login of {user!r}: wrong user or password "
                               "(settings hive.user / hive.password, var/secrets/hive__*)") from exc
        raise


def ddl_statements() -> list[tuple[str, str]]:
    out = []
    for path in sorted((REPO_ROOT / "hive" / "ddl").glob("*.sql")):
        text = "\n".join(line for line in path.read_text().splitlines() if not line.strip().startswith("--"))
        out += [(path.name, stmt.strip()) for stmt in text.split(";") if stmt.strip()]
    return out


def apply_ddl(settings: Settings) -> int:
    conn = hive_connection(settings)
    cursor = conn.cursor()
    statements = ddl_statements()
    for _, stmt in statements:
        cursor.execute(stmt)
    conn.close()
    print(f"  applied {len(statements)} DDL statements from hive/ddl/", flush=True)
    return len(statements)


def cmd_ddl(args) -> int:
    apply_ddl(get_settings())
    return 0


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


# A bad record of up to ~1 MB must still reach the DLQ whole (base64 grows it by a third).
EVENTS_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
DLQ_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    k = settings.kafka
    return {
        k.events_topic: {"max.message.bytes": str(EVENTS_MAX_MESSAGE_BYTES)},
        k.dlq_topic: {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)},
        k.served_topic: {},
    }


def cmd_topics(args) -> int:
    created = create_topics(get_settings())
    print(f"topics created: {created or 'none (all exist)'}")
    return 0
