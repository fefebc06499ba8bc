"""The Spark configuration every feedloop process shares, derived from the settings.

Spark drivers (batch jobs, the streaming apps, the Thrift Server) and the Airflow
tasks that submit them all read it here, so one setting changes them all. Building
the SparkSession itself is :func:`feature_store.offline.get_spark`.
"""

from __future__ import annotations

import glob
import sys

from feedloop.settings import REPO_ROOT, Settings


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
        # bounded patience for a restarting metastore: retries x delay (settings.hive), then a clear failure
        "spark.hadoop.hive.metastore.connect.retries": str(settings.hive.metastore_connect_retries),
        "spark.hadoop.hive.metastore.client.connect.retry.delay": f"{settings.hive.metastore_connect_retry_delay_s}s",
        "spark.hadoop.hive.metastore.failure.retries": "2",
        "spark.hadoop.hive.exec.dynamic.partition.mode": "nonstrict",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.hive.filesourcePartitionFileCacheSize": "0",
        "spark.sql.parquet.compression.codec": "zstd",
        "spark.ui.showConsoleProgress": "false",
    }
    if with_kafka:
        conf["spark.jars"] = ",".join(kafka_connector_jars(settings))
    conf.update(executor_conf(settings))
    conf.update(settings.spark.extra_conf)
    return conf


def executor_conf(settings: Settings) -> dict[str, str]:
    """What an application asks of a cluster manager: its executors' size and its share of the cores.

    Empty for local[*], where the driver runs every task itself. On a cluster each application is capped
    (spark.cores.max on standalone, a fixed executor count on YARN and Kubernetes), so the long-lived ones
    (Thrift Server, streaming apps) never hold every core while a DAG step waits for executors.
    """
    spark = settings.spark
    if spark.master.startswith("local"):
        return {}
    conf = {
        "spark.executor.cores": str(spark.executor_cores),
        "spark.executor.memory": spark.executor_memory,
        # Python on executors (none of the jobs uses a Python UDF today, but one may): the driver's
        # interpreter and this checkout, at the same paths on every worker of this machine
        "spark.pyspark.python": sys.executable,
        "spark.executorEnv.PYTHONPATH": str(REPO_ROOT),
    }
    if spark.master.startswith("spark://"):
        conf["spark.cores.max"] = str(spark.app_cores)
    else:
        conf["spark.executor.instances"] = str(max(1, spark.app_cores // spark.executor_cores))
    return conf


def spark_env(settings: Settings) -> dict[str, str]:
    """Environment of a Spark driver: its web UI binds SPARK_LOCAL_IP, or every interface
    without it (org.apache.spark.ui.WebUI); spark.driver.bindAddress covers only the RPC
    and block manager ports."""
    return {"SPARK_LOCAL_IP": settings.bind_host}


CONNECT_PLUGIN = "org.apache.spark.sql.connect.SparkConnectPlugin"
CONNECT_TOKEN_ENV = "SPARK_CONNECT_AUTHENTICATE_TOKEN"  # read by the server and by pyspark's client


def connect_server_conf(settings: Settings) -> dict[str, str]:
    """Spark Connect as a plugin of the Thrift Server's application (empty when spark.connect is off).

    Its token travels in the environment (connect_server_env), not on the command line.
    """
    if not settings.spark.connect:
        return {}
    return {"spark.plugins": CONNECT_PLUGIN, "spark.connect.grpc.binding.address": settings.bind_host,
            "spark.connect.grpc.binding.port": str(settings.spark.connect_port)}


def connect_server_env(settings: Settings) -> dict[str, str]:
    return {CONNECT_TOKEN_ENV: settings.spark.connect_token} if settings.spark.connect else {}


def connect_url(settings: Settings, app_name: str) -> str:
    """The connection string of a thin client; the token goes in the environment (connect_server_env)."""
    base = settings.spark.connect_url or f"sc://localhost:{settings.spark.connect_port}"
    return f"{base.rstrip('/')}/;user_agent={app_name}"
