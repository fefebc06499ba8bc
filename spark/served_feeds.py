"""Streaming sink: Kafka ``feedback.served`` (what the API served) -> Hive ``served_feeds``.

The API logs every served feed (feed id, user, segment, source, model version,
items, time); this lands it in Hive, exactly once per micro-batch (see
spark.hive_files), so click-through rate per model version and segment is a
HiveQL join of ``served_feeds`` and ``events`` on ``feed_id``.
"""

from __future__ import annotations

from feedloop.settings import Settings
from spark.hive_files import BatchFiles

SERVED_SCHEMA = (
    "feed_id string, user_id string, segment string, source string, model_version string, "
    "items array<string>, served_at bigint"
)
COLUMNS = ["feed_id", "user_id", "segment", "source", "model_version", "items", "served_at", "dt"]


def parse_served(batch_df):
    """Kafka records -> served_feeds rows; records that do not parse are dropped (logged by count)."""
    from pyspark.sql import functions as F

    parsed = batch_df.select(F.from_json(F.col("value").cast("string"), SERVED_SCHEMA).alias("s")).select("s.*")
    return (
        parsed.where(F.col("feed_id").isNotNull() & F.col("served_at").isNotNull())
        .withColumn("dt", F.date_format(F.timestamp_millis(F.col("served_at")), "yyyy-MM-dd"))
        .select(*COLUMNS)
    )


class ServedFeedsSink:
    """foreachBatch target for feedback.served."""

    def __init__(self, spark, settings: Settings):
        self.files = BatchFiles(spark, f"{settings.hive.database}.served_feeds", ["dt"],
                                f"{settings.warehouse.as_uri()}/_staging")
        self.written = 0

    def __call__(self, batch_df, batch_id: int) -> None:
        rows = parse_served(batch_df).cache()
        partitions = self.files.partitions_of(rows)
        if partitions:
            self.files.delete_attempt(batch_id, partitions)
            self.files.write(rows, batch_id, partitions)
            count = rows.count()
            self.written += count
            print(f"served batch {batch_id}: {count} served feeds -> {self.files.table}", flush=True)
        rows.unpersist()
