"""Streaming sink: Kafka ``feedback.events`` -> validate (JVM) -> de-duplicate (state) -> Hive ``feedloop.events``.

Per micro-batch, the records are read from Kafka once and validated once, in the
JVM (:mod:`spark.event_rules`, the rules of :mod:`feedloop.events`). Then:

* **de-duplication with bounded state**: ``dropDuplicatesWithinWatermark`` on the
  event_id, in the RocksDB state store, keeps each id for ``spark.dedup_window``
  (default 24 h) of the sink's clock (the micro-batch time, which a replayed batch
  keeps). A repeated event_id within that window is dropped; one that comes back
  later is written again (the contract, and why not event time, in docs/events.md).
  The cost per event does not depend on how much the table holds.
* **one action** counts valid and rejected rows per hour partition, from the
  batch cached once; the valid rows are written by every task in parallel
  (``spark.file_max_records`` rows per file at most), renamed into place as
  ``b<batch id>-*`` files, and every new partition is registered in one statement;
  rejected records go to the DLQ topic with the reason and their raw bytes.

Exactly once per event_id, across crashes: Spark replays an unfinished batch with
the same id, offsets and batch time and the same de-duplication state, so the
batch first deletes the files a previous attempt of the same id left, then
writes the same rows again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from feedloop.events import DLQ_MAX_MESSAGE_BYTES, FIELDS
from feedloop.progress import checkpoint_dir, committed_partition_offsets, progress_path, write_json_atomic
from feedloop.settings import Settings, get_settings
from spark.hive_files import BatchFiles
from spark.resilient import heartbeat_listener, run_resilient

APP_NAME = "feedloop-stream-events"
TABLE = "events"
TABLE_COLUMNS = [*FIELDS, "extra", "kafka_partition", "kafka_offset", "ingested_at", "dt", "hr"]
QUERY_NAME = "events_to_hive_and_redis"
STATE_STORE = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"


def with_partitions(events, ingested_at=None):
    """Add ``ingested_at`` (ms) and the partitions ``dt``/``hr`` (UTC, from the event time ``ts``)."""
    from pyspark.sql import functions as F

    stamp = ingested_at if ingested_at is not None else F.unix_millis(F.current_timestamp())
    event_ts = F.timestamp_millis(F.col("ts"))
    return (events.withColumn("ingested_at", stamp.cast("bigint"))
            .withColumn("dt", F.date_format(event_ts, "yyyy-MM-dd"))
            .withColumn("hr", F.hour(event_ts)))


def table_rows(events):
    """Valid events (the validator's columns) as rows of the events table, one per event_id (the bulk load's path)."""
    from pyspark.sql import functions as F

    stamp = F.lit(int(time.time() * 1000))
    return with_partitions(events, stamp).dropDuplicates(["event_id"]).select(*TABLE_COLUMNS)


def parsed(kafka_df):
    """Kafka rows -> validated rows (event columns, extra, reason, raw) with their Kafka position and partitions."""
    from pyspark.sql import functions as F

    from spark.event_rules import validated

    source = kafka_df.select("value", F.col("partition").alias("kafka_partition"),
                             F.col("offset").alias("kafka_offset"))
    return with_partitions(validated(source))


def deduplicated(rows, window: str):
    """Drop a repeated event_id seen within ``window`` of the sink's clock (bounded RocksDB state).

    Rejected records never collide: their key is their Kafka position.
    """
    from pyspark.sql import functions as F

    key = F.when(F.col("reason").isNull(), F.col("event_id")).otherwise(
        F.concat(F.lit("!"), F.col("kafka_partition").cast("string"), F.lit(":"), F.col("kafka_offset").cast("string")))
    return (rows.withColumn("_dedup_key", key)
            .withColumn("_seen_at", F.current_timestamp())
            .withWatermark("_seen_at", window)
            .dropDuplicatesWithinWatermark(["_dedup_key"])
            .drop("_dedup_key"))


def dlq_records(rejected):
    """Kafka records for the DLQ: JSON with reason, raw bytes (base64) and source offset."""
    from pyspark.sql import functions as F

    payload = F.to_json(
        F.struct(
            F.col("reason"),
            F.base64(F.col("raw")).alias("raw_base64"),
            F.col("kafka_partition").alias("source_partition"),
            F.col("kafka_offset").alias("source_offset"),
            F.col("ingested_at").alias("rejected_at"),
        )
    )
    return rejected.select(F.col("kafka_offset").cast("string").alias("key"), payload.alias("value"))


class EventsSink:
    """foreachBatch target: each de-duplicated micro-batch -> Redis aggregates, Hive events, DLQ; exactly once."""

    def __init__(self, spark, settings: Settings, checkpoint: Path):
        self.spark = spark
        self.settings = settings
        self.checkpoint = checkpoint
        self.table = f"{settings.hive.database}.{TABLE}"
        self.files = BatchFiles(spark, self.table, ["dt", "hr"], f"{settings.warehouse.as_uri()}/_staging")
        self.progress_path = progress_path(settings, "stream-events")
        self.totals = {"batches": 0, "valid": 0, "rejected": 0, "duplicates": 0, "aggregated": 0, "late": 0}
        self.by_type: dict[str, int] = {}  # valid events since start, by event_type
        self.redis_lag_s: float | None = None
        self.known_partitions: set[tuple] = set()
        self._aggregates = None

    def aggregates(self):
        # Keyed by the query id stored in the checkpoint, so a fresh checkpoint
        # (batch ids from 0 again) never matches an old batch marker in Redis.
        if self._aggregates is None:
            from spark.stream_aggregates import RedisAggregates

            query_id = json.loads((self.checkpoint / "metadata").read_text())["id"]
            self._aggregates = RedisAggregates(self.settings, query_id, 1000 * self.settings.spark.aggregates_late_after_s)
        return self._aggregates

    def __call__(self, batch_df, batch_id: int) -> None:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        started = time.time()
        rows = batch_df.persist(StorageLevel.MEMORY_AND_DISK)
        # one action: partitions and counts by type (and it fills the cache the rest reads)
        counts = rows.groupBy(F.col("reason").isNull().alias("ok"), "dt", "hr", "event_type").count().collect()
        partitions = sorted({(r.dt, r.hr) for r in counts if r.ok})
        n_valid = sum(r["count"] for r in counts if r.ok)
        n_rejected = sum(r["count"] for r in counts if not r.ok)
        for r in counts:
            if r.ok:
                self.by_type[r.event_type] = self.by_type.get(r.event_type, 0) + r["count"]
        valid = rows.where(F.col("reason").isNull())
        phases = {"read": time.time() - started}
        agg = self.aggregates()(valid, batch_id) if n_valid else None  # Redis first: the fresher path
        phases["redis"] = time.time() - started - sum(phases.values())
        # event time of the batch's newest event -> its aggregates in Redis (the dashboard's freshness)
        if agg is not None and agg.max_ts is not None:
            self.redis_lag_s = max(0.0, time.time() - agg.max_ts / 1000)
        # a replay first forgets what its crashed attempt wrote
        self.files.delete_attempt(batch_id, partitions)
        if n_valid:
            new = [p for p in partitions if p not in self.known_partitions]
            self.files.write(valid.select(*TABLE_COLUMNS), batch_id, partitions, register=new,
                             max_records_per_file=self.settings.spark.file_max_records, single_task=False)
            self.known_partitions.update(new)
        if n_rejected:
            self._send_to_dlq(rows.where(F.col("reason").isNotNull()))
        rows.unpersist()
        phases["hive"] = time.time() - started - sum(phases.values())
        self._record(batch_id, n_valid, n_rejected, agg.late if agg else 0, time.time() - started, phases)

    def _send_to_dlq(self, rejected) -> None:
        (dlq_records(rejected).write.format("kafka")
         .option("kafka.bootstrap.servers", self.settings.kafka.bootstrap)
         .option("topic", self.settings.kafka.dlq_topic)
         .option("kafka.enable.idempotence", "true")
         .option("kafka.acks", "all")
         .option("kafka.max.request.size", str(DLQ_MAX_MESSAGE_BYTES))
         .save())

    def _record(self, batch_id: int, written: int, rejected: int, late: int, seconds: float,
                phases: dict[str, float]) -> None:
        self.totals["batches"] += 1
        self.totals["valid"] += written
        self.totals["rejected"] += rejected
        self.totals["aggregated"] = self._aggregates.applied if self._aggregates else 0
        self.totals["late"] += late
        state = {"batch_id": batch_id, "updated_at": time.time(), "batch_seconds": round(seconds, 2),
                 "phase_seconds": {k: round(v, 2) for k, v in phases.items()},
                 "last_batch": {"written": written, "rejected": rejected, "late": late},
                 "since_start": {**self.totals, "by_type": dict(self.by_type)},
                 "redis_lag_s": round(self.redis_lag_s, 2) if self.redis_lag_s is not None else None}
        write_json_atomic(self.progress_path, state)
        split = ", ".join(f"{k} {v:.1f}s" for k, v in phases.items())
        print(f"batch {batch_id}: {written} events -> {self.table} and Redis aggregates, {rejected} -> DLQ "
              f"({seconds:.1f}s: {split})", flush=True)


def duplicates_listener(sink: EventsSink):
    """A query listener that adds what the de-duplication dropped (the query's progress) to the sink's totals."""
    from pyspark.sql.streaming import StreamingQueryListener

    class DuplicatesListener(StreamingQueryListener):
        def onQueryStarted(self, event):
            pass

        def onQueryProgress(self, event):
            if event.progress.name == QUERY_NAME:
                for op in event.progress.stateOperators or []:
                    sink.totals["duplicates"] += int(op.customMetrics.get("numDroppedDuplicateRows", 0))

        def onQueryIdle(self, event):
            pass

        def onQueryTerminated(self, event):
            pass

    return DuplicatesListener()


def read_kafka(spark, settings: Settings, topic: str | None = None):
    k = settings.kafka
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", k.bootstrap)
        .option("subscribe", topic or k.events_topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", settings.spark.max_offsets_per_trigger)
        .option("kafka.request.timeout.ms", k.request_timeout_ms * 6)
        .option("failOnDataLoss", "true")
        .load()
    )


SERVED_TRIGGER_S = 30


def committed_offsets(settings: Settings) -> int | None:
    """Sum over partitions of the Kafka offsets the events sink has committed (its checkpoint); None before any."""
    offsets = committed_partition_offsets(settings, "stream-events", settings.kafka.events_topic)
    return None if offsets is None else sum(offsets.values())


def _start(stream, sink, name: str, checkpoint: Path, once: bool, every_s: int):
    writer = (
        stream.writeStream.foreachBatch(sink)
        .option("checkpointLocation", checkpoint.as_uri())
        .queryName(name)
    )
    writer = writer.trigger(availableNow=True) if once else writer.trigger(processingTime=f"{every_s} seconds")
    return writer.start()


def main(args) -> int:
    """Two queries in one Spark app (one JVM): events -> Redis aggregates and Hive (exactly once),
    and served feeds -> Hive served_feeds."""
    from feature_store.offline import get_spark
    from spark.served_feeds import ServedFeedsSink

    settings = get_settings()
    spark = get_spark(APP_NAME, with_kafka=True, settings=settings)
    # two cores: two state partitions; de-duplication state in RocksDB, checkpointed as changelogs
    spark.conf.set("spark.sql.shuffle.partitions", "2")
    spark.conf.set("spark.sql.streaming.stateStore.providerClass", STATE_STORE)
    spark.conf.set("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
    # no batch without new data: the watermark only moves when events come (idle costs nothing)
    spark.conf.set("spark.sql.streaming.noDataMicroBatches.enabled", "false")
    checkpoint = checkpoint_dir(settings)
    sink = EventsSink(spark, settings, checkpoint)
    spark.streams.addListener(duplicates_listener(sink))
    spark.streams.addListener(heartbeat_listener(settings, "stream-events"))

    def start() -> list:
        events = deduplicated(parsed(read_kafka(spark, settings)), settings.spark.dedup_window)
        return [
            _start(events, sink, QUERY_NAME, checkpoint, args.once, settings.spark.streaming_trigger_s),
            _start(read_kafka(spark, settings, settings.kafka.served_topic), ServedFeedsSink(spark, settings),
                   "served_to_hive", checkpoint_dir(settings, "served-feeds"), args.once, SERVED_TRIGGER_S),
        ]

    print(f"streaming {settings.kafka.events_topic} -> {sink.table} and Redis aggregates "
          f"(checkpoints under {checkpoint.parent})", flush=True)
    if args.once:
        for query in start():
            query.awaitTermination()
    else:
        # a Kafka or metastore outage: wait for it and restart the queries here; any other failure
        # stops the app, and the supervisor restarts it
        run_resilient(spark, start, settings, "stream-events", log=lambda m: print(m, flush=True))
    totals = sink.totals
    print(f"stream-events done: {totals['valid']} events written to {sink.table} and aggregated into Redis, "
          f"{totals['rejected']} to {settings.kafka.dlq_topic}, {totals['duplicates']} duplicates dropped, "
          f"{totals['late']} too late for the trending windows, in {totals['batches']} batches")
    return 0


