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
