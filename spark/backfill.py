"""Backfill: historical or generated events straight into Hive, without the stream.

``feedloop simulate --to-hive`` and ``feedloop import-movielens --to-hive`` use
:class:`HiveBackfill` in place of the Kafka producer (same ``send``/``flush``/
``close``). Live traffic goes through Kafka and the streaming sink; a bulk load of
history does not need to: ML-100K spreads 200,000 events over 2,222 hour
partitions, which the stream writes one micro-batch at a time (minutes per batch),
while one Spark job writes them all in about a minute.

How it works:

1. every event goes through the one validator (:func:`feedloop.events.validate_dict`);
   a rejected event goes to the dead-letter topic with the reason, as in the stream;
2. valid events are staged as Parquet files of ``STAGE_ROWS`` events under
   ``<warehouse>/_staging/backfill-<run id>/`` (progress is printed per file);
3. :func:`spark.backfill.load` reads the staged files, computes ``dt``/``hr`` the
   way the stream does (:func:`spark.stream_events.table_rows`), drops events whose
   ``event_id`` is already in the partitions it touches, writes the rest as files
   named ``b<run id>-*`` and registers the partitions (one ``ALTER TABLE`` per 500);
4. the staging directory is removed.

A crash anywhere is safe to rerun: events already in the table are skipped by their
``event_id`` (simulated events have random ids, so a rerun of ``simulate`` adds a
new set; ML-100K events have deterministic ids, so a rerun adds nothing). The
events arrive with ``kafka_partition``/``kafka_offset`` null: they never were in Kafka.

The Spark side (load staged, validated events into ``<db>.events`` in one Spark job)

Same rows as the streaming sink (:func:`spark.stream_events.table_rows`), same
idempotent file protocol (:class:`spark.hive_files.BatchFiles`): events whose
``event_id`` is already in a touched partition are dropped, the rest are written as
``b<run id>-*`` files, and every touched partition is registered, so a rerun after a
crash completes the load without duplicating anything.
"""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Any

from feedloop.events import FIELDS, Rejection, validate_dict
from feedloop.settings import Settings
from spark.hive_files import BatchFiles
from spark.stream_events import TABLE, table_rows

STAGE_ROWS = 200_000  # events per staged Parquet file


def _arrow_schema():
    import pyarrow as pa

    types = {"ts": pa.int64(), "dwell_ms": pa.int64(), "position": pa.int32(), "schema_version": pa.int32()}
    return pa.schema([(name, types.get(name, pa.string())) for name in FIELDS]
                     + [("extra", pa.map_(pa.string(), pa.string()))])


