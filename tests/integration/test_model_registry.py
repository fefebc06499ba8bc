"""Registered versions load without running anything from their artifacts (the stack's MLflow, with its login).

A version logged by feedloop's train step holds data only (its pyfunc entry is logged as
code, its towers as config.json and .h5 weights) and loads back exactly; a version whose
artifacts carry a pickle (any cloudpickled pyfunc, as anyone who can reach the registry
could register) is refused with an error that names the payload.
"""

from __future__ import annotations

import numpy as np
import pytest

import mlflow.pyfunc
from models.train import _log_model, configure_mlflow
from models.two_tower import TowerConfig, TwoTower, UnsafeModel, load_registered, pickle_payloads

PICKLED_NAME = "feedloop-test-pickled"


class Anything(mlflow.pyfunc.PythonModel):
    """Stands for any pickled model: unpickling it could run whatever its author chose."""

    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def registry(settings):
    configure_mlflow(settings)
    mlflow.set_experiment(f"{settings.mlflow.experiment}-registry-test")
    return settings


def test_a_trained_version_holds_no_pickle_and_loads_exactly(registry, tmp_path):
    settings = registry
    model = TwoTower(TowerConfig(embedding_dim=8, hash_buckets=100, seed=11))
    with mlflow.start_run(run_name="registry-test"):
        version = _log_model(model, settings, log=lambda _: None)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{settings.mlflow.model_name}/{version}",
                                                dst_path=str(tmp_path))
    assert pickle_payloads(local) == []
    loaded = load_registered(settings.mlflow.model_name, version)
    assert loaded.config == model.config
    for tower, other in ((model.query_tower, loaded.query_tower), (model.item_tower, loaded.item_tower)):
        assert all(np.array_equal(a, b) for a, b in zip(tower.get_weights(), other.get_weights()))


def test_a_version_carrying_a_pickle_is_refused(registry):
    with mlflow.start_run(run_name="registry-test-pickled"):
        info = mlflow.pyfunc.log_model(name="model", python_model=Anything(), registered_model_name=PICKLED_NAME,
                                       pip_requirements=["mlflow"])
    with pytest.raises(UnsafeModel, match=r"refused: its artifacts carry a pickle payload \(python_model\.pkl\)"):
        load_registered(PICKLED_NAME, str(info.registered_model_version))


# ------------------------------------------------------------------ retried tasks (injected failures)
RETRY_DS = "2001-02-03"  # a day no other test writes model_metrics for


@pytest.fixture(scope="module")
def retried_train(registry):
    """The train task dies right after registering (before its tags); Airflow's retry runs it again."""
    import uuid

    from models import data
    from models.train import train_and_register
    from tests.unit.test_two_tower import synthetic

    base = registry
    settings = base.model_copy(update={
        "mlflow": base.mlflow.model_copy(update={"model_name": f"feedloop-test-retry-{uuid.uuid4().hex[:8]}",
                                                 "experiment": f"{base.mlflow.experiment}-retry-test"}),
        "model": base.model.model_copy(update={"tune": False, "epochs": 1, "average_epochs": 0}),
    })
    events, users, items = synthetic()
    train, holdout = data.time_split(data.positive_pairs(events))

    def dies_after_registering(line: str) -> None:
        if line.startswith("registered "):
            raise RuntimeError("injected: the task died after registering its version")

    run_id = f"scheduled__{RETRY_DS}T00:00:00+00:00-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIRFLOW_CTX_DAG_RUN_ID", run_id)
        with pytest.raises(RuntimeError, match="injected"):
            train_and_register(train, holdout, users, items, RETRY_DS, settings, log=dies_after_registering)
        client = configure_mlflow(settings)
        crashed = client.search_model_versions(f"name = '{settings.mlflow.model_name}'")
        lines: list[str] = []
        retried = train_and_register(train, holdout, users, items, RETRY_DS, settings, log=lines.append)
        after_retry = client.search_model_versions(f"name = '{settings.mlflow.model_name}'")
        env.setenv("AIRFLOW_CTX_DAG_RUN_ID", run_id + "-next")  # another DAG run: trains again
        next_run = train_and_register(train, holdout, users, items, RETRY_DS, settings, log=lambda _: None)
    return settings, (train, holdout, users, items), crashed, retried, after_retry, lines, next_run


def test_a_retried_train_registers_no_second_version(retried_train):
    settings, _, crashed, retried, after_retry, lines, next_run = retried_train
    assert len(crashed) == 1 and "gate" not in crashed[0].tags  # the crash came before the gate's tags
    assert [v.version for v in after_retry] == [crashed[0].version] == [retried.version]
    version = after_retry[0]
    assert version.tags["gate"] == "pending" and version.tags["ds"] == RETRY_DS, version.tags
    assert any("not training again" in line for line in lines), lines
    assert int(next_run.version) == int(retried.version) + 1


def test_a_gate_whose_hive_write_failed_is_retried_and_gates_its_version(retried_train):
    from thrift.transport.TTransport import TTransportException

    from bench.private import free_port
    from models.train import CHAMPION, aliased_version, gate
    from tests.integration.conftest import hive_query

    settings, (train, holdout, users, items), *_ = retried_train
    client = configure_mlflow(settings)
    name = settings.mlflow.model_name
    hive_down = settings.model_copy(update={"hive": settings.hive.model_copy(update={"hs2_port": free_port()})})
    with pytest.raises(TTransportException):  # HiveServer2 unreachable: the injected failure
        gate(train, holdout, users, items, RETRY_DS, hive_down, log=lambda _: None)
    pending = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("gate") == "pending"]
    assert len(pending) == 2  # the failed gate decided nothing: both of the day's versions still wait
    result = gate(train, holdout, users, items, RETRY_DS, settings, log=lambda _: None)
    newest = max(pending, key=lambda v: int(v.version))
    assert result.version == newest.version and result.alias == CHAMPION  # no champion yet under this name
    assert client.get_model_version(name, newest.version).tags["gate"] == CHAMPION
    assert aliased_version(client, name).version == newest.version
    rows = hive_query(settings, f"SELECT model_version, is_champion FROM {settings.hive.database}.model_metrics "
                                f"WHERE dt = '{RETRY_DS}' AND model_name = '{name}'")
    assert rows and {str(v) for v, _ in rows} == {newest.version}, rows


def test_a_cleared_dag_run_trains_again_once_its_version_was_gated(retried_train):
    """`feedloop run-dag` of a day that already ran clears the finished run: same run id, but not a retry."""
    from models.train import train_and_register

    settings, (train, holdout, users, items), *_ = retried_train
    client = configure_mlflow(settings)
    name = settings.mlflow.model_name
    gated = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    client.set_model_version_tag(name, gated.version, "gate", "challenger")  # the gate decided it
    dag_run_id = client.get_run(gated.run_id).data.tags["train_key"].split("|", 1)[1]
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIRFLOW_CTX_DAG_RUN_ID", dag_run_id)
        again = train_and_register(train, holdout, users, items, RETRY_DS, settings, log=lines.append)
    assert int(again.version) == int(gated.version) + 1
    assert any("training again" in line for line in lines), lines
    assert client.get_model_version(name, again.version).tags["gate"] == "pending"
