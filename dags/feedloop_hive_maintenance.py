"""Hive maintenance, daily.

For now one task re-applies the idempotent Hive DDL (`feedloop ddl`), so tables and
partitions a run expects always exist. Compaction of streaming files, retention and
statistics join here as tasks once their `feedloop` commands exist.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import dag

DEFAULT_ARGS = {
    "owner": "feedloop",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "execution_timeout": timedelta(minutes=30),
}


@dag(
    dag_id="feedloop_hive_maintenance",
    description="Keep the feedloop Hive database in shape (today: re-apply DDL)",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["feedloop", "hive", "maintenance"],
    doc_md=__doc__,
)
def feedloop_hive_maintenance():
    BashOperator(task_id="apply_ddl", bash_command="feedloop ddl")


feedloop_hive_maintenance()
