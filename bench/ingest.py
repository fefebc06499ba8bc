"""`python -m bench.ingest`: the event pipeline's throughput and freshness on this machine.

Brings up its own stack (Kafka, Hive metastore, Spark Thrift Server, Redis, then
the `stream-events` service) under ``var/bench-ingest`` with every port shifted,
so it runs beside a demo or test stack, and stops it at the end. Phases:

1. produce: the simulator's events into Kafka with kafka-python (the simulator's
   default) and with confluent-kafka (librdkafka), both idempotent with acks=all,
   while the sink is stopped; plus the rate of generating events alone;
2. drain: start the streaming service on that backlog and time how fast it lands
   in Hive (the sink's progress file, then one ``count(*)`` to check exactly-once)
   and in the Redis aggregates (sum of the per-user stats counters);
3. freshness: a steady load below capacity with marker events (one unique user
   each) every half second; event time -> visible in Redis (the marker user's
   stats key exists) and in Hive (``SELECT ... WHERE event_id IN`` over PyHive).

Prints progress, a comparison with the seed system's 32,000 events/s and what
bounded the run (CPU by process while draining), and ends with one JSON object
on its last line.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import redis

from feedloop.eta import Steps  # imports no settings: main sets the environment first

REPO = Path(__file__).resolve().parents[1]
SEED_PEAK_PER_S = 32_000
DEFAULT_PORT_SHIFT = 10_000
BASE_PORTS = {
    "KAFKA__PORT": 9092, "KAFKA__CONTROLLER_PORT": 9093, "HIVE__METASTORE_PORT": 9083, "HIVE__HS2_PORT": 10000,
    "SPARK__UI_PORT": 4040, "REDIS__PORT": 6379, "POSTGRES__PORT": 5432, "MLFLOW__PORT": 5000,
    "AIRFLOW__PORT": 8080, "API__PORT": 8000,
}
STACK = ["redis", "kafka", "metastore", "thriftserver"]
SINK = "stream-events"
N_USERS, N_ITEMS, SEED = 1000, 2000, 42
MARKER_EVERY_S = 0.5
REDIS_POLL_S = 0.05
HIVE_POLL_S = 1.0
REPORT_EVERY_S = 3.0


def bench_env(var_dir: Path, shift: int) -> dict[str, str]:
    """Environment of an isolated stack: its own var dir, every port moved by ``shift``."""
    env = {"FEEDLOOP_VAR_DIR": str(var_dir)}
    env.update({f"FEEDLOOP_{name}": str(port + shift) for name, port in BASE_PORTS.items()})
    env["FEEDLOOP_KAFKA__BOOTSTRAP"] = f"127.0.0.1:{9092 + shift}"
    env["FEEDLOOP_HIVE__METASTORE_URI"] = f"thrift://127.0.0.1:{9083 + shift}"
    return env


def log(message: str) -> None:
    print(f"[bench.ingest {time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], p: float) -> float | None:
    """Linear-interpolated percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- CPU accounting ---------------------------------------------------------------
