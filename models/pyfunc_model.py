"""The pyfunc entry of a registered two-tower version, logged as code (MLflow's "models from code").

``models.train`` logs this file instead of a cloudpickled Python object, so a version's
artifacts are data only: this file, the towers' ``config.json`` and their ``.h5``
weights. feedloop itself never loads a version through pyfunc: it rebuilds the towers
from the config and weights (:func:`models.two_tower.load_registered`), and refuses a
version that carries a pickle. This entry is for MLflow's own tools (``mlflow models
serve``, ``mlflow.pyfunc.load_model``), which run it from the feedloop checkout.
"""

import mlflow

from models.two_tower import TwoTowerPyfunc

mlflow.models.set_model(TwoTowerPyfunc())
