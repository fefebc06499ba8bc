"""Hive maintenance jobs run by the `feedloop_hive_maintenance` DAG.

- ``compact``: the streaming sink writes a file per micro-batch and partition;
  compaction rewrites a day's hour partitions of ``events`` into one file each,
  keeping one row per event_id (a duplicate resent after the sink's window goes).
  Only the files it read are removed afterwards, so files the sink adds
  meanwhile are kept, and the sink's event_id de-duplication keeps a replayed
  batch from landing twice. Readers may see a partition's rows twice for the
  moment between the new file's rename and the old files' deletion.
- ``retention``: drop partitions older than ``--keep-days`` (data and metadata).
- ``analyze``: ``ANALYZE TABLE … COMPUTE STATISTICS`` for the day's partitions.
"""

from __future__ import annotations

import time
from datetime import date, timedelta

from feedloop.dates import iso_day
from feedloop.settings import get_settings
from spark.hive_files import BatchFiles

PARTITIONED = {"events": ["dt", "hr"], "served_feeds": ["dt"]}
DAILY_TABLES = ("user_features", "item_features", "training_examples", "model_metrics")


def _spark(app: str):
    from feature_store.offline import get_spark

    return get_spark(app)


def compact_partition(spark, files: BatchFiles, values: tuple) -> tuple[int, int]:
    """Rewrite one partition's files into one; return (files before, rows)."""
    before = files.existing_files([values])
    if len(before) <= 1:
        return len(before), 0
    df = spark.read.parquet(*before)
    if "event_id" in df.columns:
        # also removes a duplicate that came back after the sink's de-duplication window
        df = df.dropDuplicates(["event_id"])
    df = df.cache()
    rows = df.count()
    directory = files.partition_dir(values)
    staging = f"{files.staging_root}/compact/{files.table}/{'/'.join(map(str, values))}"
    df.coalesce(1).write.mode("overwrite").parquet(staging)
    fs = files._fs()
    produced = fs.globStatus(files._path(f"{staging}/part-*.parquet")) or []
    stamp = int(time.time() * 1000)
    for n, status in enumerate(produced):
        fs.rename(status.getPath(), files._path(f"{directory}/c{stamp}-{n:04d}.zstd.parquet"))
    for path in before:
        fs.delete(files._path(path), False)
    fs.delete(files._path(staging), True)
    df.unpersist()
    return len(before), rows


def compact(args) -> int:
    ds = iso_day(args.ds)
    settings = get_settings()
    spark = _spark("feedloop-compact")
    db = settings.hive.database
    files = BatchFiles(spark, f"{db}.events", PARTITIONED["events"], f"{settings.warehouse.as_uri()}/_staging")
    partitions = [tuple(r) for r in spark.sql(f"SELECT DISTINCT dt, hr FROM {db}.events WHERE dt = :ds",
                                              args={"ds": ds}).collect()]
    total_before, total_rows = 0, 0
    for n, values in enumerate(sorted(partitions), 1):
        before, rows = compact_partition(spark, files, values)
        total_before += before
        total_rows += rows
        print(f"  compact {n}/{len(partitions)} dt={values[0]}/hr={values[1]}: {before} files -> 1", flush=True)
    spark.sql(f"REFRESH TABLE {db}.events")
    print(f"compact: {db}.events dt={ds}: {total_before} files -> {len(partitions)} ({total_rows} rows rewritten)")
    return 0


def retention(args) -> int:
    ds = iso_day(args.ds)
    settings = get_settings()
    spark = _spark("feedloop-retention")
    db = settings.hive.database
    cutoff = (date.fromisoformat(ds) - timedelta(days=args.keep_days)).isoformat()
    dropped = 0
    for table in (*PARTITIONED, *DAILY_TABLES):
        for row in spark.sql(f"SHOW PARTITIONS {db}.{table}").collect():
            spec = dict(part.split("=", 1) for part in row[0].split("/"))
            if spec["dt"] < cutoff:
                where = ", ".join(f"{k}='{v}'" if k == "dt" else f"{k}={v}" for k, v in spec.items())
                spark.sql(f"ALTER TABLE {db}.{table} DROP IF EXISTS PARTITION ({where}) PURGE")
                dropped += 1
    print(f"retention: dropped {dropped} partitions older than {cutoff} ({args.keep_days} days before {ds})")
    return 0


def analyze(args) -> int:
    ds = iso_day(args.ds)  # checked again here: it goes into the partition spec as written
    settings = get_settings()
    spark = _spark("feedloop-analyze")
    db = settings.hive.database
    for table in (*PARTITIONED, *DAILY_TABLES):
        parts = [r[0] for r in spark.sql(f"SHOW PARTITIONS {db}.{table}").collect() if r[0].startswith(f"dt={ds}")]
        if parts:
            spark.sql(f"ANALYZE TABLE {db}.{table} PARTITION (dt='{ds}') COMPUTE STATISTICS")
    for table in ("users", "items"):
        spark.sql(f"ANALYZE TABLE {db}.{table} COMPUTE STATISTICS")
    print(f"analyze: statistics computed for dt={ds} of {db}")
    return 0