def classify(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if "kafka.Kafka" in text:
        return "kafka"
    if "HiveMetaStore" in text:
        return "metastore"
    if "HiveThriftServer2" in text:
        return "thriftserver"
    if "pyspark.daemon" in text or "pyspark.worker" in text:
        return "sink python workers (validator)"
    if "SparkSubmit" in text or "feedloop-stream-events" in text:
        return "sink JVM (Spark)"
    if "stream-events" in text:
        return "sink driver (python)"
    if "redis-server" in text:
        return "redis"
    return "other"


class CpuSampler(threading.Thread):
    """CPU seconds used by the stack's processes (by kind) and by the whole machine."""

    def __init__(self, supervisord_pid: int):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.root = supervisord_pid
        self.last: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self.used: dict[str, float] = {}
        self.stop_event = threading.Event()
        self.started_at = time.time()
        self.machine_start = psutil.cpu_times()
        self.sample()

    def sample(self) -> None:
        try:
            procs = self.psutil.Process(self.root).children(recursive=True)
        except self.psutil.Error:
            return
        for proc in procs:
            try:
                times = proc.cpu_times()
                total = times.user + times.system
                if proc.pid not in self.kind:
                    self.kind[proc.pid] = classify(proc.cmdline())
            except self.psutil.Error:
                continue
            previous = self.last.get(proc.pid)
            if previous is not None:
                name = self.kind[proc.pid]
                self.used[name] = self.used.get(name, 0.0) + max(0.0, total - previous)
            self.last[proc.pid] = total

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            self.sample()

    def stop(self) -> dict:
        self.stop_event.set()
        self.join(5)
        self.sample()
        wall = time.time() - self.started_at
        end = self.psutil.cpu_times()
        busy = sum(getattr(end, f) - getattr(self.machine_start, f)
                   for f in ("user", "system", "nice", "irq", "softirq"))
        cores = self.psutil.cpu_count() or 1
        return {
            "wall_s": round(wall, 1),
            "cores": cores,
            "machine_busy_pct": round(100 * busy / (wall * cores), 1),
            "stack_cpu_s": {k: round(v, 1) for k, v in sorted(self.used.items(), key=lambda kv: -kv[1])},
        }


# -- phases --------------------------------------------------------------------------
def generate_only(n_events: int) -> dict:
    """Events/s the simulator generates and serialises, sending nothing."""
    import orjson

    from sources.simulator import Simulator, make_catalogue

    users, items = make_catalogue(N_USERS, N_ITEMS, SEED)
    sim = Simulator(users, items, SEED)
    made, started = 0, time.perf_counter()
    while made < n_events:
        for event in sim.events_for_action():
            orjson.dumps(event)
            event["user_id"].encode()
            made += 1
    seconds = time.perf_counter() - started
    return {"events": made, "seconds": round(seconds, 2), "per_s": round(made / seconds)}


def validate_only(n_events: int) -> dict:
    """Events/s one core validates with feedloop.events.validate (the sink's per-event Python work)."""
    import orjson

    from feedloop.events import validate
    from sources.simulator import Simulator, make_catalogue

    users, items = make_catalogue(N_USERS, N_ITEMS, SEED)
    sim = Simulator(users, items, SEED + 1)
    raw = []
    while len(raw) < n_events:
        raw += [orjson.dumps(e) for e in sim.events_for_action()]
    started = time.perf_counter()
    for value in raw:
        validate(value)
    seconds = time.perf_counter() - started
    return {"events": len(raw), "seconds": round(seconds, 2), "per_s": round(len(raw) / seconds)}


def produce(settings, backend: str, n_events: int) -> dict:
    """The simulator's events into Kafka as fast as one producer takes them, until all are acknowledged."""
    from feedloop.clients import EventProducer
    from sources.simulator import Simulator, make_catalogue

    users, items = make_catalogue(N_USERS, N_ITEMS, SEED)
    sim = Simulator(users, items, SEED + (1 if backend == "kafka-python" else 2))
    producer = EventProducer(settings, backend, client_id=f"bench-{backend}")
    topic = settings.kafka.events_topic
    sent, started, last = 0, time.perf_counter(), time.perf_counter()
    try:
        while sent < n_events:
            for event in sim.events_for_action():
                producer.send(topic, event)
                sent += 1
            if time.perf_counter() - last > REPORT_EVERY_S:
                log(f"  {backend}: {sent:,} sent, {sent / (time.perf_counter() - started):,.0f}/s")
                last = time.perf_counter()
        producer.flush()
    finally:
        producer.close()
    seconds = time.perf_counter() - started
    acked = sent - producer.failed
    if producer.failed:
        log(f"  {backend}: {producer.failed} events failed: {producer.last_error}")
    return {"events": acked, "failed": producer.failed, "seconds": round(seconds, 2), "per_s": round(acked / seconds)}


def sink_progress(settings) -> dict | None:
    from feedloop.progress import read_progress

    return read_progress(settings, "stream-events")


def steady_rate(timeline: list[tuple[float, int]], expected: int) -> tuple[float | None, float | None, float | None]:
    """(rate after the first batch, seconds to the first batch, seconds to all) from (t since start, count).

    With less than a quarter of the events after the first batch (a backlog under two
    batches of 100,000), the rate is over the whole drain, Spark's start-up included.
    """
    first = next(((t, c) for t, c in timeline if c > 0), None)
    done = next(((t, c) for t, c in timeline if c >= expected), None)
    if first is None or done is None:
        return None, first[0] if first else None, None
    if done[0] > first[0] and done[1] - first[1] >= expected / 4:
        return (done[1] - first[1]) / (done[0] - first[0]), first[0], done[0]
    return expected / done[0], first[0], done[0]  # one batch took nearly all: the rate includes start-up


def drain(settings, expected: int, timeout_s: float) -> dict:
    """Start the sink on the backlog; time Hive and the Redis aggregates (the sink's progress) reaching ``expected``.

    The sink applies each batch to Redis, then writes it to Hive; its progress file
    counts both (``aggregated``, ``valid``) since it started.
    """
    from infra.supervision import supervisor

    pid = int((settings.var / "run" / "supervisord.pid").read_text())
    (settings.var / "run" / "stream-events.json").unlink(missing_ok=True)  # progress of an earlier run
    cpu = CpuSampler(pid)
    cpu.start()
    started = time.time()
    supervisor(settings).startProcess(SINK, False)
    hive_line: list[tuple[float, int]] = []
    redis_line: list[tuple[float, int]] = []
    batches: dict[int, dict] = {}
    last_report = 0.0
    while time.time() - started < timeout_s:
        now = time.time() - started
        progress = sink_progress(settings)
        hive = progress["since_start"]["valid"] if progress else 0
        redis_n = progress["since_start"].get("aggregated", 0) if progress else 0
        if progress:
            batches[progress["batch_id"]] = {"written": progress["last_batch"]["written"],
                                             "seconds": progress["batch_seconds"],
                                             "phases": progress.get("phase_seconds")}
        hive_line.append((now, hive))
        redis_line.append((now, redis_n))
        if now - last_report > REPORT_EVERY_S:
            log(f"  drain {now:5.0f}s: Hive {hive:,}/{expected:,}, Redis {redis_n:,}/{expected:,}")
            last_report = now
        if hive >= expected and redis_n >= expected:
            break
        time.sleep(0.25)
    usage = cpu.stop()
    hive_rate, hive_first, hive_done = steady_rate(hive_line, expected)
    redis_rate, redis_first, redis_done = steady_rate(redis_line, expected)
    in_batches = sum(b["written"] for b in batches.values()), sum(b["seconds"] for b in batches.values())
    return {
        "expected": expected,
        "hive": {"events": hive_line[-1][1], "per_s": rnd(hive_rate, 0), "first_batch_s": rnd(hive_first, 1),
                 "all_s": rnd(hive_done, 1), "batches_seen": len(batches),
                 "in_batch_per_s": rnd(in_batches[0] / in_batches[1], 0) if in_batches[1] else None},
        "redis": {"events": redis_line[-1][1], "per_s": rnd(redis_rate, 0), "first_batch_s": rnd(redis_first, 1),
                  "all_s": rnd(redis_done, 1)},
        "batches": [b for _, b in sorted(batches.items())][-5:],
        "cpu": usage,
    }


def spark_jobs(settings) -> dict:
    """Spark jobs per micro-batch of each streaming query, from the sink's Spark UI (REST API)."""
    import urllib.request

    def get(url: str):
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    for port in range(settings.spark.ui_port, settings.spark.ui_port + 8):
        base = f"http://{settings.bind_host}:{port}/api/v1/applications"
        try:
            apps = get(base)
        except (OSError, ValueError):
            continue
        if apps and apps[0]["name"] == "feedloop-stream-events":
            jobs = get(f"{base}/{apps[0]['id']}/jobs")
            break
    else:
        return {}

    def seconds(job: dict) -> float:
        fmt = "%Y-%m-%dT%H:%M:%S.%f"
        start = datetime.strptime(job["submissionTime"].replace("GMT", ""), fmt)
        end = datetime.strptime(job["completionTime"].replace("GMT", ""), fmt)
        return (end - start).total_seconds()

    out: dict[str, dict] = {}
    for job in jobs:
        lines = (job.get("description") or "").splitlines()
        if not lines or not lines[-1].startswith("batch = ") or not job.get("completionTime"):
            continue
        query = out.setdefault(lines[0], {"batches": set(), "jobs": 0, "job_s": 0.0})
        query["batches"].add(lines[-1])
        query["jobs"] += 1
        query["job_s"] += seconds(job)
    return {name: {"batches": len(q["batches"]), "jobs": q["jobs"], "job_s": round(q["job_s"], 1),
                   "jobs_per_batch": round(q["jobs"] / len(q["batches"]), 1)} for name, q in out.items()}


class Markers:
    """Marker events sent during the freshness phase and when each became visible where."""

    def __init__(self, run_id: str, min_offset: int = 0):
        self.run_id = run_id
        self.min_offset = min_offset  # no marker sits below this offset in any partition
        self.sent: dict[str, dict] = {}  # event_id -> event
        self.seen: dict[str, dict[str, float]] = {"redis": {}, "hive": {}}
        self.lock = threading.Lock()
        self.hive_queries: list[float] = []

    def pending(self, where: str) -> list[dict]:
        with self.lock:
            return [e for eid, e in self.sent.items() if eid not in self.seen[where]]

    def mark(self, where: str, event_id: str, at: float) -> None:
        with self.lock:
            self.seen[where].setdefault(event_id, at)

    def lags(self, where: str) -> list[float]:
        with self.lock:
            return [self.seen[where][eid] - e["ts"] / 1000 for eid, e in self.sent.items() if eid in self.seen[where]]


def poll_redis(settings, markers: Markers, stop: threading.Event) -> None:
    from feature_store.online import user_stats_key
    from feedloop.clients import redis_client

    client = redis_client(settings)
    while not stop.is_set():
        pending = markers.pending("redis")
        if pending:
            pipe = client.pipeline(transaction=False)
            for event in pending:
                pipe.exists(user_stats_key(event["user_id"]))
            try:
                found = pipe.execute()
            except redis.exceptions.RedisError as exc:
                log(f"  freshness: Redis poll failed ({exc}); retrying")
                found = []
            now = time.time()
            for event, exists in zip(pending, found):
                if exists:
                    markers.mark("redis", event["event_id"], now)
        stop.wait(REDIS_POLL_S)


def poll_hive(settings, markers: Markers, stop: threading.Event) -> None:
    from feedloop.clients import hive_connection

    conn = hive_connection(settings, settings.hive.database)
    cursor = conn.cursor()
    try:
        while not stop.is_set():
            pending = markers.pending("hive")
            if pending:
                hours = sorted({(datetime.fromtimestamp(e["ts"] / 1000, tz=timezone.utc).strftime("%Y-%m-%d"),
                                 datetime.fromtimestamp(e["ts"] / 1000, tz=timezone.utc).hour) for e in pending})
                where = " OR ".join(f"(dt = '{d}' AND hr = {h})" for d, h in hours)
                ids = ", ".join(f"'{e['event_id']}'" for e in pending)
                started = time.time()
                try:
                    # kafka_offset: Parquet statistics skip the files of the backlogs drained before,
                    # so the probe does not load the machine it measures
                    cursor.execute(f"SELECT event_id FROM events WHERE ({where}) "
                                   f"AND kafka_offset >= {markers.min_offset} AND event_id IN ({ids})")
                    rows = cursor.fetchall()
                except Exception as exc:  # noqa: BLE001 - keep polling; a marker never seen is reported as such
                    log(f"  freshness: Hive poll failed ({exc}); retrying")
                    stop.wait(HIVE_POLL_S)
                    continue
                now = time.time()  # what an analyst sees: the time the query answered
                markers.hive_queries.append(now - started)
                for (event_id,) in rows:
                    markers.mark("hive", event_id, now)
            stop.wait(HIVE_POLL_S)
    finally:
        conn.close()


def freshness(settings, rate: float, duration_s: float, grace_s: float) -> dict:
    """Steady load at ``rate`` events/s with markers; event time -> visible in Redis and Hive."""
    from feedloop.clients import EventProducer
    from feedloop.events import new_event
    from sources.simulator import Pacer, Simulator, make_catalogue

    users, items = make_catalogue(N_USERS, N_ITEMS, SEED)
    sim = Simulator(users, items, SEED + 3)
    producer = EventProducer(settings, "confluent", client_id="bench-freshness")
    topic = settings.kafka.events_topic
    markers = Markers(run_id=str(int(time.time())), min_offset=min(end_offsets(settings)))  # every marker sits above it
    stop = threading.Event()
    pollers = [threading.Thread(target=poll_redis, args=(settings, markers, stop), daemon=True),
               threading.Thread(target=poll_hive, args=(settings, markers, stop), daemon=True)]
    for thread in pollers:
        thread.start()
    pacer = Pacer(rate)
    started = time.time()
    next_marker, sent, last_report = started, 0, started
    try:
        while time.time() - started < duration_s:
            if time.time() >= next_marker:
                marker = new_event("view", f"fresh-{markers.run_id}-{len(markers.sent)}", items[0].item_id)
                producer.send(topic, marker)
                with markers.lock:
                    markers.sent[marker["event_id"]] = marker
                next_marker += MARKER_EVERY_S
            events = sim.events_for_action()
            for event in events:
                producer.send(topic, event)
            sent += len(events)
            pacer.wait(len(events), 1.0)
            if time.time() - last_report > REPORT_EVERY_S:
                elapsed = time.time() - started
                log(f"  freshness {elapsed:4.0f}s: {sent:,} events at {sent / elapsed:,.0f}/s; "
                    f"markers seen in Redis {len(markers.seen['redis'])}/{len(markers.sent)}, "
                    f"Hive {len(markers.seen['hive'])}/{len(markers.sent)}")
                last_report = time.time()
        producer.flush()
        deadline = time.time() + grace_s
        while time.time() < deadline and (markers.pending("redis") or markers.pending("hive")):
            time.sleep(0.5)
    finally:
        stop.set()
        producer.close()
        for thread in pollers:
            thread.join(30)
    def lag_stats(where: str) -> dict:
        lags = markers.lags(where)
        return {"seen": len(lags), "p50_s": rnd(percentile(lags, 50)), "p95_s": rnd(percentile(lags, 95)),
                "max_s": rnd(max(lags, default=None))}

    return {
        "rate_per_s": round(sent / duration_s),
        "events": sent + len(markers.sent) - producer.failed,
        "markers": len(markers.sent),
        "redis": lag_stats("redis"),
        "hive": {**lag_stats("hive"), "query_p50_s": rnd(percentile(markers.hive_queries, 50))},
    }


def spark_floor(settings, expected: int, out_dir: Path) -> dict:
    """A bare Structured Streaming query on the same topic: Kafka -> Parquet, no validation, no de-duplication.

    Runs in this process's own Spark (local[2], the sink's settings), with the sink
    stopped; rate after the first batch, and the CPU its JVM used.
    """
    import psutil

    from feature_store.offline import get_spark

    spark = get_spark("feedloop-bench-floor", with_kafka=True, settings=settings)
    spark.conf.set("spark.sql.shuffle.partitions", "2")
    jvm = [p for p in psutil.Process().children(recursive=True) if "java" in p.name()]
    cpu_before = sum(p.cpu_times().user + p.cpu_times().system for p in jvm)
    stream = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", settings.kafka.bootstrap)
              .option("subscribe", settings.kafka.events_topic).option("startingOffsets", "earliest")
              .option("maxOffsetsPerTrigger", settings.spark.max_offsets_per_trigger).load())
    timeline: list[tuple[float, int]] = []
    started = time.time()
    query = (stream.select("key", "value", "partition", "offset", "timestamp").writeStream.format("parquet")
             .option("path", str(out_dir / "data")).option("checkpointLocation", str(out_dir / "checkpoint"))
             .trigger(availableNow=True).start())
    while query.isActive:
        rows = sum(p["numInputRows"] for p in query.recentProgress)
        timeline.append((time.time() - started, rows))
        time.sleep(0.25)
    query.awaitTermination()
    timeline.append((time.time() - started, sum(p["numInputRows"] for p in query.recentProgress)))
    cpu = sum(p.cpu_times().user + p.cpu_times().system for p in jvm) - cpu_before
    rate, first, done = steady_rate(timeline, expected)
    return {"events": timeline[-1][1], "per_s": rnd(rate, 0), "first_batch_s": rnd(first, 1), "all_s": rnd(done, 1),
            "cpu_ms_per_event": rnd(1000 * cpu / max(timeline[-1][1], 1), 4), "spark": spark}


