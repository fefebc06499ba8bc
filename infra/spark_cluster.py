"""Spark standalone under feedloop's supervision: a master and settings.spark.workers workers.

Both run from the jars pyspark ships (``spark-class org.apache.spark.deploy.master.Master`` and
``...worker.Worker``, SPARK_HOME = pyspark's directory), so the cluster needs nothing beyond
`make install`. Every Spark application of feedloop then submits to the master
(settings.spark.master, derived from the settings: see feedloop/settings.py and docs/cluster.md).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from feedloop.settings import Settings
from infra.binaries import pyspark_home

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# A finished application's work dir (its executors' logs and jars) is kept this long, then the worker removes it.
APP_DATA_TTL_S = 24 * 3600


def worker_ui_port(settings: Settings, n: int) -> int:
    return settings.spark.worker_ui_port + n - 1


def worker_dir(settings: Settings, n: int) -> Path:
    return settings.var / "spark" / f"worker-{n}"


def _daemon_env(settings: Settings, opts: list[str]) -> dict[str, str]:
    return {
        "SPARK_HOME": str(pyspark_home()),
        "SPARK_LOCAL_IP": settings.bind_host,  # the web UI binds it (the RPC port follows --host)
        "SPARK_DAEMON_MEMORY": settings.spark.daemon_memory,
        "SPARK_DAEMON_JAVA_OPTS": " ".join(opts),
    }


def master_command(settings: Settings) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of the standalone master."""
    spark = settings.spark
    argv = [str(pyspark_home() / "bin" / "spark-class"), MASTER_CLASS, "--host", settings.bind_host,
            "--port", str(spark.master_port), "--webui-port", str(spark.master_ui_port)]
    # an application that sets no spark.cores.max (an analyst's own spark-submit) gets app_cores, not every core;
    # no REST submission server (on by default, on a fixed port 6066, without a login): drivers run in client mode
    return argv, _daemon_env(settings, [f"-Dspark.deploy.defaultCores={spark.app_cores}",
                                        "-Dspark.master.rest.enabled=false"])


def worker_command(settings: Settings, n: int) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of worker ``n`` (1-based): its cores, memory, web UI port and work dir under var/."""
    spark = settings.spark
    work = worker_dir(settings, n)
    (work / "local").mkdir(parents=True, exist_ok=True)
    argv = [str(pyspark_home() / "bin" / "spark-class"), WORKER_CLASS, settings.standalone_master_url,
            "--host", settings.bind_host, "--cores", str(spark.worker_cores), "--memory", spark.worker_memory,
            "--webui-port", str(worker_ui_port(settings, n)), "--work-dir", str(work / "work")]
    env = _daemon_env(settings, ["-Dspark.worker.cleanup.enabled=true",
                                 f"-Dspark.worker.cleanup.appDataTtl={APP_DATA_TTL_S}"])
    env["SPARK_LOCAL_DIRS"] = str(work / "local")  # executors' shuffle and spill files, under var/ not /tmp
    return argv, env


def master_state(settings: Settings, timeout_s: float = 2.0) -> dict:
    """The master's /json: its workers (state, web UI address, cores used) and applications."""
    url = f"http://{settings.bind_host}:{settings.spark.master_ui_port}/json/"
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.load(resp)


def alive_worker_ports(state: dict) -> set[int]:
    """The web UI ports of the workers the master counts ALIVE (a worker's one stable name across restarts)."""
    return {urlparse(w.get("webuiaddress", "")).port for w in state.get("workers", []) if w.get("state") == "ALIVE"}


def master_alive(settings: Settings) -> bool:
    try:
        return master_state(settings).get("status") == "ALIVE"
    except (OSError, ValueError):
        return False


def worker_registered(n: int) -> Callable[[Settings], bool]:
    """Health of worker ``n``: the master lists it ALIVE, i.e. it can get executors."""
    def check(settings: Settings) -> bool:
        try:
            return worker_ui_port(settings, n) in alive_worker_ports(master_state(settings))
        except (OSError, ValueError):
            return False

    return check
