"""Daily training set: weighted positive (user, item) pairs with a time-based split.

Positives are clicks, dwells above the threshold, views, carts, likes and
purchases, weighted as in the seed (view 1, cart 3, like 4, purchase 5, click 2,
dwell 1 + dwell/30 s up to 4), summed per pair over the 30-day window up to ds.
The latest 20% of pairs by their last event time form the holdout, so the model
is evaluated on the future it will serve. ``main`` overwrites the ``dt=ds``
partition of ``training_examples`` only.
"""

from __future__ import annotations

import sys

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from spark.features import overwrite_partition, parse_ds, read_window, weight_column

HOLDOUT_SHARE = 0.2
COLUMNS = ["user_id", "item_id", "weight", "ts", "split", "dt"]


def training_examples(events: DataFrame, ds: str, holdout_share: float = HOLDOUT_SHARE) -> DataFrame:
    """(user_id, item_id, weight, ts, split, dt): one row per positive pair."""
    pairs = (
        events.where(F.col("item_id").isNotNull() & F.col("user_id").isNotNull())
        .withColumn("weight", weight_column())
        .where(F.col("weight").isNotNull())
        .groupBy("user_id", "item_id")
        .agg(F.sum("weight").alias("weight"), F.max("ts").alias("ts"))
    )
    # Exact rank over (ts, ids): deterministic, so a rerun of the day splits identically.
    ranked = (
        pairs.withColumn("rank", F.row_number().over(Window.orderBy("ts", "user_id", "item_id")))
        .withColumn("n", F.count(F.lit(1)).over(Window.partitionBy()))
    )
    cutoff = F.ceil(F.col("n") * F.lit(1 - holdout_share))
    return (
        ranked.withColumn("split", F.when(F.col("rank") > cutoff, F.lit("holdout")).otherwise(F.lit("train")))
        .withColumn("dt", F.lit(ds))
        .select(*COLUMNS)
    )


def main(argv: list[str] | None = None) -> int:
    from feature_store.offline import batch_spark
    from feedloop.settings import get_settings

    ds = parse_ds(sys.argv[1:] if argv is None else argv)
    settings = get_settings()
    db = settings.hive.database
    spark = batch_spark("feedloop-training-set", settings=settings)
    overwrite_partition(training_examples(read_window(spark, db, ds), ds), f"{db}.training_examples")
    counts = {r.split: r["count"] for r in
              spark.table(f"{db}.training_examples").where(F.col("dt") == ds).groupBy("split").count().collect()}
    print(f"training set: {counts.get('train', 0)} train + {counts.get('holdout', 0)} holdout pairs -> "
          f"{db}.training_examples (dt={ds})")
    spark.stop()
    return 0


def main_cli(args) -> int:
    """``feedloop features|training-set --ds`` (the DAG uses spark-submit on this file)."""
    return main(["--ds", args.ds])


if __name__ == "__main__":
    sys.exit(main())
