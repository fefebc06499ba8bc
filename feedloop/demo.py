"""`feedloop demo`: start everything and push one day of simulated events around the whole loop.

event -> Kafka -> Spark streaming sink -> Hive -> Airflow-run retrain -> MLflow ->
Redis feeds -> feed API; then the online learner is started on the new champion
(clicks from now on fine-tune it and republish segment feeds); then print where to look.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from datetime import datetime, timezone

from feedloop.settings import get_settings

DEMO_USERS, DEMO_ITEMS, DEMO_EVENTS = 200, 300, 5000


def fetch_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def run_skeleton(settings, ds: str, events: int = DEMO_EVENTS) -> dict:
    """Simulate a day, wait for Hive, run the retrain DAG, read a feed. Returns what it saw."""
    from feedloop import simulator
    from feedloop.airflow_client import cmd_run_dag
    from spark.partitions import partition_rows, wait_for_rows

    before = partition_rows(settings, "events", ds)
    print(f"[1/5] simulating {events} events for {ds} into Kafka", flush=True)
    sim_args = argparse.Namespace(users=DEMO_USERS, items=DEMO_ITEMS, events=events, rate=0, duration=0,
                                  seed=7, ds=ds, no_catalog=False)
    simulator.main(sim_args)
    print("[2/5] waiting for the streaming sink to land them in Hive", flush=True)
    rows = wait_for_rows(settings, ds, before + events)
    print(f"      feedloop.events dt={ds}: {rows} rows", flush=True)
    print("[3/5] running feedloop_daily_retrain through Airflow", flush=True)
    if cmd_run_dag(argparse.Namespace(dag_id="feedloop_daily_retrain", ds=ds, timeout=1800)) != 0:
        raise SystemExit(f"the DAG run failed; see {settings.log_dir / 'airflow'}")
    print("[4/5] reading a feed from the API", flush=True)
    feed = fetch_json(f"http://{settings.bind_host}:{settings.api.port}/v1/feeds/users/u000001?limit=5")
    return {"rows": rows, "feed": feed}


def main(args) -> int:
    from feedloop.services import ServiceError, up

    started = time.time()
    try:
        settings = up()
    except ServiceError as exc:
        print(f"feedloop demo: {exc}")
        return 1
    get_settings.cache_clear()
    settings = get_settings()
    ds = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    result = run_skeleton(settings, ds)
    print("[5/5] starting the online learner on the champion (feedloop up stream-learner)", flush=True)
    up(["stream-learner"], settings)
    feed = result["feed"]
    host = settings.bind_host
    beeline = ".venv/lib/python3.11/site-packages/pyspark/bin/beeline"
    print(f"""
feedloop demo done in {time.time() - started:.0f}s: {result['rows']} events in Hive for {ds}; user u000001's feed
from source '{feed.get('source')}', model version {feed.get('model_version')}: {[i['item_id'] for i in feed.get('items', [])]}

  Airflow UI     http://{host}:{settings.airflow.port}   (login {settings.airflow.admin_user} / {settings.airflow.admin_password})
  MLflow UI      http://{host}:{settings.mlflow.port}   (login {settings.mlflow.admin_user} / {settings.mlflow.admin_password}; model {settings.mlflow.model_name}, alias champion)
  HiveServer2    jdbc:hive2://{settings.hive.hs2_host}:{settings.hive.hs2_port}   (login {settings.hive.analyst_user}, password in {settings.var / 'secrets' / 'hive__analyst_password'})
  Feed API       http://{host}:{settings.api.port}/docs

  {beeline} -u jdbc:hive2://{settings.hive.hs2_host}:{settings.hive.hs2_port} -n {settings.hive.analyst_user} \\
      -w {settings.var / 'secrets' / 'hive__analyst_password'} -e "select count(*) from feedloop.events"
  curl -s http://{host}:{settings.api.port}/v1/feeds/users/u000001?limit=5

The online learner runs too: clicks and dwell from now on fine-tune the champion and republish the segment
feeds they touch as <version>+online.<n> (`feedloop simulate --api http://{host}:{settings.api.port}` sends some).

Everything keeps running: `make status` shows it, `make down` stops it. Logs: {settings.log_dir}""")
    return 0
