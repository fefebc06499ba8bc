"""The one way feedloop builds a SparkSession: master, metastore and jars from settings.

Every Spark process (batch jobs, the streaming sink, the thrift server) talks to
the same Hive metastore over thrift, so what one writes the others see at once.
"""

from __future__ import annotations

import glob
import os

from feedloop.settings import Settings, get_settings


def kafka_connector_jars(settings: Settings) -> list[str]:
    """Spark's Kafka connector jars resolved by infra/pom.xml (profile spark-kafka)."""
    return sorted(glob.glob(str(settings.jars / "spark-kafka" / "*.jar")))


def spark_conf(settings: Settings, app_name: str, with_kafka: bool = False) -> dict[str, str]:
    """The Spark configuration every feedloop process shares."""
    conf = {
        "spark.app.name": app_name,
        "spark.master": settings.spark.master,
        "spark.driver.memory": settings.spark.driver_memory,
        "spark.driver.bindAddress": settings.bind_host,
        "spark.driver.host": settings.bind_host,
        "spark.ui.port": str(settings.spark.ui_port),
        "spark.port.maxRetries": "32",
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": settings.warehouse.as_uri(),
        "spark.hadoop.hive.metastore.uris": settings.hive.metastore_uri,
        "spark.hadoop.hive.metastore.client.connect.retry.delay": "1",
        "spark.hadoop.hive.metastore.failure.retries": "2",
        "spark.hadoop.hive.exec.dynamic.partition.mode": "nonstrict",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.hive.filesourcePartitionFileCacheSize": "0",
        "spark.sql.parquet.compression.codec": "zstd",
        "spark.ui.showConsoleProgress": "false",
    }
    if with_kafka:
        conf["spark.jars"] = ",".join(kafka_connector_jars(settings))
    conf.update(settings.spark.extra_conf)
    return conf


def spark_env(settings: Settings) -> dict[str, str]:
    """Environment of a Spark driver: its web UI binds SPARK_LOCAL_IP, or every interface
    without it (org.apache.spark.ui.WebUI); spark.driver.bindAddress covers only the RPC
    and block manager ports."""
    return {"SPARK_LOCAL_IP": settings.bind_host}


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
