"""Daily feature and training-set transforms on a small local SparkSession (no services)."""

import pytest

import pyspark  # noqa: E402,F401  (a locked dependency: a broken install fails here, never skips)

from feature_store.segments import segment_of  # noqa: E402

DS = "2026-03-10"
DAY = 1_773_100_800_000  # 2026-03-10T00:00Z
EVENT_COLS = "event_type string, user_id string, item_id string, ts bigint, dwell_ms bigint, dt string"


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("test-batch-features")
               .config("spark.sql.shuffle.partitions", "1").config("spark.ui.enabled", "false")
               .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    yield session
    session.stop()


@pytest.fixture(scope="module")
def events(spark):
    rows = [
        ("impression", "u1", "i1", DAY + 1, None, DS),
        ("click", "u1", "i1", DAY + 2, None, DS),
        ("dwell", "u1", "i1", DAY + 3, 45_000, DS),
        ("view", "u1", "i2", DAY - 86_400_000 * 5, None, "2026-03-05"),
        ("purchase", "u2", "i2", DAY + 10, None, DS),
        ("search", "u2", None, DAY + 11, None, DS),
        ("view", "u3", "i3", DAY + 20, None, DS),
        ("cart", "u3", "i1", DAY + 30, None, DS),
    ]
    return spark.createDataFrame(rows, EVENT_COLS)


def test_spark_segment_agrees_with_python(spark):
    from spark.features import segment_column

    users = [("F", 29, ["Comedy", "drama"]), ("m", 17, []), (None, None, None), ("X", 70, [" ", "music"])]
    df = spark.createDataFrame(users, "gender string, age int, interests array<string>")
    got = [r.segment for r in df.select(segment_column().alias("segment")).collect()]
    assert got == [segment_of(g, a, i) for g, a, i in users]


def test_user_features_count_windows_ctr_and_top_categories(spark, events):
    from spark.features import user_features

    users = spark.createDataFrame([("u1", "F", 30, ["comedy"])], "user_id string, gender string, age int, interests array<string>")
    items = spark.createDataFrame([("i1", "comedy"), ("i2", "drama"), ("i3", "action")], "item_id string, category string")
    rows = {r.user_id: r for r in user_features(events, users, items, DS).collect()}
    u1 = rows["u1"]
    assert (u1.segment, u1.events_1d, u1.events_7d, u1.events_30d) == ("F|25-34|comedy", 3, 4, 4)
    assert (u1.clicks_7d, u1.impressions_7d, u1.ctr_7d, u1.dwell_ms_avg_7d) == (1, 1, 1.0, 45_000.0)
    assert u1.top_categories == ["comedy", "drama"]
    assert rows["u2"].segment == "any|any|any" and rows["u2"].top_categories == ["drama"]


def test_training_examples_weights_and_time_split(spark, events):
    from spark.training_set import training_examples

    rows = sorted(training_examples(events, DS, holdout_share=0.25).collect(), key=lambda r: r.ts)
    pairs = {(r.user_id, r.item_id): (r.weight, r.split) for r in rows}
    # click 2 + dwell (1 + 45/30 = 2.5); impression and search are not positives
    assert pairs[("u1", "i1")] == (4.5, "train")
    assert pairs[("u2", "i2")] == (5.0, "train")
    assert pairs[("u1", "i2")] == (1.0, "train")  # 5 days back: inside the 30-day window
    assert pairs[("u3", "i1")] == (3.0, "holdout")  # the latest quarter of 5 pairs: ceil(3.75) = 4 train
    assert len(rows) == 5 and {r.dt for r in rows} == {DS}
