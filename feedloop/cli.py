"""The `feedloop` command: one subcommand per job or operation.

Airflow tasks, the Makefile and people all call these. Each subcommand imports
its module lazily, so `feedloop status` never pays for TensorFlow or pyspark.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone

from feedloop.dates import iso_day
from feedloop.settings import SettingsError


def _ds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ds", required=True, type=iso_day, help="logical date YYYY-MM-DD (Airflow's {{ ds }})")


def _services(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("services", nargs="*", help="only these services (default: all)")


def _up(parser: argparse.ArgumentParser) -> None:
    _services(parser)
    parser.add_argument("--profile", help="single (default) or cluster (infra/profiles/*.yaml; docs/cluster.md); "
                        "kept in var/run/profile for later commands until `feedloop down`")


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


def _demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retrain", action="store_true",
                        help="run the whole loop with the retrain DAG even when a champion exists")
    parser.add_argument("--events", type=int, default=None,
                        help=f"events to simulate (default {DEMO_EVENTS} with a retrain, {WARM_EVENTS} without)")
    parser.add_argument("--no-learner", action="store_true",
                        help="leave the online learner stopped (it holds a Spark JVM and TensorFlow, ~1.5 GB)")


def _none(parser: argparse.ArgumentParser) -> None:
    pass


# -- feedloop demo --------------------------------------------------------------


DEMO_EVENTS = 5000  # a day for the first retrain
WARM_EVENTS = 500  # a burst to watch arrive when a champion already serves


def fetch_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def champion_version(settings) -> str | None:
    """The registered model's ``champion`` version, None when there is none (MLflow's REST API, logged in)."""
    query = urllib.parse.urlencode({"name": settings.mlflow.model_name, "alias": "champion"})
    uri = settings.mlflow.tracking_uri or f"http://{settings.bind_host}:{settings.mlflow.port}"
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/registered-models/alias?{query}")
    login = f"{settings.mlflow.admin_user}:{settings.mlflow.admin_password}".encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(login).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return str(json.loads(resp.read())["model_version"]["version"])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # no such model, or no champion alias yet
            return None
        raise


def send_events(settings, ds: str, events: int, steps: str, catalogue: bool) -> int:
    """Simulate ``events`` for ``ds`` into Kafka; the partition's Hive row count before them."""
    from sources import simulator
    from sources.simulator import DEMO_ITEMS, DEMO_USERS
    from spark.partitions import partition_rows

    before = partition_rows(settings, "events", ds)
    print(f"[1/{steps}] simulating {events} events for {ds} into Kafka", flush=True)
    sim_args = argparse.Namespace(users=DEMO_USERS, items=DEMO_ITEMS, events=events, rate=0, duration=0,
                                  seed=7, ds=ds, no_catalogue=not catalogue)
    simulator.main(sim_args)
    return before


def land(settings, ds: str, before: int, events: int, steps: str, poll_s: float) -> int:
    """Wait until the sink has the ``events`` sent after ``before`` rows in Hive; the row count."""
    from spark.partitions import wait_for_rows

    print(f"[2/{steps}] waiting for the streaming sink to land them in Hive", flush=True)
    rows = wait_for_rows(settings, ds, before + events, poll_s=poll_s)
    print(f"      feedloop.events dt={ds}: {rows} rows ({rows - before} new)", flush=True)
    return rows


def simulate_and_land(settings, ds: str, events: int, steps: str, catalogue: bool) -> int:
    """Simulate ``events`` for ``ds`` into Kafka and wait until the sink has them in Hive; the row count."""
    before = send_events(settings, ds, events, steps, catalogue)
    return land(settings, ds, before, events, steps, poll_s=2 if not catalogue else 5)


def run_skeleton(settings, ds: str, events: int = DEMO_EVENTS) -> dict:
    """Simulate a day, wait for Hive, run the retrain DAG, read a feed. Returns what it saw."""
    from infra.airflow_client import cmd_run_dag

    rows = simulate_and_land(settings, ds, events, "5", catalogue=True)
    print("[3/5] running feedloop_daily_retrain through Airflow", flush=True)
    if cmd_run_dag(argparse.Namespace(dag_id="feedloop_daily_retrain", ds=ds, timeout=1800)) != 0:
        raise SystemExit(f"the DAG run failed; see {settings.log_dir / 'airflow'}")
    print("[4/5] reading a feed from the API", flush=True)
    feed = fetch_json(f"http://{settings.bind_host}:{settings.api.port}/v1/feeds/users/u000001?limit=5")
    return {"rows": rows, "feed": feed}


