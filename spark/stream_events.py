"""Streaming sink: Kafka ``feedback.events`` -> validate -> Hive ``feedloop.events``.

Exactly once per event_id, across crashes:

* Spark's checkpoint replays an unfinished micro-batch with the same batch id and
  the same offsets;
* the batch first deletes any files a previous attempt of the same batch id left
  (files are named ``b<batch id>-*``), then drops events whose event_id is already
  in the partitions it touches, then writes and renames its files into place;
* so a replay rewrites exactly what the crashed attempt wrote, and an event sent
  twice to Kafka (a client retry) lands once.

Records that fail :func:`feedloop.events.validate` go to the DLQ topic with the
reason and their raw bytes (base64); the stream keeps running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

from feedloop.events import FIELDS, Rejection, validate
from feedloop.services import DLQ_MAX_MESSAGE_BYTES
from feedloop.settings import Settings, get_settings
from spark.hive_files import BatchFiles

APP_NAME = "feedloop-stream-events"
TABLE = "events"
MAX_OFFSETS_PER_TRIGGER = 100_000

EVENT_SCHEMA_DDL = (
    "event_id string, event_type string, user_id string, item_id string, ts bigint, dwell_ms bigint, "
    "query string, session_id string, feed_id string, position int, model_version string, "
    "schema_version int, extra map<string,string>, kafka_partition int, kafka_offset bigint, "
    "reason string, raw binary"
)
TABLE_COLUMNS = [*FIELDS, "extra", "kafka_partition", "kafka_offset", "ingested_at", "dt", "hr"]


def validate_partition(batches: Iterator) -> Iterator:
    """mapInPandas body: validate raw Kafka values with the one validator."""
    import pandas as pd

    for pdf in batches:
        rows = []
        for value, partition, offset in zip(pdf["value"], pdf["partition"], pdf["offset"]):
            result = validate(value)
            if isinstance(result, Rejection):
                row = {name: None for name in FIELDS}
                row.update(extra=None, reason=str(result), raw=bytes(value) if value is not None else b"")
            else:
                row = dict(result, reason=None, raw=None)
            row.update(kafka_partition=int(partition), kafka_offset=int(offset))
            rows.append(row)
        yield pd.DataFrame(rows, columns=[c.split(" ")[0] for c in EVENT_SCHEMA_DDL.split(", ")])


def validated(batch_df):
    """The raw Kafka batch run through the one validator (columns of EVENT_SCHEMA_DDL)."""
    return batch_df.select("value", "partition", "offset").mapInPandas(validate_partition, EVENT_SCHEMA_DDL)


def split_valid(parsed):
    """(valid events with dt/hr, rejected records) from the validated batch."""
    from pyspark.sql import functions as F

    valid = table_rows(parsed.where(F.col("reason").isNull()))
    rejected = parsed.where(F.col("reason").isNotNull())
    return valid, rejected


def table_rows(events):
    """Valid events as rows of the events table: ``ingested_at``, partitions ``dt``/``hr`` (UTC, from ``ts``),
    one row per event_id. The stream and the backfill both use it."""
    from pyspark.sql import functions as F

    return (
        events
        .withColumn("ingested_at", F.lit(int(time.time() * 1000)).cast("bigint"))
        .withColumn("event_ts", F.timestamp_millis(F.col("ts")))
        .withColumn("dt", F.date_format(F.col("event_ts"), "yyyy-MM-dd"))
        .withColumn("hr", F.hour(F.col("event_ts")))
        .dropDuplicates(["event_id"])
        .select(*TABLE_COLUMNS)
    )


def dlq_records(rejected):
    """Kafka records for the DLQ: JSON with reason, raw bytes (base64) and source offset."""
    from pyspark.sql import functions as F

    payload = F.to_json(
        F.struct(
            F.col("reason"),
            F.base64(F.col("raw")).alias("raw_base64"),
            F.col("kafka_partition").alias("source_partition"),
            F.col("kafka_offset").alias("source_offset"),
            F.lit(int(time.time() * 1000)).alias("rejected_at"),
        )
    )
    return rejected.select(F.col("kafka_offset").cast("string").alias("key"), payload.alias("value"))


class HiveEventsSink:
    """foreachBatch target that writes each micro-batch exactly once into the events table."""

    def __init__(self, spark, settings: Settings):
        self.spark = spark
        self.settings = settings
        self.table = f"{settings.hive.database}.{TABLE}"
        self.files = BatchFiles(spark, self.table, ["dt", "hr"], f"{settings.warehouse.as_uri()}/_staging")
        self.progress_path = settings.var / "run" / "stream-events.json"
        self.totals = {"batches": 0, "valid": 0, "rejected": 0, "duplicates": 0}

    def __call__(self, batch_df, batch_id: int) -> None:
        started = time.time()
        parsed = validated(batch_df).cache()
        valid, rejected = split_valid(parsed)
        valid = valid.cache()
        partitions = self.files.partitions_of(valid)
        # Order matters: forget this batch's earlier attempt first, so its events are
        # not mistaken for duplicates, then drop event_ids already in the table.
        self.files.delete_attempt(batch_id, partitions)
        existing = self.files.existing_files(partitions)
        fresh = valid
        if existing:
            fresh = valid.join(self.spark.read.parquet(*existing).select("event_id"), on="event_id", how="left_anti")
        fresh = fresh.cache()
        n_valid, n_fresh = valid.count(), fresh.count()
        if n_fresh:
            self.files.write(fresh, batch_id, partitions)
        n_rejected = self._send_to_dlq(rejected)
        for df in (parsed, valid, fresh):
            df.unpersist()
        self._record(batch_id, n_fresh, n_rejected, n_valid - n_fresh, time.time() - started)

    def _send_to_dlq(self, rejected) -> int:
        count = rejected.count()
        if count:
            (dlq_records(rejected).write.format("kafka")
             .option("kafka.bootstrap.servers", self.settings.kafka.bootstrap)
             .option("topic", self.settings.kafka.dlq_topic)
             .option("kafka.enable.idempotence", "true")
             .option("kafka.acks", "all")
             .option("kafka.max.request.size", str(DLQ_MAX_MESSAGE_BYTES))
             .save())
        return count

    def _record(self, batch_id: int, fresh: int, rejected: int, dups: int, seconds: float) -> None:
        self.totals["batches"] += 1
        self.totals["valid"] += fresh
        self.totals["rejected"] += rejected
        self.totals["duplicates"] += dups
        state = {"batch_id": batch_id, "updated_at": time.time(), "batch_seconds": round(seconds, 2),
                 "last_batch": {"written": fresh, "rejected": rejected, "duplicates": dups}, "since_start": self.totals}
        write_json_atomic(self.progress_path, state)
        print(f"batch {batch_id}: {fresh} events -> {self.table}, {rejected} -> DLQ, {dups} duplicates dropped "
              f"({seconds:.1f}s)", flush=True)


def read_kafka(spark, settings: Settings, topic: str | None = None):
    k = settings.kafka
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", k.bootstrap)
        .option("subscribe", topic or k.events_topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", MAX_OFFSETS_PER_TRIGGER)
        .option("kafka.request.timeout.ms", k.request_timeout_ms * 6)
        .option("failOnDataLoss", "true")
        .load()
    )


AGGREGATES_TRIGGER_S = 1
SERVED_TRIGGER_S = 30


def write_json_atomic(path: Path, value) -> None:
    """Write ``value`` as JSON to ``path`` through a rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def checkpoint_dir(settings: Settings, query: str = "stream-events") -> Path:
    return settings.var / "checkpoints" / query


