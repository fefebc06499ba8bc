"""Reading the dashboard's sources, each on its own thread and at its own pace.

Every reader uses what `feedloop status` and the benches use: the streaming apps' progress
files and checkpoints (:mod:`feedloop.progress`), the supervisor's rows
(:func:`infra.stack.status_rows`), the registry's aliases (:func:`models.train.aliased_version`),
the API's ``/metrics`` (:mod:`serving.metrics`' histogram), Hive through the platform's own
login (:func:`feedloop.clients.hive_connection`). A reader that fails (its service is down)
leaves its panel marked with the error; the others go on, and so does the page.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from dashboard import snapshot
from feedloop.progress import committed_partition_offsets, read_progress
from feedloop.settings import Settings

# (query name as the streaming apps call it, its checkpoint, the topic setting it reads, the app running it)
STREAMING_QUERIES = (
    ("events_to_hive_and_redis", "stream-events", "events_topic", "stream-events"),
    ("served_to_hive", "served-feeds", "served_topic", "stream-events"),
    ("stream-learner", "stream-learner", "events_topic", "stream-learner"),
)
CTR_DAYS = 2  # CTR over today's and yesterday's partitions (UTC)
CTR_EVERY_S = 60.0  # a Spark job on the thrift server each time; served feeds land in Hive every 30 s anyway

CTR_SQL = """
SELECT f.model_version, f.segment,
       SUM(IF(e.event_type = 'impression', 1, 0)) AS impressions,
       SUM(IF(e.event_type = 'click', 1, 0)) AS clicks
FROM events e
JOIN (SELECT DISTINCT feed_id, model_version, segment FROM served_feeds WHERE dt >= '{since}') f
  ON e.feed_id = f.feed_id
