"""The offline store: Hive tables, read and written by Spark through the shared metastore.

Every Spark process (batch jobs, the streaming sink, the thrift server) talks to
the same Hive metastore over thrift, so what one writes the others see at once.
HiveServer2 queries (analysts, sensors, counts) go through
:func:`feedloop.clients.hive_connection`.
"""

from __future__ import annotations

import os

from feedloop.settings import Settings, get_settings
from feedloop.sparkconf import spark_conf, spark_env


def get_spark(app_name: str, with_kafka: bool = False, settings: Settings | None = None):
    """A SparkSession wired to the shared metastore (imported lazily: pyspark is slow to load)."""
    from pyspark.sql import SparkSession

    settings = settings or get_settings()
    os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
    os.environ.update(spark_env(settings))  # read by the JVM that getOrCreate launches
    builder = SparkSession.builder.enableHiveSupport()
    for name, value in spark_conf(settings, app_name, with_kafka).items():
        builder = builder.config(name, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark

