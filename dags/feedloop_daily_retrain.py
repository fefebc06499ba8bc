"""Daily retrain for {{ ds }}: partition sensor >> features >> training set >> train >>
evaluate and gate >> publish feeds >> report, with the baselines beside train .. publish.

Configuration only. Every step runs a `feedloop` subcommand; the work and its imports
(pyspark, TensorFlow) live there. The Spark steps are Spark Connect clients of the
Thrift Server's long-running application, which runs on `spark.master` (a standalone
cluster in the cluster profile), so no step starts a JVM of its own
(docs/performance.md, "The daily DAG"); with `spark.connect: false` each starts its own
driver on `spark.master`, as spark-submit in client mode would.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.bash import BashSensor
from airflow.sdk import CronDataIntervalTimetable, dag

# Every step talks to Spark, the metastore or HiveServer2. A scheduler restart kills the running task, and
# a metastore restart takes up to minutes on a busy machine (docs/chaos.md): 4 retries, 1, 2, 4 then 8 min
# apart (15 min in all), outlast both; a step with a driver of its own (spark.connect false) also waits 2 min
# in its metastore client (settings.hive.metastore_connect_retries). A step that still fails is truly broken and fails the run.
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
    features = BashOperator(task_id="features", bash_command="feedloop features --ds {{ ds }}")
    training_set = BashOperator(task_id="training_set", bash_command="feedloop training-set --ds {{ ds }}")
    train = BashOperator(task_id="train", bash_command="feedloop train --ds {{ ds }}")
    baselines = BashOperator(task_id="baselines", bash_command="feedloop baselines --ds {{ ds }}")
    evaluate_and_gate = BashOperator(task_id="evaluate_and_gate", bash_command="feedloop gate --ds {{ ds }}")
    publish_feeds = BashOperator(task_id="publish_feeds", bash_command="feedloop publish --ds {{ ds }}")
    report = BashOperator(task_id="report", bash_command="feedloop report --ds {{ ds }}")

    # The baselines only log runs beside the two-tower one for comparison (the gate does not read them),
    # so they run beside train, evaluate_and_gate and publish_feeds, and the report waits for both.
    wait_for_events_partition >> features >> training_set >> [train, baselines]
    train >> evaluate_and_gate >> publish_feeds >> report
    baselines >> report


feedloop_daily_retrain()