WHERE e.dt >= '{since}' AND e.event_type IN ('impression', 'click')
GROUP BY f.model_version, f.segment
"""


@dataclass
class Reading:
    """The last result of one source: its panel (or error), when it was read, how long that took."""

    panel: dict = field(default_factory=lambda: {"ok": False, "error": "not read yet"})
    at: float = 0.0
    seconds: float = 0.0


class Collector:
    """Threads that read the sources every few seconds; :meth:`snapshot` is what ``/api/snapshot`` returns."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.readings: dict[str, Reading] = {}
        self.events = snapshot.CounterHistory()
        self.sources = snapshot.CounterHistory()
        self.series: dict[str, list] = {"events": [], "sources": []}
        self.states: dict[str, str] = {}
        self._consumer = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.every: dict[str, tuple[float, Callable[[], dict]]] = {
            "events": (1.0, self.read_events), "freshness": (1.0, self.read_freshness),
            "lag": (2.0, self.read_lag), "sources": (2.0, self.read_sources), "health": (5.0, self.read_health),
            "champion": (10.0, self.read_champion), "ctr": (CTR_EVERY_S, self.read_ctr),
        }

    # -- threads ------------------------------------------------------------------
    def start(self) -> None:
        for name, (interval, reader) in self.every.items():
            threading.Thread(target=self._loop, args=(name, interval, reader), name=f"dashboard-{name}",
                             daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, name: str, interval: float, reader: Callable[[], dict]) -> None:
        while not self._stop.is_set():
            started = time.time()
            try:
                panel = reader()
            except Exception as exc:  # the source is down or answered nonsense: say so on its panel
                panel = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
            with self._lock:
                self.readings[name] = Reading(panel, time.time(), round(time.time() - started, 3))
            self._stop.wait(max(0.2, interval - (time.time() - started)))

    def snapshot(self) -> dict:
        """Every panel with its age (a panel older than three of its intervals is ``stale``), and the series."""
        now = time.time()
        with self._lock:
            panels = {}
            for name, (interval, _) in self.every.items():
                reading = self.readings.get(name, Reading())
                age = round(now - reading.at, 1) if reading.at else None
                panels[name] = {**reading.panel, "age_s": age, "read_s": reading.seconds,
                                "stale": age is None or age > 3 * interval + reading.seconds}
            series = {k: list(v) for k, v in self.series.items()}
        return {"generated_at": now, "panels": panels, "series": series, "links": self.links()}

    def links(self) -> dict[str, str]:
        s, host = self.settings, self.settings.bind_host
        return {"Airflow": f"http://{host}:{s.airflow.port}/dags/feedloop_daily_retrain",
                "MLflow": f"http://{host}:{s.mlflow.port}/#/models/{s.mlflow.model_name}",
                "Feed API": f"http://{host}:{s.api.port}/docs"}

    def _append(self, name: str, point: dict, keep_s: float = 600.0) -> None:
        with self._lock:
            line = self.series[name]
            line.append(point)
            while line and line[0]["t"] < point["t"] - keep_s:
                line.pop(0)

    # -- readers ------------------------------------------------------------------
    def read_events(self) -> dict:
        now = time.time()
        progress = read_progress(self.settings, "stream-events")
        if progress is not None:
            self.events.add(progress["updated_at"], snapshot.sink_counters(progress))
        rates = self.events.rates(now)
        panel = snapshot.events_panel(rates, progress, now)
        if panel["ok"]:
            self._append("events", {"t": round(now, 1), "events_per_s": panel["events_per_s"],
                                    "dlq_per_s": panel["dlq_per_s"], **panel["by_type_per_s"]})
        return panel

    def read_freshness(self) -> dict:
        return snapshot.freshness_panel(read_progress(self.settings, "stream-events"),
                                        read_progress(self.settings, "stream-learner"), time.time())

    def _end_offsets(self, topics: set[str]) -> dict[str, dict[int, int]]:
        from kafka import KafkaConsumer, TopicPartition

        if self._consumer is None:
            self._consumer = KafkaConsumer(bootstrap_servers=self.settings.kafka.bootstrap, client_id="feedloop-dashboard",
                                           request_timeout_ms=self.settings.kafka.request_timeout_ms + 1000)
        try:
            out = {}
            for topic in topics:
                parts = [TopicPartition(topic, p) for p in sorted(self._consumer.partitions_for_topic(topic) or ())]
                out[topic] = {tp.partition: offset for tp, offset in self._consumer.end_offsets(parts).items()}
            return out
        except Exception:
            self._consumer.close()
            self._consumer = None
            raise

    def read_lag(self) -> dict:
        kafka = self.settings.kafka
        end = self._end_offsets({getattr(kafka, setting) for _, _, setting, _ in STREAMING_QUERIES})
        queries = [{"query": name, "topic": getattr(kafka, setting), "end": end[getattr(kafka, setting)],
                    "committed": committed_partition_offsets(self.settings, checkpoint, getattr(kafka, setting)),
                    "state": self.states.get(app, "?")}
                   for name, checkpoint, setting, app in STREAMING_QUERIES]
        return snapshot.lag_panel(queries)

    def read_sources(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://{self.settings.bind_host}:{self.settings.api.port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
        now = time.time()
        counts = snapshot.feed_source_counts(text_string_to_metric_families(text))
        self.sources.add(now, counts)
        rates = self.sources.rates(now)
        self._append("sources", {"t": round(now, 1), **{k: round(v, 2) for k, v in (rates or {}).items()}})
        return snapshot.sources_panel(counts, rates)

    def read_health(self) -> dict:
        from infra.stack import status_rows
        from infra.supervision import supervisor_running

        rows = status_rows(self.settings) if supervisor_running(self.settings) else None
        self.states = {r["service"]: r["state"] for r in rows or []}
        return snapshot.health_panel(rows)

    def aliases(self, client) -> dict[str, dict | None]:
        from models.online_service import ONLINE_ALIAS
        from models.train import CHALLENGER, CHAMPION, aliased_version

        out = {}
        for alias in (CHAMPION, ONLINE_ALIAS, CHALLENGER):
            version = aliased_version(client, self.settings.mlflow.model_name, alias)
            out[alias] = None if version is None else {"version": str(version.version),
                                                       "online_version": version.tags.get("online_version")}
        return out

    def read_champion(self) -> dict:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.settings.mlflow_uri, registry_uri=self.settings.mlflow_uri)
        name = self.settings.mlflow.model_name
        versions = [{"version": v.version, "tags": dict(v.tags or {}), "created_ms": v.creation_timestamp}
                    for v in client.search_model_versions(f"name='{name}'", max_results=200)]
        self._aliases = self.aliases(client)
        return snapshot.champion_panel(versions, self._aliases)

    def read_ctr(self) -> dict:
        from mlflow import MlflowClient

        from feedloop.clients import hive_connection

        since = (datetime.now(timezone.utc) - timedelta(days=CTR_DAYS - 1)).strftime("%Y-%m-%d")
        conn = hive_connection(self.settings, self.settings.hive.database)
        try:
            cursor = conn.cursor()
            cursor.execute(CTR_SQL.format(since=since))
            rows = cursor.fetchall()
        finally:
            conn.close()
        aliases = getattr(self, "_aliases", None)
        if aliases is None:
            aliases = self.aliases(MlflowClient(tracking_uri=self.settings.mlflow_uri,
                                                registry_uri=self.settings.mlflow_uri))
        return snapshot.ctr_panel(rows, aliases, since)
