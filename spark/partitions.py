"""`feedloop wait-partition`: does a day's partition of a table hold rows? (the DAG's sensor)."""

from __future__ import annotations

import sys

from feedloop.settings import get_settings


def partition_rows(settings, table: str, ds: str) -> int:
    """Rows in partition dt=ds of feedloop.<table>, counted through HiveServer2."""
    from feedloop.clients import hive_connection

    conn = hive_connection(settings, settings.hive.database)
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE dt = %(ds)s", {"ds": ds})
        return int(cursor.fetchone()[0])
    finally:
        conn.close()


def main(args) -> int:
    rows = partition_rows(get_settings(), args.table, args.ds)
    print(f"feedloop.{args.table} dt={args.ds}: {rows} rows", file=sys.stderr)
    return 0 if rows > 0 else 1


def wait_for_rows(settings, ds: str, at_least: int, timeout_s: float = 300, table: str = "events",
                  poll_s: float = 5) -> int:
    """Poll the partition until it holds ``at_least`` rows; show progress; return the count."""
    import time

    started, rows = time.time(), -1
    while True:
        rows = partition_rows(settings, table, ds)
        if rows >= at_least:
            return rows
        if time.time() - started > timeout_s:
            raise TimeoutError(
                f"feedloop.{table} dt={ds} holds {rows} rows after {timeout_s:.0f}s, expected {at_least}; "
                f"read {settings.log_dir / 'stream-events.log'}")
        print(f"  waiting for the streaming sink: {rows}/{at_least} rows in feedloop.{table} dt={ds}", flush=True)
        time.sleep(poll_s)
