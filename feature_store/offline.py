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


def batch_spark(app_name: str, settings: Settings | None = None):
    """The SparkSession of a batch step (the DAG's, backfills' reads): a Spark Connect client of the Thrift
    Server's long-running application when ``spark.connect`` is on, else a driver of its own (:func:`get_spark`).

    Measured reason (docs/performance.md, "The daily DAG"): a driver of its own costs each step a JVM and a
    metastore client, 20-40 s on this machine, for reads and writes of seconds. A server that does not
    answer fails here at once, with the service to start, rather than in the client's retries.
    """
    from feedloop.clients import port_open
    from feedloop.sparkconf import CONNECT_TOKEN_ENV, connect_url

    settings = settings or get_settings()
    if not settings.spark.connect:
        return get_spark(app_name, settings=settings)
    url = connect_url(settings, app_name)
    if not settings.spark.connect_url and not port_open(settings.bind_host, settings.spark.connect_port, timeout=2):
        raise ConnectionError(f"Spark Connect ({url}) does not answer: it runs in the thriftserver service "
                           "(`feedloop status`, `feedloop up`)")
    from pyspark.sql import SparkSession

    os.environ[CONNECT_TOKEN_ENV] = settings.spark.connect_token
    return SparkSession.builder.remote(url).getOrCreate()