def prefill_hour(spark, settings, rows: int, hour_ms: int) -> dict:
    """Put ``rows`` events into the events table's partition of the hour holding ``hour_ms`` (one Spark job)."""
    from pyspark.sql import functions as F

    started = time.time()
    when = datetime.fromtimestamp(hour_ms / 1000, tz=timezone.utc)
    dt, hr = when.strftime("%Y-%m-%d"), when.hour
    table = f"{settings.hive.database}.events"
    location = next(r.data_type for r in spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect()
                    if r.col_name == "Location")
    target = f"{location}/dt={dt}/hr={hr}"
    columns = [f.name for f in spark.table(table).schema.fields if f.name not in ("dt", "hr")]
    base = hour_ms - hour_ms % 3_600_000
    frame = (spark.range(rows, numPartitions=4)
             .withColumn("event_id", F.expr("uuid()"))
             .withColumn("event_type", F.lit("view")).withColumn("user_id", F.concat(F.lit("p"), F.col("id") % 50_000))
             .withColumn("item_id", F.concat(F.lit("i"), F.col("id") % 5_000))
             .withColumn("ts", F.lit(base) + F.col("id") % 3_600_000).withColumn("schema_version", F.lit(1))
             .withColumn("ingested_at", F.lit(int(time.time() * 1000))))
    for field in spark.table(table).schema.fields:
        if field.name not in frame.columns:
            frame = frame.withColumn(field.name, F.lit(None).cast(field.dataType))
    before = set(glob.glob(target.replace("file:", "") + "/*.parquet"))
    frame.select(*columns).write.mode("append").parquet(target)
    added = sorted(set(glob.glob(target.replace("file:", "") + "/*.parquet")) - before)
    spark.sql(f"ALTER TABLE {table} ADD IF NOT EXISTS PARTITION (dt='{dt}', hr={hr})")
    return {"rows": rows, "partition": f"dt={dt}/hr={hr}", "seconds": round(time.time() - started, 1), "files": added}


