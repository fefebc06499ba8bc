"""Daily retrain: wait for the day's events, train, publish feeds, report.

Configuration only: every task runs a `feedloop` subcommand for the run's `{{ ds }}`;
the work and its imports (pyspark, TensorFlow) live in those commands.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.bash import BashSensor
from airflow.sdk import CronDataIntervalTimetable, dag

DEFAULT_ARGS = {
    "owner": "feedloop",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "execution_timeout": timedelta(hours=2),
}


@dag(
    dag_id="feedloop_daily_retrain",
    description="Retrain the two-tower model on a day of feedback and publish fresh feeds",
    # A data interval per day, so a run's {{ ds }} is the (complete) day it trains on,
    # scheduled just after that day ends. Plain "@daily" in Airflow 3 would give each
    # run the date it starts on, i.e. a day with no data yet.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # 2, so a run waiting in its sensor for a late partition never blocks a manual
    # run (demo, backfill) of another day for up to the sensor's timeout.
    max_active_runs=2,
    default_args=DEFAULT_ARGS,
    tags=["feedloop", "retrain"],
    doc_md=__doc__,
)
def feedloop_daily_retrain():
    wait_for_events_partition = BashSensor(
        task_id="wait_for_events_partition",
        bash_command="feedloop wait-partition --ds {{ ds }}",
        # exit 1 means "not there yet"; any other failure (bad settings: 2) fails fast.
        retry_exit_code=1,
        mode="reschedule",
        poke_interval=30,
        timeout=timedelta(hours=1),
    )
    train = BashOperator(task_id="train", bash_command="feedloop train --ds {{ ds }}")
    publish_feeds = BashOperator(task_id="publish_feeds", bash_command="feedloop publish --ds {{ ds }}")
    report = BashOperator(task_id="report", bash_command="feedloop report --ds {{ ds }}")

    wait_for_events_partition >> train >> publish_feeds >> report


feedloop_daily_retrain()
