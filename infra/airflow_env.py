"""How every Airflow process of feedloop is configured and started.

One function builds the environment (Airflow reads ``AIRFLOW__<SECTION>__<KEY>``),
so the api-server, scheduler, dag-processor, triggerer, Celery worker and ``airflow db
migrate`` can never disagree about the database, the executor, the JWT secret or the
dags folder.
Airflow writes a default ``airflow.cfg`` under var/airflow on first start; every
value that matters is set here through the environment, which wins over that file.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from feedloop.settings import REPO_ROOT, Settings, SettingsError, mlflow_client_env
from feedloop.sparkconf import spark_env

AIRFLOW_DB = "airflow"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
# Short enough that a new DAG file shows up in the UI within seconds; parsing
# each file is still rate-limited by min_file_process_interval.
DAG_REFRESH_INTERVAL_S = 15
DAG_MIN_FILE_PROCESS_INTERVAL_S = 30
MIGRATE_TIMEOUT_S = 600
CELERY = "CeleryExecutor"
# How long Redis keeps a task that a worker took but never acknowledged before handing it out again.
# Above the tasks' execution_timeout (2 h, dags/), so a long task is never run twice; a worker that died
# is handled by Airflow instead (task_heartbeat_timeout_s: the task fails into a retry, a new message).
CELERY_VISIBILITY_TIMEOUT_S = 6 * 3600
_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def airflow_home(settings: Settings) -> Path:
    return settings.var / "airflow"


def airflow_log_dir(settings: Settings) -> Path:
    return settings.log_dir / "airflow"


def passwords_file(settings: Settings) -> Path:
    return airflow_home(settings) / "simple_auth_manager_passwords.json"


def api_url(settings: Settings) -> str:
    """Where clients (and Airflow's own workers) reach the api-server."""
    host = settings.airflow.api_host or settings.bind_host
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.airflow.port}"


def _required_secret(settings: Settings, field: str) -> str:
    value = getattr(settings.airflow, field)
    if not value:
        raise SettingsError(
            f"setting airflow.{field} is empty: set FEEDLOOP_AIRFLOW__{field.upper()} "
            f"or let `feedloop up` generate var/secrets/airflow__{field}"
        )
    return value


def _derived_key(secret: str, purpose: str) -> str:
    # One configured secret, distinct keys per purpose: a leaked session key
    # does not sign JWTs and vice versa.
    return hashlib.sha256(f"feedloop:{purpose}:{secret}".encode()).hexdigest()


def metadata_db_url(settings: Settings) -> str:
    """SQLAlchemy URL of Airflow's metadata DB (also Celery's result backend)."""
    pg = settings.postgres
    return (f"postgresql+psycopg2://{quote(pg.user, safe='')}:{quote(pg.password, safe='')}"
            f"@{pg.host}:{pg.port}/{AIRFLOW_DB}")


def celery_broker_url(settings: Settings) -> str:
    """Celery's broker: the project's Redis, with its login, in a database of Celery's own."""
    rs, db = settings.redis, settings.airflow.celery_broker_db
    if db == rs.db:
        # the online store's readers and `feedloop` tests scan and flush their database
        raise SettingsError(f"setting airflow.celery_broker_db ({db}) is the online store's redis.db: "
                            "set FEEDLOOP_AIRFLOW__CELERY_BROKER_DB to another database")
    login = f"{quote(rs.username, safe='')}:{quote(rs.password, safe='')}@" if rs.password else ""
    host = f"[{rs.host}]" if ":" in rs.host else rs.host
    return f"redis://{login}{host}:{rs.port}/{db}"


def celery_worker_name() -> str:
    """This host's worker as Celery names it (the health check pings exactly this one)."""
    return f"feedloop@{socket.gethostname()}"


def celery_conf(settings: Settings) -> dict[str, str]:
    """The [celery] configuration of every Airflow process (scheduler and workers alike)."""
    return {
        "CELERY__BROKER_URL": celery_broker_url(settings),
        "CELERY__RESULT_BACKEND": f"db+{metadata_db_url(settings)}",
        "CELERY__WORKER_CONCURRENCY": str(settings.airflow.worker_concurrency),
        "CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(CELERY_VISIBILITY_TIMEOUT_S),
    }


def _fernet_key(secret: str) -> str:
    # Stable across restarts (connections stay readable), derived rather than a
    # second secret to manage; Fernet wants 32 url-safe base64 bytes.
    return base64.urlsafe_b64encode(hashlib.sha256(f"feedloop:fernet:{secret}".encode()).digest()).decode()