def end_offsets(settings) -> list[int]:
    """The topic's end offset in each partition."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "bench-lag",
                         "enable.auto.commit": False})
    try:
        topic = settings.kafka.events_topic
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts]
    finally:
        consumer.close()


def consumer_lag(settings) -> int | None:
    from spark.stream_events import committed_offsets

    committed = committed_offsets(settings)
    return None if committed is None else sum(end_offsets(settings)) - committed


def sustained(settings, rate: float, duration_s: float, grace_s: float, scale: str = "peak") -> dict:
    """``duration_s`` of load with the simulator's day curve compressed into it; consumer lag every 5 s.

    ``scale="peak"``: the busiest moment of the day offers ``rate``; ``"mean"``: the
    day's mean does (its peak is then ~2.9x that).
    """
    from feedloop.clients import EventProducer
    from sources.simulator import Simulator, diurnal_multiplier, make_catalogue

    users, items = make_catalogue(N_USERS, N_ITEMS, SEED)
    sim = Simulator(users, items, SEED + 5)
    day = [diurnal_multiplier(datetime(2026, 11, 30, h, m, tzinfo=timezone.utc)) for h in range(24) for m in (0, 30)]
    mean_multiplier = sum(day) / len(day)
    norm = max(day) if scale == "peak" else mean_multiplier
    mean_rate = rate * mean_multiplier / norm
    producer = EventProducer(settings, "confluent", client_id="bench-sustained")
    topic = settings.kafka.events_topic
    started = time.time()
    sent, samples, next_sample = 0, [], started
    budget, last = 0.0, started
    try:
        while time.time() - started < duration_s:
            elapsed = time.time() - started
            clock = datetime(2026, 11, 30, tzinfo=timezone.utc).timestamp() + 86_400 * elapsed / duration_s
            offered = rate * diurnal_multiplier(datetime.fromtimestamp(clock, tz=timezone.utc)) / norm
            now = time.time()
            budget = min(budget + offered * (now - last), offered)  # at most a second's worth of catch-up
            last = now
            while budget >= 1:
                for event in sim.events_for_action():
                    producer.send(topic, event)
                    sent += 1
                    budget -= 1
            if time.time() >= next_sample:
                lag = consumer_lag(settings)
                samples.append((round(elapsed, 1), round(offered), lag))
                if len(samples) % 6 == 1:
                    log(f"  sustained {elapsed:4.0f}s: offered {offered:,.0f}/s, sent {sent:,}, lag {lag}")
                next_sample += 5
            time.sleep(0.01)
        producer.flush()
        end_lag = consumer_lag(settings)
        deadline = time.time() + grace_s
        while time.time() < deadline and (consumer_lag(settings) or 0) > 0:
            time.sleep(1)
        caught_up_s = round(time.time() - (deadline - grace_s), 1)
    finally:
        producer.close()
    lags = [lag for _, _, lag in samples if lag is not None]
    minute = max(1, int(60 / 5))
    first, last = lags[:minute], lags[-minute:]
    return {"duration_s": duration_s, "scale": scale, "events": sent - producer.failed, "failed": producer.failed,
            "mean_offered_per_s": round(sent / duration_s), "peak_offered_per_s": max(r for _, r, _ in samples),
            "lag_first_min_p50": percentile(first, 50), "lag_last_min_p50": percentile(last, 50),
            "lag_max": max(lags, default=None), "lag_at_end": end_lag, "caught_up_after_s": caught_up_s,
            "lag_grows": bool(last and first and percentile(last, 50) > 2 * percentile(first, 50) + mean_rate * 5),
            "samples": samples}


def streamed_check(settings) -> dict:
    """Rows that came through Kafka (kafka_offset set) and their distinct event ids, over HiveServer2."""
    from feedloop.clients import hive_connection

    conn = hive_connection(settings, settings.hive.database)
    try:
        cursor = conn.cursor()
        started = time.time()
        cursor.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events WHERE kafka_offset IS NOT NULL")
        total, distinct = cursor.fetchone()
        return {"rows": total, "distinct_event_ids": distinct, "query_s": round(time.time() - started, 2)}
    finally:
        conn.close()


def sink_cpu_s(cpu: dict) -> float:
    return sum(v for k, v in cpu["stack_cpu_s"].items() if k.startswith("sink"))


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="backlog of each drain (the goal asks >= 2M)")
    parser.add_argument("--compare-events", type=int, default=100_000,
                        help="events each producer sends for the kafka-python vs librdkafka comparison")
    parser.add_argument("--prefill", type=int, default=10_000_000, help="events already in the hour of the 2nd drain")
    parser.add_argument("--fresh-s", type=float, default=60, help="seconds of steady load for the freshness phase")
    parser.add_argument("--sustained-s", type=float, default=600, help="seconds of the sustained run (0: skip)")
    parser.add_argument("--sustained-scale", choices=("peak", "mean"), default="peak",
                        help="what runs at half capacity: the day's busiest moment (default) or its mean")
    parser.add_argument("--drain-timeout", type=float, default=900)
    parser.add_argument("--port-shift", type=int, default=DEFAULT_PORT_SHIFT)
    parser.add_argument("--var-dir", default=str(REPO / "var" / "bench-ingest"))
    parser.add_argument("--keep", action="store_true", help="keep the var dir (logs, data) after the run")
    return parser.parse_args(argv)


def produce_backlog(settings, n: int) -> dict:
    kp = produce(settings, "confluent", n)
    log(f"  confluent-kafka: {kp['events']:,} events in {kp['seconds']}s = {kp['per_s']:,}/s")
    return kp


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    var_dir = Path(args.var_dir)
    os.environ.update(bench_env(var_dir, args.port_shift))  # before any settings are read

    from feedloop.settings import get_settings
    from infra.stack import down, up
    from infra.supervision import supervisor

    get_settings.cache_clear()
    started = time.time()
    if var_dir.exists():
        down(get_settings())  # a previous run that did not finish
        shutil.rmtree(var_dir)
    result: dict = {}
    loads: list[list[float]] = []
    # a step: the stack's start, each phase, the final check (their lengths differ: the ETA is rough)
    steps = Steps("bench.ingest", 7 + (1 if args.sustained_s else 0))
    try:
        log(f"starting {', '.join(STACK)} under {var_dir} (ports +{args.port_shift})")
        up(STACK)
        get_settings.cache_clear()
        settings = get_settings()
        result["stack_up_s"] = round(time.time() - started, 1)
        steps.step(f"stack up in {result['stack_up_s']}s")

        log("phase 1: producers (sink stopped)")
        result["generate_only_per_s"] = generate_only(100_000)["per_s"]
        log(f"  generating alone: {result['generate_only_per_s']:,} events/s")
        result["validate_only_per_s"] = validate_only(50_000)["per_s"]
        log(f"  Python validator alone (one core, the API's path): {result['validate_only_per_s']:,} events/s")
        kp = produce(settings, "kafka-python", args.compare_events)
        log(f"  kafka-python: {kp['events']:,} events in {kp['seconds']}s = {kp['per_s']:,}/s")
        ck = produce(settings, "confluent", args.compare_events)
        steps.step(f"phase 1: confluent-kafka: {ck['events']:,} events in {ck['seconds']}s = {ck['per_s']:,}/s")
        result.update(produce_kafka_python_per_s=kp["per_s"], produce_confluent_per_s=ck["per_s"],
                      confluent_vs_kafka_python=round(ck["per_s"] / kp["per_s"], 2))
        bulk = produce_backlog(settings, max(0, args.events - kp["events"] - ck["events"]))
        backlog = kp["events"] + ck["events"] + bulk["events"]
        acked = backlog

        log(f"phase 2: Spark floor, a bare Kafka -> Parquet query on the {backlog:,}-event backlog")
        loads.append(loadavg())
        floor = spark_floor(settings, backlog, var_dir / "floor")
        spark = floor.pop("spark")
        result["floor"] = floor
        steps.step(f"phase 2: floor: {floor['per_s']} events/s after the first batch, "
                   f"{floor['cpu_ms_per_event']} CPU-ms/event")

        log(f"phase 3: drain the {backlog:,}-event backlog through {SINK} (empty table)")
        loads.append(loadavg())
        drained = drain(settings, backlog, args.drain_timeout)
        loads.append(loadavg())
        result["drain_empty"] = drained
        result["spark_jobs"] = spark_jobs(settings)
        steps.step(f"phase 3: Hive {drained['hive']['per_s']} events/s, Redis {drained['redis']['per_s']} events/s "
                   f"after the first batch; sink CPU {sink_cpu_s(drained['cpu']):.0f}s")

        log(f"phase 4: drain {args.events:,} more into an hour that already holds {args.prefill:,} events")
        supervisor(settings).stopProcess(SINK, True)
        result["prefill"] = prefill_hour(spark, settings, args.prefill, int(time.time() * 1000))
        log(f"  prefilled {result['prefill']}")
        spark.stop()
        bulk2 = produce_backlog(settings, args.events)
        acked += bulk2["events"]
        loads.append(loadavg())
        drained10 = drain(settings, bulk2["events"], args.drain_timeout)
        loads.append(loadavg())
        result["drain_10m"] = drained10
        for path in result["prefill"].pop("files"):  # the later phases' Hive probes need not scan them
            Path(path).unlink()
        steps.step(f"phase 4: Hive {drained10['hive']['per_s']} events/s, "
                   f"Redis {drained10['redis']['per_s']} events/s; sink CPU {sink_cpu_s(drained10['cpu']):.0f}s")

        capacity = min(r for r in (drained["hive"]["per_s"], drained["redis"]["per_s"]) if r)
        rate = capacity / 2
        log(f"phase 5: freshness at half the capacity, {rate:,.0f} events/s for {args.fresh_s:.0f}s")
        loads.append(loadavg())
        fresh = freshness(settings, rate, args.fresh_s, grace_s=60)
        loads.append(loadavg())
        result["freshness"] = fresh
        acked += fresh["events"]
        steps.step(f"phase 5: Redis p50 {fresh['redis']['p50_s']}s p95 {fresh['redis']['p95_s']}s "
                   f"({fresh['redis']['seen']}/{fresh['markers']} seen); Hive p50 {fresh['hive']['p50_s']}s "
                   f"p95 {fresh['hive']['p95_s']}s ({fresh['hive']['seen']}/{fresh['markers']} seen, "
                   f"query {fresh['hive']['query_p50_s']}s)")

        if args.sustained_s:
            log(f"phase 6: sustained, {args.sustained_s:.0f}s, the day's curve compressed into it, its "
                f"{args.sustained_scale} at {rate:,.0f} events/s (half the capacity)")
            result["sustained"] = sustained(settings, rate, args.sustained_s, grace_s=180, scale=args.sustained_scale)
            loads.append(loadavg())
            acked += result["sustained"]["events"]
            s = result["sustained"]
            steps.step(f"phase 6: lag: first minute p50 {s['lag_first_min_p50']}, last minute p50 "
                       f"{s['lag_last_min_p50']}, max {s['lag_max']}, at the end {s['lag_at_end']}; "
                       f"caught up {s['caught_up_after_s']}s after the load")
        deadline = time.time() + 300
        while time.time() < deadline and (consumer_lag(settings) or 0) > 0:
            time.sleep(1)
        time.sleep(2 * settings.spark.streaming_trigger_s)
        result["hive_check"] = streamed_check(settings)
        result["acked"] = acked
        steps.step(f"Hive holds {result['hive_check']['rows']:,} streamed rows, "
                   f"{result['hive_check']['distinct_event_ids']:,} distinct event ids; Kafka acknowledged {acked:,}")
    finally:
        log("stopping the bench stack")
        down(get_settings())
        if not args.keep:
            shutil.rmtree(var_dir, ignore_errors=True)

    d0, d1 = result["drain_empty"], result["drain_10m"]
    hive_rate, redis_rate = d0["hive"]["per_s"], d0["redis"]["per_s"]
    cpu_empty = 1000 * sink_cpu_s(d0["cpu"]) / d0["expected"]
    cpu_10m = 1000 * sink_cpu_s(d1["cpu"]) / d1["expected"]
    floor_rate = result["floor"]["per_s"]
    check = result["hive_check"]
    summary = {
        "hive_events_per_s": hive_rate,
        "redis_events_per_s": redis_rate,
        "spark_floor_per_s": floor_rate,
        "ratio_to_spark_floor": rnd(min(hive_rate, redis_rate) / floor_rate, 3) if floor_rate else None,
        "cpu_ms_per_event_empty": rnd(cpu_empty, 4),
        "cpu_ms_per_event_10m": rnd(cpu_10m, 4),
        "cpu_10m_vs_empty": rnd(cpu_10m / cpu_empty, 3) if cpu_empty else None,
        "hive_events_per_s_10m": d1["hive"]["per_s"],
        "floor_cpu_ms_per_event": result["floor"]["cpu_ms_per_event"],
        "freshness_load_per_s": result["freshness"]["rate_per_s"],
        "freshness_redis_p50_s": result["freshness"]["redis"]["p50_s"],
        "freshness_redis_p95_s": result["freshness"]["redis"]["p95_s"],
        "freshness_hive_p50_s": result["freshness"]["hive"]["p50_s"],
        "freshness_hive_p95_s": result["freshness"]["hive"]["p95_s"],
        "sustained": {k: v for k, v in (result.get("sustained") or {}).items() if k != "samples"} or None,
        "hive_exactly_once": check["rows"] == check["distinct_event_ids"] == result["acked"],
        "hive_streamed_rows": check["rows"],
        "acked_events": result["acked"],
        "produce_kafka_python_per_s": result["produce_kafka_python_per_s"],
        "produce_confluent_per_s": result["produce_confluent_per_s"],
        "confluent_vs_kafka_python": result["confluent_vs_kafka_python"],
        "generate_only_per_s": result["generate_only_per_s"],
        "validate_only_python_per_s": result["validate_only_per_s"],
        "backlog_events": d0["expected"],
        "drain_cpu_by_process": d0["cpu"],
        "spark_jobs": result.get("spark_jobs"),
        "reference_seed_peak_per_s": SEED_PEAK_PER_S,
        "hive_vs_seed_peak": rnd(hive_rate / SEED_PEAK_PER_S, 3) if hive_rate else None,
        "loadavg": loads,
        "cores": os.cpu_count(),
        "total_s": round(time.time() - started, 1),
    }
    steps.summary(f"drain: Hive {hive_rate}/s, Redis {redis_rate}/s ({summary['ratio_to_spark_floor']} of the Spark "
                  f"floor's {floor_rate}/s); CPU per event {summary['cpu_ms_per_event_empty']} ms empty vs "
                  f"{summary['cpu_ms_per_event_10m']} ms with {args.prefill:,} in the hour; freshness p95 Redis "
                  f"{summary['freshness_redis_p95_s']} s; exactly once: {summary['hive_exactly_once']}")
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
