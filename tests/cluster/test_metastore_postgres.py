"""The cluster profile's Hive metastore keeps its tables in PostgreSQL, and they outlive a metastore restart."""

from __future__ import annotations

import re
import time
import uuid

import psycopg2

from infra.hive import ddl_statements, derby_dir, metastore_backend, metastore_db_login
from infra.registry import BY_NAME
from infra.supervision import supervisor
from tests.cluster.conftest import hive_query


def tables_in_postgres(settings) -> set[str]:
    """The names of the feedloop database's tables, as the metastore's own rows in PostgreSQL list them."""
    user, password = metastore_db_login(settings)
    conn = psycopg2.connect(host=settings.postgres.host, port=settings.postgres.port, user=user, password=password,
                            dbname=settings.hive.metastore_db_name, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            # DataNucleus names the tables as Hive's JDO mapping does, upper case, quoted (as Hive's own scripts)
            cur.execute('SELECT t."TBL_NAME" FROM "TBLS" t JOIN "DBS" d ON t."DB_ID" = d."DB_ID" WHERE d."NAME" = %s',
                        (settings.hive.database,))
            return {name for (name,) in cur.fetchall()}
    finally:
        conn.close()


def restart_metastore(settings, timeout_s: float = 180) -> float:
    """Stop and start the metastore under supervisord; seconds until it answers again."""
    rpc = supervisor(settings)
    health = BY_NAME["metastore"].health
    rpc.stopProcess("metastore", True)
    assert not health(settings), "the metastore still answers after it was stopped: nothing was restarted"
    started = time.time()
    rpc.startProcess("metastore", False)
    while not health(settings):
        state = rpc.getProcessInfo("metastore")["statename"]
        assert state not in ("FATAL", "EXITED") and time.time() - started < timeout_s, \
            f"the metastore did not come back ({state} after {time.time() - started:.0f}s)"
        time.sleep(0.5)
    return time.time() - started


def test_the_metastore_keeps_the_feedloop_tables_in_postgres_not_derby(settings):
    expected = {m.group(1) for _, stmt in ddl_statements() if (m := re.search(r"TABLE IF NOT EXISTS \w+\.(\w+)", stmt))}
    assert metastore_backend(settings) == "postgres"
    assert expected and expected <= tables_in_postgres(settings)
    assert not derby_dir(settings).exists()  # no process opened an embedded Derby metastore in the var dir


def test_a_table_created_over_hiveserver2_lands_in_postgres_and_survives_a_metastore_restart(settings):
    table = f"probe_{uuid.uuid4().hex[:8]}"
    hive_query(settings, f"CREATE TABLE {settings.hive.database}.{table} (id INT) STORED AS PARQUET")
    try:
        assert table in tables_in_postgres(settings)
        took = restart_metastore(settings)
        assert table in tables_in_postgres(settings)
        # HiveServer2's metastore client reconnects: the table is there for analysts too
        shown = hive_query(settings, f"SHOW TABLES LIKE '{table}'")  # Spark's rows: (namespace, tableName, isTemporary)
        assert table in {row[1] for row in shown}, (shown, took)
    finally:
        hive_query(settings, f"DROP TABLE IF EXISTS {settings.hive.database}.{table}")