def warm_loop(settings, ds: str, events: int, champion: str, learner: bool, before: int | None) -> dict:
    """With a champion serving: a burst of events watched into Hive, the learner up, a feed read.
    ``before``: the burst was sent already (while the stack started), onto a partition of that many rows."""
    print(f"champion version {champion} serves the feeds: skipping the retrain "
          "(`feedloop demo --retrain`, or `make demo ARGS=--retrain`, runs it)", flush=True)
    if before is None:
        before = send_events(settings, ds, events, "4", catalogue=False)
    rows = land(settings, ds, before, events, "4", poll_s=1)
    start_learner(settings, "3/4", learner, wait=False)  # the feed is served already: nothing waits for it
    print("[4/4] reading a feed from the API", flush=True)
    feed = fetch_json(f"http://{settings.bind_host}:{settings.api.port}/v1/feeds/users/u000001?limit=5")
    return {"rows": rows, "feed": feed}


def early_burst(args, ds: str, sent: dict) -> Callable:
    """An ``after_wave`` hook for `up`: once MLflow and Hive are up (wave 2), and a champion exists, send
    the warm demo's burst, so that the streaming sink's first batch lands it while Airflow starts."""

    def after_wave(wave: int, settings) -> None:
        if wave != 2 or args.retrain or "champion" in sent:
            return
        sent["champion"] = champion_version(settings)
        if sent["champion"]:
            print(f"  champion version {sent['champion']} found: sending the demo's burst while the rest starts",
                  flush=True)
            sent["before"] = send_events(settings, ds, args.events or WARM_EVENTS, "4", catalogue=False)

    return after_wave


def demo(args) -> int:
    """`feedloop demo`: start everything and push simulated events around the whole loop.

    Without a champion (or with ``--retrain``): a day of events -> Kafka -> Spark streaming
    sink -> Hive -> Airflow-run retrain -> MLflow -> Redis feeds -> feed API, then the
    online learner on the new champion. With one: a burst of events watched into Hive, the
    online learner, a feed; the retrain is skipped and the output says so. Then where to look.
    """
    from feedloop.settings import get_settings
    from infra.errors import ServiceError
    from infra.stack import up

    started = time.time()
    ds = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    sent: dict = {}
    try:
        settings = up(after_wave=early_burst(args, ds, sent))
    except ServiceError as exc:
        print(f"feedloop demo: {exc}")
        return 1
    get_settings.cache_clear()
    settings = get_settings()
    champion = None if args.retrain else sent.get("champion") or champion_version(settings)
    if champion:
        result = warm_loop(settings, ds, args.events or WARM_EVENTS, champion, not args.no_learner,
                           sent.get("before"))
    else:
        result = run_skeleton(settings, ds, args.events or DEMO_EVENTS)
        start_learner(settings, "5/5", not args.no_learner)
    what = "retrain skipped, champion" if champion else "retrained; champion now"
    print(f"\nfeedloop demo done in {time.time() - started:.0f}s ({what} {champion or result['feed'].get('model_version')}): "
          f"{result['rows']} events in Hive for {ds}")
    print_where_to_look(settings, result["feed"])
    return 0


def start_learner(settings, step: str, wanted: bool, wait: bool = True) -> None:
    """Start the online learner; ``wait=False`` (the warm demo) leaves its Spark start (about 30 s) to run
    behind the rest of the demo instead of waiting for its health."""
    from infra.stack import start_in_background, up

    if not wanted:
        print(f"[{step}] online learner left stopped (--no-learner; `feedloop up stream-learner` starts it)", flush=True)
        return
    if not wait:
        eta = start_in_background(["stream-learner"], settings)
        print(f"[{step}] starting the online learner on the champion in the background"
              f"{f' (up in about {eta:.0f}s, as last time)' if eta else ''}; `feedloop status` shows it", flush=True)
        return
    print(f"[{step}] starting the online learner on the champion (feedloop up stream-learner)", flush=True)
    up(["stream-learner"], settings)


def print_where_to_look(settings, feed: dict) -> None:
    host = settings.bind_host
    beeline = ".venv/lib/python3.11/site-packages/pyspark/bin/beeline"
    print(f"""user u000001's feed from source '{feed.get('source')}', model version {feed.get('model_version')}: {[i['item_id'] for i in feed.get('items', [])]}

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


# name: (module:function, help, argument adder)
COMMANDS = {
    "up": ("infra.stack:cmd_up", "install-free start of every service, in order, with health checks", _up),
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
    "demo": ("feedloop.cli:demo", "run the loop end to end (the retrain only without a champion, or with --retrain) "
             "and print where to look", _demo),
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
