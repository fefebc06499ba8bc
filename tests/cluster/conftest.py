"""Cluster-profile tests: the same code on multi-member engines, failures survived (docs/cluster.md).

One cluster stack per test session (`FEEDLOOP_PROFILE=cluster`), apart from the integration
stack: its own state under var/test-cluster and every port shifted by PORT_SHIFT, so it can
run beside a demo stack. `make test-cluster` runs this directory (not `make test`: the two
together outran CI's 90 minutes; docs/cluster.md); run it after tests/integration, whose
stack is stopped by then, so the two never hold memory at once. Stopped at the end of the
session (unless KEEP_TEST_STACK=1).
"""

from __future__ import annotations

import os

import pytest

from tests.integration import conftest as integration

PORT_SHIFT = 14000  # below the ephemeral port range (32768+), clear of the dev, test (+20000) and bench (+10000) stacks
CLUSTER_ENV = {**integration.stack_env(integration.REPO / "var" / "test-cluster", PORT_SHIFT),
               "FEEDLOOP_PROFILE": "cluster",
               # a task whose worker died is retried after 1 min, not Airflow's 5 (test_dag_on_cluster.py)
               "FEEDLOOP_AIRFLOW__TASK_HEARTBEAT_TIMEOUT_S": "60",
               # these tests check the platform, not the model: no hyperparameter search in the DAG's train step
               "FEEDLOOP_MODEL__TUNE": "false"}
os.environ.update(CLUSTER_ENV)  # after the integration conftest's import, which set its own stack's

hive_query = integration.hive_query
wait_stream_caught_up = integration.wait_stream_caught_up
feedloop_cli = integration.feedloop_cli


@pytest.fixture(scope="session")
def settings():
    """Settings of the cluster test stack, after `feedloop up` brought every member up."""
    yield from integration.running_stack("cluster")


@pytest.fixture(scope="session")
def redis_client(settings):
    from feedloop import clients

    return clients.redis_client(settings)


def pytest_collection_modifyitems(config, items):
    """The two stacks' environments exclude each other: one pytest session runs one of them."""
    if any("tests/integration/" in item.nodeid for item in items):
        raise pytest.UsageError("tests/cluster and tests/integration need separate pytest sessions "
                                "(`make test` and `make test-cluster`)")
