"""`python -m bench.chaos`: a chaos soak of the running stack: kill -9 a component every 2 minutes.

Runs against the running dev stack (`make up`, a champion: `make demo`), for
``--minutes`` (30). While it runs:

* a load thread sends the simulator's events to Kafka at ``--rate`` events/s
  (idempotent, acks=all; the simulator's ``EventProducer``), with feed-following
  clicks: ``--visits-per-s`` of the actions are users reading their feed through
  the API and clicking by their hidden preferences (``sources.simulator``), the
  rest are organic actions. Every event carries ``chaos_run = <run id>``, a field
  outside schema v1 that the sink keeps in ``events.extra``, so the end count
  selects exactly the soak's events. An event whose delivery fails (Kafka down
  longer than the producer's message timeout) is sent again with the same
  ``event_id``, as a client should (the sink keeps one row per id);
* a reader process asks ``GET /v1/feeds/users/{id}`` ``--reads-per-s`` times a
  second and records each status and latency. Only 200 and 503s within
  ``GOAL_503_S`` are allowed; a connection error (refused, or reset: the API
  process itself is down) within ``FAST_CONNECTION_ERROR_S`` is counted apart and
  allowed; anything else (another status, a slow 503, a timeout, a slow
  connection error) is a violation;
* the first minute (``--baseline-s``) is left undisturbed: the baseline. From then
  on, every ``--interval`` seconds, one component chosen by a seeded RNG (the list
  shuffled, then cycled, so a run with 8 kills or more covers all of them) is
  killed with SIGKILL: the process group of the pid the supervisor reports
  (``getProcessInfo(name)['pid']``; supervisord makes each program a group
  leader), plus any descendant that left the group, after checking on its
  command line that it is the service. The outage is the time from the kill
  until the supervisor shows a new pid RUNNING and the service's health check in
  ``infra.health`` passes (for the two streaming apps: a batch or a successful
  idle poll of Kafka since the new process started); the time to their first
  batch after the kill (their progress file) is reported too;
* at the first kill the daily retrain DAG is triggered (``--dag-ds``, default
  today, through ``infra.airflow_client``) and followed; it must succeed.

At the end the load stops, every event is acknowledged (bounded), the bench
waits (bounded, ``--catchup-timeout``, with progress) until the sink's consumer
lag is 0 and Hive holds as many of the soak's events as Kafka acknowledged, and
counts them: ``count(*)`` and ``count(DISTINCT event_id)`` over the soak's
``chaos_run`` in the days its events fall in.

The rate: half of the sink's measured capacity with the whole stack running.
``--measure`` measures it before the soak (a burst of ``--measure-events`` tagged
events as fast as the producer takes them, timed from the sink's first batch that
holds some of them until all are written; those events are counted like the others). Without it the rate is
``DEFAULT_RATE`` (3,069/s): half of ``WHOLE_STACK_CAPACITY_PER_S``, 6,138/s,
measured that way on the dev stack here at load average ~7 (bench.ingest's
20,500/s is the sink alone on an idle machine). On a busier machine the sink
drains less: measure, or pass ``--rate``.

The last stdout line is one JSON object: events acknowledged vs in Hive and
duplicates, feed reads by outcome, violations, the p99 of 503 latency, the
longest outage per component, the DAG run's state, the same-run baseline
(success share and 200-latency p50 of the undisturbed first minute against the
chaos phase, and their ratios), load averages, and ``ok``: true only when acked
== in Hive, no duplicate, no violation, the DAG run succeeded and every killed
component came back.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import random
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone

from bench.ingest import consumer_lag, percentile, rnd
from feedloop.eta import Steps

COMPONENTS = ("kafka", "metastore", "thriftserver", "redis", "stream-events", "stream-learner", "api",
              "airflow-scheduler")
# What the killed process's command line must hold: proof that the pid is the service.
MARKERS = {
    "kafka": "kafka.Kafka", "metastore": "LoopbackMetastore", "thriftserver": "HiveThriftServer2",
    "redis": "redis-server", "stream-events": "stream-events", "stream-learner": "stream-learner",
    "api": "serve", "airflow-scheduler": "scheduler",
    "airflow-worker": "feedloop@",  # --celery-hostname feedloop@<host>, kept when Celery retitles the process
}
PROGRESS_FILES = {"stream-events": "stream-events.json", "stream-learner": "stream-learner.json"}
DAG_ID = "feedloop_daily_retrain"

# bench.ingest's drain rate of the sink alone on an idle machine (docs/events.md), and the
# sink's rate with the whole dev stack up (learner included, no DAG run) on the 2-core machine,
# measured with --measure (200,000 events, after the first batch; load average ~7, 2026-11-30).
INGEST_CAPACITY_PER_S = 20_500
WHOLE_STACK_CAPACITY_PER_S = 6_138
DEFAULT_RATE = WHOLE_STACK_CAPACITY_PER_S // 2

GOAL_503_S = 1.0  # reference: a 503 slower than this is a violation
FAST_CONNECTION_ERROR_S = 1.0  # a connection error (the API process is down) faster than this is allowed
READ_TIMEOUT_S = 5.0
RECOVERY_TIMEOUT_S = 600.0  # a component not back by then is reported as not recovered
REPORT_EVERY_S = 30.0
POLL_S = 0.5
DAG_POLL_S = 15.0
ALLOWED = ("200", "503_fast", "conn_refused_fast", "conn_error_fast")


def log(message: str) -> None:
    print(f"[bench.chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- pure helpers (unit-tested) ------------------------------------------------------
def kill_order(seed: int, n: int, components: tuple[str, ...] = COMPONENTS) -> list[str]:
    """``n`` components to kill: the list shuffled by ``seed``, then again, cycled, so every
    component comes once in each run of ``len(components)`` kills."""
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < n:
        cycle = list(components)
        rng.shuffle(cycle)
        if order and cycle[0] == order[-1]:  # never the same component twice in a row
            cycle.append(cycle.pop(0))
        order += cycle
    return order[:n]


def kill_times(total_s: float, baseline_s: float, interval_s: float) -> list[float]:
    """Seconds since the start of the soak at which to kill: after the baseline, every interval."""
    out, t = [], baseline_s
    while t < total_s:
        out.append(t)
        t += interval_s
    return out


def classify_read(outcome: str, seconds: float) -> str:
    """One feed read's class: ``200``, ``503_fast``/``503_slow``, ``conn_refused_fast``/``_slow``,
    ``conn_error_fast``/``_slow`` (reset, broken: a request in flight when the API died), ``timeout``,
    or ``status_<code>``."""
    if outcome == "200":
        return "200"
    if outcome == "503":
        return "503_fast" if seconds <= GOAL_503_S else "503_slow"
    if outcome in ("conn_refused", "conn_error"):
        return f"{outcome}_{'fast' if seconds <= FAST_CONNECTION_ERROR_S else 'slow'}"
    if outcome == "timeout":
        return outcome
    return f"status_{outcome}"


def read_stats(reads: list[tuple[float, str, float]], start: float, end: float) -> dict:
    """Feed reads (wall time, outcome, seconds) in [start, end): counts by class, success share,
    latency of 200s (p50, p99 ms), violations, and the p99 of 503 latency."""
    window = [(outcome, seconds) for at, outcome, seconds in reads if start <= at < end]
    classes: dict[str, int] = {}
    for outcome, seconds in window:
        name = classify_read(outcome, seconds)
        classes[name] = classes.get(name, 0) + 1
    ok_ms = [1000 * s for o, s in window if o == "200"]
    slow_ms = [1000 * s for o, s in window if o == "503"]
    return {
        "reads": len(window),
        "by_class": dict(sorted(classes.items())),
        "violations": sum(n for name, n in classes.items() if name not in ALLOWED),
        "success_share": round(classes.get("200", 0) / len(window), 4) if window else None,
        "p50_200_ms": rnd(percentile(ok_ms, 50), 1),
        "p99_200_ms": rnd(percentile(ok_ms, 99), 1),
        "p99_503_ms": rnd(percentile(slow_ms, 99), 1),
        "max_503_ms": rnd(max(slow_ms, default=None), 1),
    }


def ratio(chaos: float | None, baseline: float | None) -> float | None:
    return round(chaos / baseline, 3) if chaos is not None and baseline else None


def outage_summary(kills: list[dict], components: tuple[str, ...] = COMPONENTS) -> dict:
    """Per component: kills, the longest outage (s) and whether every kill recovered."""
    out = {}
    for name in components:
        mine = [k for k in kills if k["component"] == name and k.get("killed")]
        downs = [k["down_s"] for k in mine if k.get("down_s") is not None]
        out[name] = {
            "kills": len(mine),
            "longest_s": max(downs, default=None),
            "recovered": all(k.get("down_s") is not None for k in mine) if mine else None,
        }
        batches = [k["first_batch_s"] for k in mine if k.get("first_batch_s") is not None]
        if name in PROGRESS_FILES:
            out[name]["longest_to_first_batch_s"] = max(batches, default=None)
            # killed again, or RECOVERY_TIMEOUT_S passed, before a batch: longer than any of the above
            out[name]["kills_without_batch"] = len(mine) - len(batches)
    return out


def verdict(acked: int, in_hive: int | None, duplicates: int | None, violations: int, dag_state: str | None,
            all_recovered: bool) -> bool:
    """The soak passes only when Hive holds exactly what Kafka acknowledged, once each, no feed read
    broke the rules, the DAG run succeeded and every killed component came back."""
    return (in_hive is not None and acked == in_hive and duplicates == 0 and violations == 0
            and dag_state == "success" and all_recovered)


# -- the feed reader (its own process: its latencies are not the load thread's GIL) --------
def read_feeds(base_url: str, users: list[str], per_s: float, seed: int, stop, out) -> None:
    """GET feeds at ``per_s`` until ``stop`` is set; put lists of (wall time, outcome, seconds) on ``out``."""
    rng = random.Random(seed)
    chunk: list[tuple[float, str, float]] = []
    next_at, last_put = time.monotonic(), time.monotonic()
    while not stop.is_set():
        user = rng.choice(users)
        started_wall, started = time.time(), time.monotonic()
        try:
            with urllib.request.urlopen(f"{base_url}/v1/feeds/users/{user}?limit=10", timeout=READ_TIMEOUT_S) as resp:
                resp.read()
                outcome = str(resp.status)
        except urllib.error.HTTPError as exc:
            exc.read()
            outcome = str(exc.code)
        except urllib.error.URLError as exc:
            reason = exc.reason
            outcome = ("timeout" if isinstance(reason, (socket.timeout, TimeoutError))
                       else "conn_refused" if isinstance(reason, ConnectionRefusedError) else "conn_error")
        except (socket.timeout, TimeoutError):
            outcome = "timeout"
        except (ConnectionError, OSError, ValueError):
            outcome = "conn_error"
        chunk.append((started_wall, outcome, time.monotonic() - started))
        now = time.monotonic()
        if now - last_put >= 1.0:
            out.put(chunk)
            chunk, last_put = [], now
        next_at = max(next_at + 1 / per_s, now)  # behind schedule: no burst to catch up
        time.sleep(max(0.0, next_at - now))
    out.put(chunk)
    out.put(None)


# -- the load ------------------------------------------------------------------------
def tagged_producer(settings):
    """The simulator's confluent producer, counting acknowledgements and keeping failed events to resend."""
    from feedloop.clients import EventProducer

    class TaggedProducer(EventProducer):
        def __init__(self):
            import confluent_kafka

            # librdkafka logs every refused connect while Kafka is down (hundreds of lines a kill);
            # the bench says when Kafka is down and back, so keep only its critical messages.
            real = confluent_kafka.Producer
            confluent_kafka.Producer = lambda conf: real({**conf, "log_level": 2})
            try:
                super().__init__(settings, "confluent", client_id="bench-chaos")
            finally:
                confluent_kafka.Producer = real
            self.acked = 0
            self.retry: list[bytes] = []

        def _delivered(self, err, msg) -> None:
            if err is None:
                self.acked += 1
            else:
                self._failed(err)
                self.retry.append(msg.value())

        def resend(self, topic: str) -> int:
            """Send again, with the same event ids, what failed; return how many."""
            import orjson

            again, self.retry = self.retry, []
            for value in again:
                self.send(topic, orjson.loads(value))
            return len(again)

        def poll(self, seconds: float = 0.0) -> None:
            self._producer.poll(seconds)

        def in_flight(self) -> int:
            return len(self._producer)

    return TaggedProducer()


class Visitor(threading.Thread):
    """Feed visits through the API at ``per_s``: users read their feed and click by their preferences.

    Its own thread (a visit waits on the API, up to the simulator's 2 s timeout) and its own
    simulator on the same catalogue; the events go to the load thread through ``out``.
    """

    def __init__(self, settings, sim, per_s: float, out: queue.Queue, stop: threading.Event):
        super().__init__(daemon=True, name="visitor")
        from sources.simulator import FeedStats

        self.sim, self.per_s, self.out, self.stop_event = sim, per_s, out, stop
        self.feeds = FeedStats()
        self.opts = {"api": f"http://{settings.bind_host}:{settings.api.port}", "feed_limit": 10}

    def run(self) -> None:
        from sources.simulator import visit

        next_at = time.monotonic()
        while not self.stop_event.is_set():
            self.out.put(visit(self.sim, self.opts, self.feeds))  # an organic action when the API fails
            next_at = max(next_at + 1 / self.per_s, time.monotonic() - 1)
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))


class Load(threading.Thread):
    """The simulator's events at ``rate``/s in all, the feed visits' events included."""

    def __init__(self, settings, run_id: str, rate: float, visits_per_s: float, seed: int):
        super().__init__(daemon=True, name="load")
        from sources.simulator import DEMO_ITEMS, DEMO_USERS
        from sources.simulator import Simulator, make_catalogue

        self.settings, self.run_id, self.rate = settings, run_id, rate
        users, items = make_catalogue(DEMO_USERS, DEMO_ITEMS, 7)  # the demo's catalogue (same seed, same ids)
        self.user_ids = [u.user_id for u in users]
        self.sim = Simulator(users, items, seed)
        self.stop_event = threading.Event()
        self.visits: queue.Queue = queue.Queue()
        self.visitor = Visitor(settings, Simulator(users, items, seed + 100), visits_per_s, self.visits,
                               self.stop_event) if visits_per_s else None
        self.producer = tagged_producer(settings)
        self.topic = settings.kafka.events_topic
        self.sent = self.resent = 0
        self.min_ts = self.max_ts = None
        self.error: str | None = None

    @property
    def feeds(self):
        from sources.simulator import FeedStats

        return self.visitor.feeds if self.visitor else FeedStats()

    def send(self, events: list[dict]) -> None:
        for event in events:
            event["chaos_run"] = self.run_id
            self.producer.send(self.topic, event)
            ts = event["ts"]
            self.min_ts = ts if self.min_ts is None else min(self.min_ts, ts)
            self.max_ts = ts if self.max_ts is None else max(self.max_ts, ts)
        self.sent += len(events)

    def burst(self, n: int) -> None:
        """``n`` organic events as fast as the producer takes them (the capacity measurement)."""
        sent = 0
        while sent < n:
            events = self.sim.events_for_action()
            self.send(events)
            sent += len(events)

    def run(self) -> None:
        from sources.simulator import Pacer

        pacer = Pacer(self.rate)
        if self.visitor:
            self.visitor.start()
        try:
            while not self.stop_event.is_set():
                if self.producer.retry:
                    self.resent += self.producer.resend(self.topic)
                try:
                    events = self.visits.get_nowait()
                except queue.Empty:
                    events = self.sim.events_for_action()
                self.send(events)
                pacer.wait(len(events), 1.0)
            while not self.visits.empty():
                self.send(self.visits.get_nowait())
        except Exception as exc:  # noqa: BLE001 - reported in the summary; the soak goes on measuring
            self.error = f"{type(exc).__name__}: {exc}"
            log(f"load thread stopped: {self.error}")

    def finish(self, timeout_s: float) -> int:
        """Stop sending; wait (bounded) until every event is acknowledged, resending failures; return left."""
        self.stop_event.set()
        if self.visitor:
            self.visitor.join(10)
        self.join(10)
        deadline = time.time() + timeout_s
        last = 0.0
        while time.time() < deadline:
            if self.producer.retry:
                self.resent += self.producer.resend(self.topic)
            self.producer.poll(0.5)
            left = self.producer.in_flight() + len(self.producer.retry)
            if not left:
                return 0
            if time.time() - last > 10:
                log(f"waiting for Kafka to acknowledge {left:,} events ({self.producer.acked:,} acked)")
                last = time.time()
        return self.producer.in_flight() + len(self.producer.retry)


# -- killing and recovery --------------------------------------------------------------
def kill_component(rpc, name: str) -> dict:
    """SIGKILL the process group of ``name``'s supervised pid (and descendants outside it)."""
    import psutil

    info = rpc.getProcessInfo(name)
    pid = info["pid"]
    if info["statename"] != "RUNNING" or not pid:
        return {"component": name, "killed": False, "why": f"not running ({info['statename']})"}
    proc = psutil.Process(pid)
    cmdline = " ".join(proc.cmdline())
    if MARKERS[name] not in cmdline:
        return {"component": name, "killed": False, "why": f"pid {pid} is not {name}: {cmdline[:200]}"}
    pgid = os.getpgid(pid)
    if pgid != pid or pgid == os.getpgid(0):
        return {"component": name, "killed": False, "why": f"pid {pid} is not a group leader (group {pgid})"}
    tree = [proc, *proc.children(recursive=True)]
    kinds = sorted({p.name() for p in tree if p.is_running()})
    killed_at = time.time()
    os.killpg(pgid, signal.SIGKILL)
    strays = 0
    for p in tree[1:]:  # a descendant that made its own group survives killpg
        try:
            if os.getpgid(p.pid) != pgid:
                p.kill()
                strays += 1
        except (psutil.Error, ProcessLookupError):
            pass
    return {"component": name, "killed": True, "pid": pid, "processes": len(tree), "kinds": kinds,
            "outside_group": strays, "at": killed_at}


def _progress_updated(settings, name: str) -> float:
    try:
        return json.loads((settings.var / "run" / PROGRESS_FILES[name]).read_text())["updated_at"]
    except (OSError, ValueError, KeyError):
        return 0.0


class Outage:
    """One kill: from the kill until a new pid is RUNNING and healthy (and, for a streaming app, a batch)."""

    def __init__(self, kill: dict):
        self.kill = kill
        self.done = not kill.get("killed")

    def check(self, settings, rpc) -> None:
        from infra.registry import BY_NAME

        kill, name = self.kill, self.kill["component"]
        now = time.time()
        if kill.get("down_s") is None:
            info = rpc.getProcessInfo(name)
            if info["statename"] == "FATAL":  # the supervisor gave up: start it, and say so
                kill["fatal"] = kill.get("fatal", 0) + 1
                log(f"{name} is FATAL (the supervisor gave up restarting it); starting it by hand")
                rpc.startProcess(name, False)
            elif info["statename"] == "RUNNING" and info["pid"] != kill["pid"] and BY_NAME[name].health(settings):
                kill["down_s"] = round(now - kill["at"], 1)
                kill["new_pid"] = info["pid"]
                log(f"  {name} back after {kill['down_s']} s (pid {info['pid']}, RUNNING and healthy)")
        if name in PROGRESS_FILES and kill.get("first_batch_s") is None and _progress_updated(settings, name) > kill["at"]:
            kill["first_batch_s"] = round(now - kill["at"], 1)
            log(f"  {name}: first batch {kill['first_batch_s']} s after the kill")
        waiting_batch = name == "stream-events" and kill.get("first_batch_s") is None
        if kill.get("down_s") is not None and not waiting_batch:
            self.done = True
        elif now - kill["at"] > RECOVERY_TIMEOUT_S:
            log(f"  {name} not back {RECOVERY_TIMEOUT_S:.0f} s after the kill")
            self.done = True


# -- the DAG --------------------------------------------------------------------------
class DagWatch(threading.Thread):
    """Trigger the retrain DAG for ``ds`` (the existing client) and follow it until it finishes."""

    def __init__(self, settings, ds: str):
        super().__init__(daemon=True, name="dag")
        self.settings, self.ds = settings, ds
        self.run_id: str | None = None
        self.state: str | None = None
        self.started = self.finished = None
        self.error: str | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        from datetime import date

        from infra.airflow_client import AirflowApiError, AirflowClient, start_run, wait_for_dag

        self.started = time.time()
        try:
            with AirflowClient.from_settings(self.settings) as client:
                dag = wait_for_dag(client, DAG_ID)
                self.run_id = start_run(client, DAG_ID, date.fromisoformat(self.ds))
                if dag.get("is_paused"):
                    client.set_paused(DAG_ID, False)
                log(f"DAG {DAG_ID} for {self.ds}: run {self.run_id}")
                while not self.stop_event.is_set():
                    try:
                        state = client.get_run(DAG_ID, self.run_id)["state"]
                    except (AirflowApiError, OSError) as exc:  # the api-server under load: ask again
                        log(f"DAG state unknown for now ({exc})")
                        state = self.state
                    if state != self.state:
                        log(f"DAG run {self.run_id}: {state}")
                        self.state = state
                    if state in ("success", "failed"):
                        self.finished = time.time()
                        return
                    self.stop_event.wait(DAG_POLL_S)
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            self.error = f"{type(exc).__name__}: {exc}"
            log(f"DAG watch failed: {self.error}")


