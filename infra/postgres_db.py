"""PostgreSQL: the data directory (initdb) and the databases of Airflow and MLflow."""

from __future__ import annotations

import os
import shutil
import subprocess

from feedloop.settings import Settings
from infra.binaries import postgres_bin
from infra.errors import ServiceError


def init_cluster(settings: Settings) -> None:
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


def create_databases(settings: Settings) -> None:
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