def airflow_env(settings: Settings) -> dict[str, str]:
    """The complete environment for every Airflow process.

    Starts from the current environment (so JAVA_HOME, HOME and every FEEDLOOP_*
    variable reach the tasks, which run ``feedloop ...`` commands), drops any
    inherited AIRFLOW* variable, and sets all Airflow configuration from settings.
    """
    jwt_secret = _required_secret(settings, "jwt_secret")
    home = airflow_home(settings)
    logs = airflow_log_dir(settings)
    url = api_url(settings)
    venv_bin = str(Path(sys.executable).parent)

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    path = [p for p in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep) if p != venv_bin]
    conf = {
        "CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "CORE__EXECUTOR": settings.airflow.executor,
        "CORE__LOAD_EXAMPLES": "False",
        "CORE__PARALLELISM": str(settings.airflow.parallelism),
        "CORE__MAX_ACTIVE_TASKS_PER_DAG": str(settings.airflow.parallelism),
        # New DAGs wait for a person (or `feedloop run-dag`) to switch them on.
        "CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow.admin_user}:admin",
        "CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
        "CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "CORE__FERNET_KEY": _fernet_key(jwt_secret),
        "DATABASE__SQL_ALCHEMY_CONN": metadata_db_url(settings),
        "SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(settings.airflow.task_heartbeat_timeout_s),
        "API__HOST": settings.bind_host,
        "API__PORT": str(settings.airflow.port),
        "API__WORKERS": "1",
        "API__BASE_URL": url,
        "API__SECRET_KEY": _derived_key(jwt_secret, "api-secret-key"),
        "API_AUTH__JWT_SECRET": jwt_secret,
        "DAG_PROCESSOR__REFRESH_INTERVAL": str(DAG_REFRESH_INTERVAL_S),
        "DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(DAG_MIN_FILE_PROCESS_INTERVAL_S),
        "DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "LOGGING__BASE_LOG_FOLDER": str(logs),
        "LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(logs / "dag_processor"),
    }
    if settings.airflow.executor == CELERY:
        conf.update(celery_conf(settings))
    env.update({f"AIRFLOW__{key}": value for key, value in conf.items()})
    env["AIRFLOW_HOME"] = str(home)
    # BashOperator tasks inherit this PATH and must find the venv's `feedloop`.
    env["PATH"] = os.pathsep.join([venv_bin, *path])
    # The Spark provider's connection for DAGs that use SparkSubmitOperator: the master comes from the feedloop
    # settings, so such a DAG submits to local[*] here and to a cluster by configuration (feedloop's own
    # steps are `feedloop` commands that read the same settings).
    env["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps({"conn_type": "spark", "host": settings.spark.master})
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    # a step with a driver of its own (spark.connect false) starts its JVM from the task
    env.update(spark_env(settings))
    # tasks log in to MLflow (feedloop commands also do it themselves, through settings.mlflow_uri)
    env.update(mlflow_client_env(settings))
    return env


def _airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def airflow_commands(settings: Settings) -> dict[str, list[str]]:
    """Foreground argv of each long-running Airflow process (run with airflow_env)."""
    airflow = _airflow_bin()
    return {
        "airflow-api": [
            airflow, "api-server",
            "--host", settings.bind_host,
            "--port", str(settings.airflow.port),
            "--workers", "1",
        ],
        # No log server: Airflow 3.3's serve-logs listens on every interface with no setting for
        # the host (airflow/utils/serve_logs/core.py), and on one machine the api-server reads the
        # task logs straight from LOGGING__BASE_LOG_FOLDER.
        "airflow-scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "airflow-dag-processor": [airflow, "dag-processor"],
        "airflow-triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        # CeleryExecutor only (registry: enabled). Its tasks are children of the worker, with its
        # environment (airflow_env, as the scheduler's under the LocalExecutor) and its CPU priority.
        "airflow-worker": [
            airflow, "celery", "worker",
            "--concurrency", str(settings.airflow.worker_concurrency),
            "--celery-hostname", celery_worker_name(),
            "--skip-serve-logs",
        ],
    }


def write_passwords_file(settings: Settings) -> Path:
    """Write the SimpleAuthManager passwords file from settings (mode 0600)."""
    password = _required_secret(settings, "admin_password")
    path = passwords_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = json.dumps({settings.airflow.admin_user: password}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(path, 0o600)
    return path


def airflow_init(settings: Settings) -> None:
    """Idempotent one-time setup: directories, passwords file, ``airflow db migrate``.

    Expects PostgreSQL up with a database ``airflow`` owned by settings.postgres.user.
    Raises RuntimeError with the tail of the migration output when it fails.
    """
    env = airflow_env(settings)
    if importlib.util.find_spec("asyncpg") is None:
        # Airflow 3 opens an async engine on the metadata DB besides the psycopg2 one.
        raise RuntimeError("Airflow 3 needs the asyncpg package for a PostgreSQL metadata DB: "
                           "add asyncpg to requirements.in and reinstall")
    logs = airflow_log_dir(settings)
    for directory in (airflow_home(settings), logs, logs / "dag_processor"):
        directory.mkdir(parents=True, exist_ok=True)
    write_passwords_file(settings)

    log_path = logs / "db-migrate.log"
    started = time.monotonic()
    print(f"airflow: migrating metadata DB {settings.postgres.host}:{settings.postgres.port}/{AIRFLOW_DB} "
          f"(log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        try:
            result = subprocess.run(
                [_airflow_bin(), "db", "migrate"], env=env, stdout=log, stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT_S, check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"airflow db migrate did not finish in {MIGRATE_TIMEOUT_S} s; see {log_path}") from None
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"airflow db migrate failed (exit {result.returncode}); see {log_path}:\n{tail}")
    print(f"airflow: metadata DB ready in {time.monotonic() - started:.0f} s; "
          f"UI {api_url(settings)} user {settings.airflow.admin_user}", flush=True)
