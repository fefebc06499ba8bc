"""The `feedloop` command: one subcommand per job or operation.

Airflow tasks, the Makefile and people all call these. Each subcommand imports
its module lazily, so `feedloop status` never pays for TensorFlow or pyspark.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
import urllib.request
from datetime import datetime, timezone

from feedloop.dates import iso_day
from feedloop.settings import SettingsError


def _ds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ds", required=True, type=iso_day, help="logical date YYYY-MM-DD (Airflow's {{ ds }})")


def _services(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("services", nargs="*", help="only these services (default: all)")


def _simulate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--events", type=int, default=5000, help="events to send (0: run for --duration)")
    parser.add_argument("--rate", type=float, default=0, help="events/s (0: as fast as possible)")
    parser.add_argument("--duration", type=float, default=0, help="seconds to run when --events is 0")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ds", default=None, help="put event times on this day (default: now)")
    parser.add_argument("--no-catalogue", action="store_true", help="do not (re)write the users/items tables")
    parser.add_argument("--to-hive", action="store_true",
                        help="bulk-load the events straight into Hive (validated; rejects to the DLQ) instead of "
                             "sending them to Kafka")
    from sources.simulator import add_arguments

    add_arguments(parser)


def _movielens(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="directory holding u.user, u.item, u.data (ML-100K format)")
    parser.add_argument("--limit", type=int, default=0, help="import only the first N ratings (0: all)")
    parser.add_argument("--to-hive", action="store_true",
                        help="bulk-load the events straight into Hive (validated; rejects to the DLQ) instead of "
                             "sending them to Kafka")


def _stream(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="process what is in Kafka now, then exit")


def _wait(parser: argparse.ArgumentParser) -> None:
    _ds(parser)
    parser.add_argument("--table", default="events")


def _backfill(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dag_id", nargs="?", default="feedloop_daily_retrain")
    parser.add_argument("--from-date", required=True, help="first day, YYYY-MM-DD")
    parser.add_argument("--to-date", required=True, help="last day, YYYY-MM-DD (inclusive)")
    parser.add_argument("--max-active-runs", type=int, default=2, help="days run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=6 * 3600)


def _dag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dag_id", nargs="?", default="feedloop_daily_retrain")
    _ds(parser)
    parser.add_argument("--timeout", type=float, default=1200)


def _retention(parser: argparse.ArgumentParser) -> None:
    _ds(parser)
    parser.add_argument("--keep-days", type=int, default=400)


def _none(parser: argparse.ArgumentParser) -> None:
    pass


# -- feedloop demo --------------------------------------------------------------


def fetch_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def run_skeleton(settings, ds: str, events: int = 5000) -> dict:
    """Simulate a day, wait for Hive, run the retrain DAG, read a feed. Returns what it saw."""
    from infra.airflow_client import cmd_run_dag
    from sources import simulator
    from sources.simulator import DEMO_ITEMS, DEMO_USERS
    from spark.partitions import partition_rows, wait_for_rows

    before = partition_rows(settings, "events", ds)
    print(f"[1/5] simulating {events} events for {ds} into Kafka", flush=True)
    sim_args = argparse.Namespace(users=DEMO_USERS, items=DEMO_ITEMS, events=events, rate=0, duration=0,
                                  seed=7, ds=ds, no_catalogue=False)
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


def demo(args) -> int:
    """`feedloop demo`: start everything and push one day of simulated events around the whole loop.

    event -> Kafka -> Spark streaming sink -> Hive -> Airflow-run retrain -> MLflow ->
    Redis feeds -> feed API; then the online learner is started on the new champion
    (clicks from now on fine-tune it and republish segment feeds); then print where to look.
    """
    from feedloop.settings import get_settings
    from infra.errors import ServiceError
    from infra.stack import up

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
  Dashboard      http://{host}:{settings.dashboard.port}   (login {settings.dashboard.admin_user} / {settings.dashboard.admin_password}; the loop, live)

  {beeline} -u jdbc:hive2://{settings.hive.hs2_host}:{settings.hive.hs2_port} -n {settings.hive.analyst_user} \\
      -w {settings.var / 'secrets' / 'hive__analyst_password'} -e "select count(*) from feedloop.events"
  curl -s http://{host}:{settings.api.port}/v1/feeds/users/u000001?limit=5

The online learner runs too: clicks and dwell from now on fine-tune the champion and republish the segment
feeds they touch as <version>+online.<n> (`feedloop simulate --api http://{host}:{settings.api.port}` sends some).

Everything keeps running: `make status` shows it, `make down` stops it. Logs: {settings.log_dir}""")
    return 0


# name: (module:function, help, argument adder)
COMMANDS = {
    "up": ("infra.stack:cmd_up", "install-free start of every service, in order, with health checks", _services),
    "down": ("infra.stack:cmd_down", "stop every process feedloop started", _none),
    "status": ("infra.stack:cmd_status", "health of every service", _none),
    "ddl": ("infra.hive:cmd_ddl", "apply hive/ddl/*.sql (idempotent)", _none),
    "topics": ("infra.kafka_broker:cmd_topics", "create the Kafka topics (idempotent)", _none),
    "supervise": ("infra.commands:cmd_supervise", "(internal) run one service in the foreground", lambda p: p.add_argument("service")),
    "simulate": ("sources.simulator:main", "publish simulated users' events to Kafka", _simulate),
    "import-movielens": ("sources.movielens:main", "import ML-100K users, items and ratings (as events)", _movielens),
    "stream-events": ("spark.stream_events:main", "Kafka -> validate -> Hive events (exactly once)", _stream),
    "stream-learner": ("spark.stream_learner:main",
                       "online learner: click/dwell events -> fine-tune the champion -> segment feeds", _stream),
    "wait-partition": ("spark.partitions:main", "exit 0 when the day's partition has rows, 1 otherwise", _wait),
    "compact": ("spark.maintenance:compact", "compact a day's streaming files in feedloop.events", _ds),
    "retention": ("spark.maintenance:retention", "drop partitions older than --keep-days", _retention),
    "analyze": ("spark.maintenance:analyze", "compute Hive statistics for a day's partitions", _ds),
    "train": ("models.train:main", "train the two-tower model on a day's data and register it", _ds),
    "baselines": ("models.baselines:main", "popularity, EASE and ALS baselines (tuned on validation) on the day's holdout, logged to MLflow", _ds),
    "gate": ("models.train:gate_main", "evaluate the day's new version against the champion and move the aliases", _ds),
    "features": ("spark.features:main_cli", "build user_features and item_features for --ds", _ds),
    "training-set": ("spark.training_set:main_cli", "build training_examples for --ds", _ds),
    "publish": ("models.publish:main", "publish segment and user feeds from the champion to Redis", _ds),
    "report": ("models.publish:report", "print a summary of a day's retrain", _ds),
    "serve": ("serving.app:main", "run the feed API", _none),
    "dashboard": ("dashboard.app:main", "run the live dashboard of the loop (the service `dashboard`)", _none),
    "run-dag": ("infra.airflow_client:cmd_run_dag", "trigger an Airflow DAG run for --ds and wait for it", _dag),
    "backfill": ("infra.airflow_client:cmd_backfill", "backfill a DAG over a range of days (Airflow's backfill) "
                 "and follow it", _backfill),
    "demo": ("feedloop.cli:demo", "run the walking skeleton end to end and print where to look", _none),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedloop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, add_args) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = COMMANDS[args.command][0].split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        result = func(args)
    except SettingsError as exc:
        print(f"feedloop: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        # Exit 1 means "not yet" to sensors (wait-partition); a crash must not look like that.
        traceback.print_exc()
        return 3
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
