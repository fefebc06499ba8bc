"""Whole stacks beside the dev stack: every port setting at its default, and the environment that
moves them all by one shift under a var dir of its own (the test stacks, bench.cluster)."""

from __future__ import annotations

from pathlib import Path

# every port setting of a stack, at its default; another stack moves them all by one shift
# (the cluster profile's extra members derive theirs: Kafka brokers at +10/+20, Spark worker 2 at +1)
BASE_PORTS = {
    "KAFKA__PORT": 9092, "KAFKA__CONTROLLER_PORT": 9093, "HIVE__METASTORE_PORT": 9083, "HIVE__HS2_PORT": 10000,
    "SPARK__UI_PORT": 4040, "REDIS__PORT": 6379, "POSTGRES__PORT": 5432, "MLFLOW__PORT": 5000,
    "AIRFLOW__PORT": 8080, "API__PORT": 8000, "DASHBOARD__PORT": 8050,
    "SEARCH__PORT": 9200, "SEARCH__TRANSPORT_PORT": 9300,
    "SPARK__MASTER_PORT": 7077, "SPARK__MASTER_UI_PORT": 8090, "SPARK__WORKER_UI_PORT": 8091,
    "SPARK__CONNECT_PORT": 15002,
}


def shifted_env(var_dir: Path, shift: int) -> dict[str, str]:
    """The environment of a stack of its own: ``var_dir``, every port moved by ``shift``."""
    env = {"FEEDLOOP_VAR_DIR": str(var_dir)}
    env.update({f"FEEDLOOP_{name}": str(port + shift) for name, port in BASE_PORTS.items()})
    # no FEEDLOOP_KAFKA__BOOTSTRAP: left empty, it names every broker of the profile on the shifted ports
    env["FEEDLOOP_HIVE__METASTORE_URI"] = f"thrift://127.0.0.1:{BASE_PORTS['HIVE__METASTORE_PORT'] + shift}"
    return env