class HiveBackfill:
    """Validates and stages events, then loads them into ``<db>.events`` on :meth:`close`.

    Drop-in for :class:`feedloop.clients.EventProducer` (``send``, ``flush``,
    ``close``, ``failed``, ``last_error``); the topic passed to ``send`` is ignored.
    """

    def __init__(self, settings: Settings, source: str, stage_rows: int = STAGE_ROWS, log=print):
        self.settings = settings
        self.source = source
        self.stage_rows = stage_rows
        self.log = log
        self.run_id = int(time.time())
        self.staging = Path(settings.warehouse) / "_staging" / f"backfill-{self.run_id}"
        self.failed = 0
        self.last_error: str | None = None
        self.staged = 0
        self.rejected = 0
        self.result: dict[str, Any] | None = None
        self._rows: list[dict[str, Any]] = []
        self._files = 0
        self._dlq = None
        self._started = time.time()

    # -- the producer interface -------------------------------------------
    def send(self, topic: str, event: dict) -> None:
        clean = validate_dict(event)
        if isinstance(clean, Rejection):
            self._reject(event, clean)
            return
        self._rows.append(clean)
        if len(self._rows) >= self.stage_rows:
            self._stage()

    def flush(self) -> None:
        self._stage()
        if self._dlq is not None:
            self._dlq.flush()

    def close(self) -> None:
        """Stage what is left and load everything into Hive (a Spark job); then clean up."""
        try:
            self.flush()
            if self.staged:
                self.log(f"  backfill: loading {self.staged:,} staged events into "
                         f"{self.settings.hive.database}.events (Spark)", flush=True)
                self.result = load(self.settings, self.staging.as_uri(), self.run_id, log=self.log)
        except Exception as exc:
            self.failed = self.staged
            self.last_error = f"Hive load failed ({exc}); rerun the command: events already loaded are skipped"
            raise
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            if self._dlq is not None:
                self._dlq.close()

    # -- internals ----------------------------------------------------------
    def _stage(self) -> None:
        if not self._rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _arrow_schema()
        columns = {name: [row.get(name) for row in self._rows] for name in FIELDS}
        columns["extra"] = [list(row["extra"].items()) if row.get("extra") else None for row in self._rows]
        table = pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names})
        self.staging.mkdir(parents=True, exist_ok=True)
        target = self.staging / f"part-{self._files:05d}.parquet"
        pq.write_table(table, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").rename(target)  # Spark never reads a half-written file
        self._files += 1
        self.staged += len(self._rows)
        self._rows = []
        rate = self.staged / max(time.time() - self._started, 1e-9)
        self.log(f"  backfill: {self.staged:,} events staged ({rate:,.0f}/s), {self.rejected} rejected", flush=True)

    def _reject(self, event: Any, reason: Rejection) -> None:
        import orjson

        self.rejected += 1
        if self._dlq is None:
            from feedloop.clients import make_producer

            self._dlq = make_producer(self.settings)
        raw = orjson.dumps(event, default=str)
        self._dlq.send(self.settings.kafka.dlq_topic, {
            "user_id": str(event.get("user_id") if isinstance(event, dict) else "") or "",
            "reason": str(reason), "raw_base64": base64.b64encode(raw).decode("ascii"),
            "source": self.source, "rejected_at": int(time.time() * 1000),
        })

    def summary(self) -> str:
        if not self.result:
            return f"backfill: nothing loaded ({self.rejected} rejected to {self.settings.kafka.dlq_topic})"
        r = self.result
        return (f"backfill: {r['written']:,} events written to {r['table']} in {r['partitions']:,} partitions, "
                f"{r['duplicates']:,} already there, {self.rejected} rejected to {self.settings.kafka.dlq_topic} "
                f"({r['seconds']:.0f}s in Spark)")


def fresh_events(rows, existing):
    """Event rows less those whose event_id is in ``existing`` (a DataFrame, or None)."""
    if existing is None:
        return rows
    return rows.join(existing.select("event_id"), on="event_id", how="left_anti")


def load(settings: Settings, staging_uri: str, run_id: int, log=print) -> dict:
    """Write the staged Parquet files at ``staging_uri`` into the events table; returns counts."""
    from pyspark.sql import functions as F

    from feature_store.offline import get_spark

    started = time.time()
    spark = get_spark("feedloop-backfill", settings=settings)
    table = f"{settings.hive.database}.{TABLE}"
    files = BatchFiles(spark, table, ["dt", "hr"], f"{settings.warehouse.as_uri()}/_staging")
    staged = (spark.read.parquet(staging_uri)  # never in Kafka: no partition or offset
              .withColumn("kafka_partition", F.lit(None).cast("int"))
              .withColumn("kafka_offset", F.lit(None).cast("bigint")))
    rows = table_rows(staged).cache()
    partitions = files.partitions_of(rows)
    log(f"  backfill: {len(partitions):,} hour partitions from {partitions[0][0]} to {partitions[-1][0]}"
        if partitions else "  backfill: no events", flush=True)
    existing_paths = files.existing_files(partitions)
    existing = spark.read.parquet(*existing_paths) if existing_paths else None
    fresh = fresh_events(rows, existing).cache()
    total, written = rows.count(), fresh.count()
    if written:
        files.write(fresh, run_id, partitions)
    else:
        files.register(partitions)  # a rerun after a crash between the file moves and the registration
    rows.unpersist()
    fresh.unpersist()
    return {"table": table, "written": written, "duplicates": total - written, "partitions": len(partitions),
            "seconds": time.time() - started}