def _start(spark, settings: Settings, sink, name: str, checkpoint: Path, once: bool, every_s: int, topic: str | None = None):
    writer = (
        read_kafka(spark, settings, topic).writeStream.foreachBatch(sink)
        .option("checkpointLocation", checkpoint.as_uri())
        .queryName(name)
    )
    writer = writer.trigger(availableNow=True) if once else writer.trigger(processingTime=f"{every_s} seconds")
    return writer.start()


def main(args) -> int:
    """Three queries in one Spark app (one JVM): events -> Hive (exactly once), events ->
    Redis aggregates, and served feeds -> Hive served_feeds."""
    from feedloop.spark import get_spark
    from spark.served_feeds import ServedFeedsSink
    from spark.stream_aggregates import RedisAggregatesSink

    settings = get_settings()
    spark = get_spark(APP_NAME, with_kafka=True, settings=settings)
    spark.conf.set("spark.sql.shuffle.partitions", "2")
    hive_sink = HiveEventsSink(spark, settings)
    redis_checkpoint = checkpoint_dir(settings, "stream-aggregates")
    redis_sink = RedisAggregatesSink(settings, redis_checkpoint)
    queries = [
        _start(spark, settings, hive_sink, "events_to_hive", checkpoint_dir(settings), args.once,
               settings.spark.streaming_trigger_s),
        _start(spark, settings, redis_sink, "events_to_redis", redis_checkpoint, args.once, AGGREGATES_TRIGGER_S),
        _start(spark, settings, ServedFeedsSink(spark, settings), "served_to_hive",
               checkpoint_dir(settings, "served-feeds"), args.once, SERVED_TRIGGER_S, settings.kafka.served_topic),
    ]
    print(f"streaming {settings.kafka.events_topic} -> {hive_sink.table} and Redis aggregates "
          f"(checkpoints under {checkpoint_dir(settings).parent})", flush=True)
    if args.once:
        for query in queries:
            query.awaitTermination()
    else:
        spark.streams.awaitAnyTermination()  # one query failing stops the app; the supervisor restarts it
    totals = hive_sink.totals
    print(f"stream-events done: {totals['valid']} events written to {hive_sink.table}, {totals['rejected']} to "
          f"{settings.kafka.dlq_topic}, {totals['duplicates']} duplicates dropped in {totals['batches']} batches; "
          f"{redis_sink.applied} events aggregated into Redis")
    return 0


def progress_summary(settings: Settings) -> str:
    """One line for `feedloop status`: last batch and time since it."""
    path = settings.var / "run" / "stream-events.json"
    if not path.exists():
        return "stream-events: no batch processed yet"
    state = json.loads(path.read_text())
    age = time.time() - state["updated_at"]
    totals = state["since_start"]
    return (f"stream-events: last batch {state['batch_id']} {age:.0f}s ago; since start {totals['valid']} events "
            f"written, {totals['rejected']} to DLQ, {totals['duplicates']} duplicates dropped")
