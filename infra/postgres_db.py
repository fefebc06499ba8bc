"""PostgreSQL: the data directory (initdb) and the databases of Airflow, MLflow and the Hive metastore."""

from __future__ import annotations

import os
import shutil
import subprocess

from feedloop.settings import Settings
from infra.binaries import postgres_bin
from infra.errors import ServiceError
from infra.hive import metastore_db_login, metastore_on_local_postgres


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
        if metastore_on_local_postgres(settings):
            create_metastore_database(cur, settings)
    conn.close()


def create_metastore_database(cur, settings: Settings) -> None:
    """The metastore's database, owned by its own login role (its password kept in step with the secret).

    The tables themselves are DataNucleus's to create (infra.hive.write_hive_site says why).
    """
    from psycopg2 import sql

    user, password = metastore_db_login(settings)
    if user != settings.postgres.user:  # the feedloop user's password is initdb's, never changed here
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
        verb = sql.SQL("ALTER" if cur.fetchone() else "CREATE")
        cur.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(verb, sql.Identifier(user), sql.Literal(password)))
    name = settings.hive.metastore_db_name
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    if not cur.fetchone():
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(user)))

