"""Hive maintenance, daily, for the day that just ended ({{ ds }}).

apply_ddl (idempotent) >> compact_events (one file per hour partition instead of one
per micro-batch) >> retention (drop partitions older than 400 days) >> analyze
(table and partition statistics for the query planner).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import CronDataIntervalTimetable, dag

DEFAULT_ARGS = {
    "owner": "feedloop",
    "retries": 4,  # outlast a scheduler or metastore restart (see feedloop_daily_retrain)
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=8),
    "execution_timeout": timedelta(minutes=30),
}


@dag(
    dag_id="feedloop_hive_maintenance",
    description="Compact streaming files, apply retention, compute statistics",
    # ds is the day that just ended, as in the retrain DAG: its files are complete.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    # The earliest event time feedloop accepts (feedloop.events.MIN_TS_MS), so any day of
    # history (e.g. imported MovieLens ratings of 1998) can be run; catchup=False keeps the
    # scheduler from creating those runs by itself.
    start_date=pendulum.datetime(1995, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["feedloop", "hive", "maintenance"],
    doc_md=__doc__,
)
def feedloop_hive_maintenance():
    apply_ddl = BashOperator(task_id="apply_ddl", bash_command="feedloop ddl")
    compact_events = BashOperator(task_id="compact_events", bash_command="feedloop compact --ds {{ ds }}")
    retention = BashOperator(task_id="retention", bash_command="feedloop retention --ds {{ ds }} --keep-days 400")
    analyze = BashOperator(task_id="analyze", bash_command="feedloop analyze --ds {{ ds }}")

    apply_ddl >> compact_events >> retention >> analyze


feedloop_hive_maintenance()