# -- Hive ------------------------------------------------------------------------------
def days_between(min_ts: int, max_ts: int) -> list[str]:
    """The UTC days (events' dt) from ``min_ts`` to ``max_ts`` (ms), inclusive."""
    day_ms = 86_400_000
    return [datetime.fromtimestamp(d * day_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
            for d in range(min_ts // day_ms, max_ts // day_ms + 1)]


def count_in_hive(settings, run_id: str, days: list[str]) -> tuple[int, int]:
    """(rows, distinct event ids) of the soak's events in Hive."""
    from feedloop.clients import hive_connection

    conn = hive_connection(settings, settings.hive.database)
    try:
        cursor = conn.cursor()
        in_days = ", ".join(f"'{d}'" for d in days)
        cursor.execute(f"SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events "
                       f"WHERE dt IN ({in_days}) AND extra['chaos_run'] = %s", (run_id,))
        rows, distinct = cursor.fetchone()
        return int(rows), int(distinct)
    finally:
        conn.close()


class Background(threading.Thread):
    """Run ``fn`` in a daemon thread (a Hive query has no timeout of its own); ``result`` or ``error`` when done."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result = self.error = None
        self.started_at = time.time()
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except Exception as exc:  # noqa: BLE001 - the caller reports it
            self.error = f"{type(exc).__name__}: {str(exc)[:200]}"


def catch_up(settings, run_id: str, days: list[str], producer, timeout_s: float) -> dict:
    """Wait (bounded) until the sink's lag is 0 and Hive holds every acknowledged soak event; count them.

    The producer is polled meanwhile, so an acknowledgement that comes late still counts. The
    count that decides is one started after the lag was seen at 0; once two such counts agree,
    it is final even if short of the acknowledged events (some are missing).
    """
    started = time.time()
    rows = distinct = None
    lag_zero_at = None
    counting: Background | None = None
    counted_at, finals = 0.0, []
    last_log = 0.0
    while True:
        producer.poll(0)
        acked = producer.acked
        elapsed = time.time() - started
        try:
            lag = consumer_lag(settings)
        except Exception as exc:  # noqa: BLE001 - Kafka still recovering: ask again
            lag = f"unknown ({type(exc).__name__})"
        if lag == 0 and lag_zero_at is None:
            lag_zero_at = time.time()
        elif lag != 0:
            lag_zero_at = None
        if counting is not None and not counting.is_alive():
            if counting.error:
                log(f"catch-up: Hive count failed ({counting.error}); retrying")
            else:
                rows, distinct = counting.result
                if lag_zero_at is not None and counting.started_at >= lag_zero_at:
                    finals.append((rows, distinct))
            counting, counted_at = None, time.time()
        if counting is None and (lag == 0 or time.time() - counted_at > 30):
            counting = Background(count_in_hive, settings, run_id, days)
        if time.time() - last_log > 10:
            log(f"catch-up {elapsed:4.0f}s: consumer lag {lag}, in Hive {rows}/{acked:,} acknowledged"
                + (" (counting)" if counting is not None else ""))
            last_log = time.time()
        settled = bool(finals) and (finals[-1][0] >= acked or (len(finals) >= 2 and finals[-1] == finals[-2]))
        if settled or elapsed > timeout_s:
            if finals:
                rows, distinct = finals[-1]
            return {"rows": rows, "distinct": distinct, "seconds": round(elapsed, 1), "lag_at_end": lag,
                    "final_count": bool(finals)}
        time.sleep(2)


def measure_capacity(settings, load: Load, n: int, timeout_s: float = 600) -> float | None:
    """Events/s the sink drains with the whole stack up: a burst of ``n`` events, timed from the sink's
    first batch holding some of them until all are written (the sink's progress file), as bench.ingest does."""
    from bench.ingest import sink_progress, steady_rate

    def written() -> int:
        progress = sink_progress(settings)
        return progress["since_start"]["valid"] if progress else 0

    before, started = written(), time.time()
    load.burst(n)
    load.producer.flush()
    log(f"capacity: {n:,} events sent in {time.time() - started:.1f}s; timing the sink")
    timeline: list[tuple[float, int]] = []
    last = 0.0
    while time.time() - started < timeout_s:
        done = written() - before
        if done < 0:  # the sink restarted (its counters too): start over
            return None
        timeline.append((time.time() - started, done))
        if done >= n:
            break
        if time.time() - last > 10:
            log(f"capacity: {done:,}/{n:,} written by the sink after {time.time() - started:.0f}s")
            last = time.time()
        time.sleep(0.25)
    rate, first_s, all_s = steady_rate(timeline, n)
    log(f"capacity: first batch after {rnd(first_s, 1)} s, all after {rnd(all_s, 1)} s: "
        f"{round(rate or 0):,} events/s")
    return rate


# -- main ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30, help="length of the soak, baseline minute included")
    parser.add_argument("--interval", type=float, default=120, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=13, help="seed of the kill order and of the simulated users")
    parser.add_argument("--rate", type=float, default=None,
                        help=f"events/s (default: half the measured capacity, {DEFAULT_RATE:,})")
    parser.add_argument("--measure", action="store_true", help="measure the sink's capacity first; rate = half")
    parser.add_argument("--measure-events", type=int, default=200_000)
    parser.add_argument("--visits-per-s", type=float, default=10, help="feed visits (reads + clicks) per second")
    parser.add_argument("--reads-per-s", type=float, default=20, help="feed reads per second of the reader")
    parser.add_argument("--baseline-s", type=float, default=60, help="undisturbed seconds before the first kill")
    parser.add_argument("--dag-ds", default=None, help="day the retrain DAG runs for (default: today, UTC)")
    parser.add_argument("--no-dag", action="store_true", help="do not run the DAG (the summary's ok is then false)")
    parser.add_argument("--dag-timeout", type=float, default=1200, help="seconds to wait for the DAG after the soak")
    parser.add_argument("--catchup-timeout", type=float, default=600)
    parser.add_argument("--components", default=",".join(COMPONENTS), help="comma-separated components to kill")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    unknown = [c for c in components if c not in MARKERS]
    if unknown:
        print(f"bench.chaos: unknown components {unknown}; known: {', '.join(COMPONENTS)}", file=sys.stderr)
        return 2

    from bench.freshness import ensure_learner
    from feedloop.settings import get_settings
    from infra.stack import status_rows
    from infra.supervision import supervisor, supervisor_running

    settings = get_settings()
    if not supervisor_running(settings):
        print("bench.chaos: the stack is not running: `make up` (and a champion: `make demo`)", file=sys.stderr)
        return 2
    if "stream-learner" in components:
        ensure_learner(settings)
    down = [r["service"] for r in status_rows(settings) if not r["healthy"]]
    if down:
        print(f"bench.chaos: not healthy before the soak: {', '.join(down)} (`feedloop status`)", file=sys.stderr)
        return 2
    rpc = supervisor(settings)
    run_id = f"chaos-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    total_s = args.minutes * 60
    loads: list[list[float]] = [[round(x, 2) for x in os.getloadavg()]]
    log(f"run {run_id}: {args.minutes:g} min, a kill every {args.interval:g} s after {args.baseline_s:g} s, "
        f"seed {args.seed}, components {', '.join(components)}")

    capacity = None
    rate_source = "flag" if args.rate else "default"
    load = Load(settings, run_id, args.rate or DEFAULT_RATE, args.visits_per_s, args.seed)
    if args.measure:
        capacity = measure_capacity(settings, load, args.measure_events)
        if capacity and not args.rate:
            load.rate, rate_source = capacity / 2, "measured"
    rate, burst_sent = load.rate, load.sent
    log(f"rate {rate:,.0f} events/s ({rate_source}), {args.visits_per_s:g} feed visits/s, "
        f"{args.reads_per_s:g} feed reads/s")

    ctx = mp.get_context("spawn")
    stop_reader, reads_q = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=read_feeds, daemon=True, args=(
        f"http://{settings.bind_host}:{settings.api.port}", load.user_ids, args.reads_per_s, args.seed,
        stop_reader, reads_q))
    reader.start()
    reads: list[tuple[float, str, float]] = []

    def drain_reads() -> bool:
        while True:
            try:
                chunk = reads_q.get_nowait()
            except queue.Empty:
                return True
            if chunk is None:
                return False
            reads.extend(chunk)

    dag = DagWatch(settings, args.dag_ds or datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    t0 = time.time()
    load.start()
    schedule = kill_times(total_s, args.baseline_s, args.interval)
    order = kill_order(args.seed, len(schedule), components)
    kills: list[dict] = []
    outages: list[Outage] = []
    last_report, last_sent = t0, load.sent  # the capacity burst is not the soak's rate
    log(f"baseline: {args.baseline_s:g} s undisturbed; then {len(schedule)} kills: {', '.join(order)}")
    soak = Steps("bench.chaos", round(total_s))  # the soak's seconds; the catch-up and the DAG follow it
    while time.time() - t0 < total_s:
        drain_reads()
        elapsed = time.time() - t0
        if schedule and elapsed >= schedule[0]:
            schedule.pop(0)
            name = order[len(kills)]
            if not dag.is_alive() and dag.started is None and not args.no_dag:
                dag.start()
            kill = kill_component(rpc, name)
            kill["t"] = round(elapsed, 1)
            kills.append(kill)
            if kill["killed"]:
                log(f"kill {len(kills)}/{len(order)} at {elapsed:5.0f}s: {name} (pid {kill['pid']}, group of "
                    f"{kill['processes']} processes: {', '.join(kill['kinds'])})")
                outages.append(Outage(kill))
            else:
                log(f"kill {len(kills)}/{len(order)} at {elapsed:5.0f}s: {name} skipped: {kill['why']}")
        for outage in outages:
            if not outage.done:
                try:
                    outage.check(settings, rpc)
                except Exception as exc:  # noqa: BLE001 - supervisor busy: look again
                    log(f"  recovery check of {outage.kill['component']} failed ({exc})")
        if time.time() - last_report >= REPORT_EVERY_S:
            window = read_stats(reads, last_report, time.time())
            sent_rate = (load.sent - last_sent) / (time.time() - last_report)
            down_now = [o.kill["component"] for o in outages if not o.done]
            soak.at(round(elapsed), f"sent {load.sent:,} ({sent_rate:,.0f}/s), acked {load.producer.acked:,}, "
                f"delivery errors {load.producer.failed}, resent {load.resent}; reads {window['by_class']} "
                f"p50 200 {window['p50_200_ms']} ms; down: {', '.join(down_now) or 'none'}; "
                f"DAG {dag.state}; load {os.getloadavg()[0]:.1f}")
            loads.append([round(x, 2) for x in os.getloadavg()])
            last_report, last_sent = time.time(), load.sent
        time.sleep(POLL_S)

    soak_end = time.time()
    log("soak over: stopping the load and the reader")
    stop_reader.set()
    left = load.finish(timeout_s=RECOVERY_TIMEOUT_S)
    deadline = time.time() + 30
    while drain_reads() and time.time() < deadline:
        time.sleep(0.2)
    reader.join(10)
    deadline = time.time() + RECOVERY_TIMEOUT_S
    while any(not o.done for o in outages) and time.time() < deadline:
        for outage in outages:
            if not outage.done:
                try:
                    outage.check(settings, rpc)
                except Exception:  # noqa: BLE001
                    pass
        time.sleep(POLL_S)
    days = days_between(load.min_ts, load.max_ts) if load.min_ts else []
    log(f"load stopped: {load.sent:,} sent, {load.producer.acked:,} acknowledged, {left} not acknowledged; "
        f"waiting for the sink (days {', '.join(days)})")
    caught = catch_up(settings, run_id, days, load.producer, args.catchup_timeout) if days else {}
    acked = load.producer.acked
    loads.append([round(x, 2) for x in os.getloadavg()])

    if dag.started is not None:
        if dag.is_alive():
            log(f"waiting for the DAG run (at most {args.dag_timeout:.0f} s)")
            dag.join(args.dag_timeout)
            dag.stop_event.set()
    dag_state = dag.state if dag.started is not None else "not run"

    first_kill = t0 + args.baseline_s
    baseline = read_stats(reads, t0, first_kill)
    chaos = read_stats(reads, first_kill, soak_end)
    whole = read_stats(reads, t0, soak_end)
    per_component = outage_summary(kills, components)
    all_recovered = all(v["recovered"] is not False for v in per_component.values())
    rows, distinct = caught.get("rows"), caught.get("distinct")
    duplicates = rows - distinct if rows is not None else None
    summary = {
        "ok": verdict(acked, rows, duplicates, whole["violations"], dag_state, all_recovered),
        "run_id": run_id,
        "minutes": args.minutes, "seed": args.seed, "interval_s": args.interval,
        "rate_per_s": round(rate), "rate_source": rate_source,
        "measured_capacity_per_s": round(capacity) if capacity else None,
        "reference_ingest_capacity_per_s": INGEST_CAPACITY_PER_S,
        "reference_whole_stack_capacity_per_s": WHOLE_STACK_CAPACITY_PER_S,
        "sent_per_s": round((load.sent - burst_sent) / max(soak_end - t0, 1)),
        "events": {"sent": load.sent, "acked": acked, "in_hive": rows, "distinct_in_hive": distinct,
                   "duplicates": duplicates, "missing": acked - distinct if distinct is not None else None,
                   "delivery_errors": load.producer.failed, "resent": load.resent,
                   "not_acked_at_end": load.producer.in_flight() + len(load.producer.retry),
                   "catchup_s": caught.get("seconds"), "lag_at_end": caught.get("lag_at_end"),
                   "count_after_lag_0": caught.get("final_count"),
                   "load_error": load.error},
        "feed_visits": {"visits": load.feeds.visits, "failed": load.feeds.errors, "ctr": round(load.feeds.ctr, 4)},
        "reads": {"total": whole["reads"], "by_class": whole["by_class"], "violations": whole["violations"],
                  "p99_503_ms": whole["p99_503_ms"], "max_503_ms": whole["max_503_ms"]},
        "outages": per_component,
        "kills": [{k: v for k, v in kill.items() if k not in ("at", "kinds")} for kill in kills],
        "all_recovered": all_recovered,
        "dag": {"ds": dag.ds, "run_id": dag.run_id, "state": dag_state, "error": dag.error,
                "seconds": round(dag.finished - dag.started) if dag.finished else None},
        "baseline": {"window_s": args.baseline_s, "reads": baseline["reads"],
                     "success_share": baseline["success_share"], "p50_200_ms": baseline["p50_200_ms"],
                     "p99_200_ms": baseline["p99_200_ms"]},
        "chaos": {"reads": chaos["reads"], "success_share": chaos["success_share"],
                  "p50_200_ms": chaos["p50_200_ms"], "p99_200_ms": chaos["p99_200_ms"]},
        "ratio_success_chaos_to_baseline": ratio(chaos["success_share"], baseline["success_share"]),
        "ratio_p50_200_chaos_to_baseline": ratio(chaos["p50_200_ms"], baseline["p50_200_ms"]),
        "reference_goal_503_s": GOAL_503_S, "reference_fast_connection_error_s": FAST_CONNECTION_ERROR_S,
        "loadavg": loads[-1], "loadavg_samples": loads, "cores": os.cpu_count(),
        "total_s": round(time.time() - t0),
    }
    soak.summary(f"{'ok' if summary['ok'] else 'NOT ok'}: {len(kills)} kills, all recovered: {all_recovered}; "
                 f"{acked:,} acknowledged, {distinct} distinct in Hive, {duplicates} duplicates; reads "
                 f"{whole['violations']} violations; DAG {dag_state}")
    print(json.dumps(summary, separators=(",", ":")))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
