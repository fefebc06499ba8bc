"""Daily features (offline store): ``user_features`` and ``item_features`` for one day.

Pure transforms plus a thin main. ``main`` overwrites exactly the ``dt=ds``
partition of each table, so a rerun of a day gives identical tables.
Run by the DAG through SparkSubmitOperator: ``spark-submit spark/features.py --ds``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from feature_store.definitions import DWELL_MAX_BONUS, DWELL_MIN_MS, DWELL_UNIT_MS, EVENT_WEIGHTS
from feature_store.segments import ANY
from feedloop.dates import iso_day

WINDOWS = (1, 7, 30)
TOP_CATEGORIES = 3
AGE_BANDS = ((17, "<18"), (24, "18-24"), (34, "25-34"), (44, "35-44"), (54, "45-54"))


def weight_column() -> Column:
    """The event weight as a Spark expression (same rule as models.data.event_weights)."""
    dwell = F.lit(1.0) + F.least(F.col("dwell_ms") / F.lit(float(DWELL_UNIT_MS)), F.lit(DWELL_MAX_BONUS))
    expr = F.when((F.col("event_type") == "dwell") & (F.col("dwell_ms") >= DWELL_MIN_MS), dwell)
    for event_type, weight in EVENT_WEIGHTS.items():
        expr = expr.when(F.col("event_type") == event_type, F.lit(weight))
    return expr


def window_start(ds: str, days: int) -> str:
    return (date.fromisoformat(ds) - timedelta(days=days - 1)).isoformat()


def segment_column() -> Column:
    """Spark twin of feature_store.segments.segment_of (tested to agree)."""
    gender = F.upper(F.substring(F.trim(F.coalesce(F.col("gender"), F.lit(""))), 1, 1))
    gender = F.when(gender.isin("F", "M"), gender).otherwise(F.lit(ANY))
    band = F.when(F.col("age").isNull() | (F.col("age") < 0), F.lit(ANY))
    for high, label in AGE_BANDS:
        band = band.when(F.col("age") <= high, F.lit(label))
    band = band.otherwise(F.lit("55+"))
    top = F.lower(F.trim(F.try_element_at(F.filter(F.col("interests"), lambda i: F.trim(i) != ""), F.lit(1))))
    return F.concat_ws("|", gender, band, F.coalesce(top, F.lit(ANY)))


def _window_counts(events: DataFrame, key: str, ds: str) -> DataFrame:
    aggs = [F.sum(F.when(F.col("dt") >= window_start(ds, d), 1).otherwise(0)).cast("bigint").alias(f"events_{d}d")
            for d in WINDOWS]
    seven = F.col("dt") >= window_start(ds, 7)
    aggs += [
        F.sum(F.when(seven & (F.col("event_type") == "click"), 1).otherwise(0)).cast("bigint").alias("clicks_7d"),
        F.sum(F.when(seven & (F.col("event_type") == "impression"), 1).otherwise(0)).cast("bigint").alias("impressions_7d"),
        F.avg(F.when(seven & (F.col("event_type") == "dwell"), F.col("dwell_ms"))).alias("dwell_ms_avg_7d"),
        F.max("ts").alias("last_event_ts"),
    ]
    counts = events.groupBy(key).agg(*aggs)
    ctr = F.when(F.col("impressions_7d") > 0, F.col("clicks_7d") / F.col("impressions_7d")).otherwise(F.lit(0.0))
    return counts.withColumn("ctr_7d", ctr)


def user_features(events: DataFrame, users: DataFrame, items: DataFrame, ds: str) -> DataFrame:
    """One row per user active in the 30 days up to ds (or known in ``users``)."""
    counts = _window_counts(events, "user_id", ds)
    by_category = (
        events.where(F.col("item_id").isNotNull())
        .join(items.select("item_id", "category"), on="item_id", how="inner")
        .withColumn("weight", F.coalesce(weight_column(), F.lit(0.0)))
        .groupBy("user_id", "category").agg(F.sum("weight").alias("w"))
        .groupBy("user_id")
        .agg(F.sort_array(F.collect_list(F.struct(-F.col("w"), F.col("category"))), asc=True).alias("ranked"))
        .select("user_id", F.slice(F.col("ranked.category"), 1, TOP_CATEGORIES).alias("top_categories"))
    )
    profiles = users.select("user_id", segment_column().alias("segment"))
    return (
        profiles.join(counts, on="user_id", how="full")
        .join(by_category, on="user_id", how="left")
        .select(
            "user_id",
            F.coalesce(F.col("segment"), F.lit(f"{ANY}|{ANY}|{ANY}")).alias("segment"),
            *[F.coalesce(F.col(f"events_{d}d"), F.lit(0)).cast("bigint").alias(f"events_{d}d") for d in WINDOWS],
            F.coalesce(F.col("clicks_7d"), F.lit(0)).cast("bigint").alias("clicks_7d"),
            F.coalesce(F.col("impressions_7d"), F.lit(0)).cast("bigint").alias("impressions_7d"),
            F.coalesce(F.col("ctr_7d"), F.lit(0.0)).alias("ctr_7d"),
            F.col("dwell_ms_avg_7d"),
            F.coalesce(F.col("top_categories"), F.array().cast("array<string>")).alias("top_categories"),
            F.col("last_event_ts"),
            F.lit(ds).alias("dt"),
        )
    )


def item_features(events: DataFrame, items: DataFrame, ds: str) -> DataFrame:
    """One row per catalogue item (and per item seen in events but missing from the catalogue)."""
    item_events = events.where(F.col("item_id").isNotNull())
    counts = _window_counts(item_events, "item_id", ds)
    weights = (
        item_events.where(F.col("dt") >= window_start(ds, 7))
        .groupBy("item_id").agg(F.sum(F.coalesce(weight_column(), F.lit(0.0))).alias("weight_7d"))
    )
    return (
        items.select("item_id", "category")
        .join(counts, on="item_id", how="full")
        .join(weights, on="item_id", how="left")
        .select(
            "item_id",
            F.coalesce(F.col("category"), F.lit(ANY)).alias("category"),
            *[F.coalesce(F.col(f"events_{d}d"), F.lit(0)).cast("bigint").alias(f"events_{d}d") for d in WINDOWS],
            F.coalesce(F.col("clicks_7d"), F.lit(0)).cast("bigint").alias("clicks_7d"),
            F.coalesce(F.col("impressions_7d"), F.lit(0)).cast("bigint").alias("impressions_7d"),
            F.coalesce(F.col("ctr_7d"), F.lit(0.0)).alias("ctr_7d"),
            F.col("dwell_ms_avg_7d"),
            F.coalesce(F.col("weight_7d"), F.lit(0.0)).alias("weight_7d"),
            F.col("last_event_ts"),
            F.lit(ds).alias("dt"),
        )
    )


def read_window(spark, database: str, ds: str, days: int = 30) -> DataFrame:
    return spark.table(f"{database}.events").where(F.col("dt").between(window_start(ds, days), ds))


def overwrite_partition(df: DataFrame, table: str) -> None:
    """INSERT OVERWRITE of exactly the partitions present in df (dynamic partition overwrite)."""
    columns = [c.name for c in df.sparkSession.table(table).schema]
    df.select(*columns).write.insertInto(table, overwrite=True)


def parse_ds(argv: list[str]) -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ds", required=True, type=iso_day)
    return parser.parse_args(argv).ds


def main(argv: list[str] | None = None) -> int:
    from feature_store.offline import batch_spark
    from feedloop.settings import get_settings

    ds = parse_ds(sys.argv[1:] if argv is None else argv)
    settings = get_settings()
    db = settings.hive.database
    spark = batch_spark("feedloop-features", settings=settings)
    events = read_window(spark, db, ds).cache()
    users, items = spark.table(f"{db}.users"), spark.table(f"{db}.items")
    overwrite_partition(user_features(events, users, items, ds), f"{db}.user_features")
    overwrite_partition(item_features(events, items, ds), f"{db}.item_features")
    n_users = spark.table(f"{db}.user_features").where(F.col("dt") == ds).count()
    n_items = spark.table(f"{db}.item_features").where(F.col("dt") == ds).count()
    print(f"features: {n_users} users -> {db}.user_features, {n_items} items -> {db}.item_features (dt={ds})")
    spark.stop()
    return 0


def main_cli(args) -> int:
    """``feedloop features|training-set --ds`` (the DAG uses spark-submit on this file)."""
    return main(["--ds", args.ds])


if __name__ == "__main__":
    sys.exit(main())
