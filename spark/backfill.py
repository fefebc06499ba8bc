"""Load staged, validated events into ``<db>.events`` in one Spark job (see :mod:`feedloop.backfill`).

Same rows as the streaming sink (:func:`spark.stream_events.table_rows`), same
idempotent file protocol (:class:`spark.hive_files.BatchFiles`): events whose
``event_id`` is already in a touched partition are dropped, the rest are written as
``b<run id>-*`` files, and every touched partition is registered, so a rerun after a
crash completes the load without duplicating anything.
"""

from __future__ import annotations

import time

from feedloop.settings import Settings
from spark.hive_files import BatchFiles
from spark.stream_events import TABLE, table_rows


def fresh_events(rows, existing):
    """Event rows less those whose event_id is in ``existing`` (a DataFrame, or None)."""
    if existing is None:
        return rows
    return rows.join(existing.select("event_id"), on="event_id", how="left_anti")


def load(settings: Settings, staging_uri: str, run_id: int, log=print) -> dict:
    """Write the staged Parquet files at ``staging_uri`` into the events table; returns counts."""
    from pyspark.sql import functions as F

    from feedloop.spark import get_spark

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
