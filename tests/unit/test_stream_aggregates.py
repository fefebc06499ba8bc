"""The real-time aggregation transform, on a small local SparkSession (no services)."""

import pandas as pd
import pytest

from feature_store.definitions import SLIDE_MS, TUMBLING_MS
from models.data import event_weights

import pyspark  # noqa: E402  (a locked dependency: a broken install fails, never skips)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("test-aggregates")
               .config("spark.sql.shuffle.partitions", "1").config("spark.ui.enabled", "false").getOrCreate())
    yield session
    session.stop()


EVENTS = pd.DataFrame(
    [
        ("view", "u1", "i1", 1_000, None),
        ("click", "u1", "i1", 2_000, None),
        ("dwell", "u1", "i1", 3_000, 60_000),
        ("dwell", "u2", "i2", TUMBLING_MS + 1, 1_000),  # too short to count
        ("purchase", "u2", "i2", SLIDE_MS + 5, None),
        ("impression", "u2", "i3", 4_000, None),
        ("search", "u2", None, 5_000, None),
    ],
    columns=["event_type", "user_id", "item_id", "ts", "dwell_ms"],
)


def test_streaming_weights_match_training_weights(spark):
    from spark.stream_aggregates import weight_column

    df = spark.createDataFrame(EVENTS.astype({"dwell_ms": "float64"}))
    streamed = [r.weight for r in df.withColumn("weight", weight_column()).orderBy("ts").collect()]
    batch = event_weights(EVENTS.sort_values("ts")).tolist()
    assert [None if pd.isna(b) else b for b in batch] == streamed


def test_aggregate_sums_per_pane_item_and_user(spark):
    from spark.stream_aggregates import aggregate

    agg = aggregate(spark.createDataFrame(EVENTS.astype({"dwell_ms": "float64"})))
    assert agg.events == len(EVENTS)
    assert sorted(agg.panes_1m) == [(0, "i1", 1.0 + 2.0 + 3.0), (SLIDE_MS, "i2", 5.0)]
    assert sorted(agg.panes_5m) == [(0, "i1", 6.0), (SLIDE_MS, "i2", 5.0)]
    assert dict(agg.popular) == {"i1": 6.0, "i2": 5.0}
    assert ("u2", "impression", 1) in agg.user_stats and ("u1", "view", 1) in agg.user_stats
    # impressions are not "seen"; the last interaction time is kept
    assert sorted(agg.recent) == [("u1", "i1", 3_000), ("u2", "i2", SLIDE_MS + 5)]


def test_events_behind_the_watermark_miss_the_windows_but_are_counted(spark):
    from spark.stream_aggregates import aggregate

    agg = aggregate(spark.createDataFrame(EVENTS.astype({"dwell_ms": "float64"})), watermark_ms=SLIDE_MS)
    assert sorted(agg.panes_1m) == [(SLIDE_MS, "i2", 5.0)] and sorted(agg.panes_5m) == [(SLIDE_MS, "i2", 5.0)]
    assert agg.late == 3  # the view, click and long dwell on i1, all before the watermark
    assert dict(agg.popular) == {"i1": 6.0, "i2": 5.0}  # popular has no window to be late for
    assert agg.events == len(EVENTS) and agg.max_ts == SLIDE_MS + 5
