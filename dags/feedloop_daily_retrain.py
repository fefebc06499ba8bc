"""Daily retrain for {{ ds }}: partition sensor >> features >> training set >> train >>
baselines >> evaluate and gate >> publish feeds >> report.

Configuration only. The Spark steps go through SparkSubmitOperator (connection
`spark_default`, whose master feedloop sets from its settings); the others run a
`feedloop` subcommand. The work and its imports (pyspark, TensorFlow) live there.
"""

from __future__ import annotations

from datetime import timedelta

from pathlib import Path

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.bash import BashSensor
from airflow.sdk import CronDataIntervalTimetable, dag

SPARK_JOBS = Path(__file__).resolve().parent.parent / "spark"
# Every step talks to Spark, the metastore or HiveServer2. A scheduler restart kills the running task, and
# a metastore restart takes up to minutes on a busy machine (docs/chaos.md): 4 retries, 1, 2, 4 then 8 min
# apart (15 min in all), outlast both; the Spark jobs' metastore client also waits 2 min itself
# (settings.hive.metastore_connect_retries). A step that still fails is truly broken and fails the run.
DEFAULT_ARGS = {
    "owner": "feedloop",
    "retries": 4,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=8),
    "execution_timeout": timedelta(hours=2),
}


@dag(
    dag_id="feedloop_daily_retrain",
    description="Retrain the two-tower model on a day of feedback and publish fresh feeds",
    # A data interval per day, so a run's {{ ds }} is the (complete) day it trains on,
    # scheduled just after that day ends. Plain "@daily" in Airflow 3 would give each
    # run the date it starts on, i.e. a day with no data yet.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    # The earliest event time feedloop accepts (feedloop.events.MIN_TS_MS), so any day of
    # history (e.g. imported MovieLens ratings of 1998) can be run; catchup=False keeps the
    # scheduler from creating those runs by itself.
    start_date=pendulum.datetime(1995, 1, 1, tz="UTC"),
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
    features = SparkSubmitOperator(
        task_id="features", application=str(SPARK_JOBS / "features.py"), application_args=["--ds", "{{ ds }}"],
        conn_id="spark_default", name="feedloop-features-{{ ds }}",
    )
    training_set = SparkSubmitOperator(
        task_id="training_set", application=str(SPARK_JOBS / "training_set.py"),
        application_args=["--ds", "{{ ds }}"], conn_id="spark_default", name="feedloop-training-set-{{ ds }}",
    )
    train = BashOperator(task_id="train", bash_command="feedloop train --ds {{ ds }}")
    baselines = BashOperator(task_id="baselines", bash_command="feedloop baselines --ds {{ ds }}")
    evaluate_and_gate = BashOperator(task_id="evaluate_and_gate", bash_command="feedloop gate --ds {{ ds }}")
    publish_feeds = BashOperator(task_id="publish_feeds", bash_command="feedloop publish --ds {{ ds }}")
    report = BashOperator(task_id="report", bash_command="feedloop report --ds {{ ds }}")

    (wait_for_events_partition >> features >> training_set >> train >> baselines >> evaluate_and_gate
     >> publish_feeds >> report)


feedloop_daily_retrain()
