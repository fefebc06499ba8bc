"""Replay-safe micro-batch files, on a local SparkSession and a temporary warehouse (no services)."""

import pytest

import pyspark  # noqa: E402,F401  (a locked dependency: a broken install fails here, never skips)


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = (SparkSession.builder.master("local[1]").appName("test-hive-files")
               .config("spark.sql.warehouse.dir", warehouse.as_uri())
               .config("spark.sql.shuffle.partitions", "1").config("spark.ui.enabled", "false").getOrCreate())
    session.sql("CREATE TABLE t (id STRING, dt STRING) USING parquet PARTITIONED BY (dt)")
    yield session
    session.stop()


def rows(spark, ids, dt="2026-01-01"):
    return spark.createDataFrame([(i, dt) for i in ids], "id string, dt string")


def test_a_replayed_batch_replaces_its_earlier_attempt(spark, tmp_path):
    from spark.hive_files import BatchFiles

    files = BatchFiles(spark, "default.t", ["dt"], (tmp_path / "staging").as_uri())
    batch0 = rows(spark, ["a", "b"])
    parts = files.partitions_of(batch0)
    files.write(batch0, 0, parts)
    # the crash came after the write but before Spark committed batch 0: it runs again
    files.delete_attempt(0, parts)
    files.write(batch0, 0, parts)
    files.write(rows(spark, ["c"]), 1, parts)
    spark.sql("REFRESH TABLE t")
    assert sorted(r.id for r in spark.table("t").collect()) == ["a", "b", "c"]
    assert [f.rsplit("/", 1)[1][:12] for f in sorted(files.existing_files(parts))] == ["b0000000000-", "b0000000001-"]
