"""Daily training: Hive events -> weighted pairs -> two-tower model -> MLflow run and registry.

``main(args)`` is the thin Spark layer (``feedloop train --ds YYYY-MM-DD``);
:func:`train_and_register` is the core, callable with pandas DataFrames.

A new version becomes ``champion`` only when its NDCG@10 is at least the current
champion's, both measured on this run's holdout; otherwise it is ``challenger``
and the run and version carry the reason.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from feedloop.settings import REPO_ROOT, Settings, get_settings
from models import data

WINDOW_DAYS = 30
K = 10
GATE_METRIC = f"ndcg{K}"
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"


class NoTrainingData(RuntimeError):
    """The day's partition (or the training window) has nothing to train on."""


@dataclass
class TrainResult:
    """What one training run produced and where to find it."""

    version: str
    run_id: str
    metrics: dict[str, float]
    alias: str
    reason: str
    run_url: str
    model_url: str
    champion_metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        versus = f" vs champion {self.champion_metrics[GATE_METRIC]:.4f}" if self.champion_metrics else ""
        return (
            f"trained feedloop-two-tower v{self.version}: recall{K} {self.metrics[f'recall{K}']:.4f}, "
            f"ndcg{K} {self.metrics[GATE_METRIC]:.4f}{versus} -> {self.alias} ({self.reason}); {self.model_url}"
        )


# ------------------------------------------------------------------ registry helpers
def configure_mlflow(settings: Settings) -> MlflowClient:
    """Point MLflow at the settings' tracking server and experiment."""
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def aliased_version(client: MlflowClient, name: str, alias: str = CHAMPION):
    """The registered ``ModelVersion`` holding ``alias``, or None when there is none (yet)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def window_start(ds: str, days: int = WINDOW_DAYS) -> str:
    """First day (inclusive) of the ``days``-day window ending on ``ds``."""
    try:
        day = date.fromisoformat(ds)
    except (TypeError, ValueError):
        raise ValueError(f"--ds must be a date YYYY-MM-DD, got {ds!r}") from None
    return (day - timedelta(days=days - 1)).isoformat()


# ------------------------------------------------------------------ core
def train_and_register(
    events: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    ds: str,
    settings: Settings | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train on ``events`` (positives of the window), evaluate, log to MLflow, register and gate.

    ``events``: ``user_id, item_id, event_type, ts, dwell_ms``; ``users``: the users
    table (``user_id, gender, age, interests``); ``items``: ``item_id, category``.
    """
    from models.two_tower import TowerConfig, TwoTower, popularity_metrics

    settings = settings or get_settings()
    ms = settings.model
    pairs = data.positive_pairs(events)
    if pairs.empty:
        raise NoTrainingData(f"no positive (user, item) events in the {WINDOW_DAYS} days up to {ds}")
    train, holdout = data.time_split(pairs)
    user_features = data.user_features(users)
    catalogue = data.catalogue(items, pairs)
    log(f"pairs: {len(pairs):,} ({len(train):,} train, {len(holdout):,} holdout), "
        f"{pairs['user_id'].nunique():,} users, {len(catalogue):,} items")

    client = configure_mlflow(settings)
    experiment = mlflow.set_experiment(settings.mlflow.experiment)
    config = TowerConfig.from_settings(ms)
    with mlflow.start_run(run_name=f"two-tower {ds}") as run:
        mlflow.set_tags({"ds": ds, "rows": len(pairs), "train_rows": len(train), "holdout_rows": len(holdout),
                         "events": len(events), "git_sha": git_sha(), "model_type": "two-tower"})
        mlflow.log_params({**asdict(config), "epochs": ms.epochs, "batch_size": ms.batch_size,
                           "learning_rate": ms.learning_rate, "optimizer": "adagrad", "window_days": WINDOW_DAYS,
                           "holdout_share": data.HOLDOUT_SHARE, "k": K})

        model = TwoTower(config)

        def on_epoch(epoch: int, loss: float, rate: float) -> None:
            mlflow.log_metrics({"loss": loss, "examples_per_s": rate}, step=epoch)

        model.fit(train, user_features, catalogue, ms.epochs, ms.batch_size, ms.learning_rate, on_epoch, log)
        metrics = model.evaluate(train, holdout, user_features, catalogue, K)
        baseline = popularity_metrics(train, holdout, catalogue, K)
        mlflow.log_metrics({**metrics, **{f"popularity_{k}": v for k, v in baseline.items() if k != "eval_users"}})
        log(f"holdout: {metrics}; popularity baseline: {baseline}")

        champion = aliased_version(client, settings.mlflow.model_name)
        champion_metrics, promote, reason = _gate(champion, metrics, train, holdout, user_features, catalogue, log)
        if champion_metrics:
            mlflow.log_metrics({f"champion_{k}": v for k, v in champion_metrics.items() if k != "eval_users"})

        version = _log_model(model, settings, log)
        alias = CHAMPION if promote else CHALLENGER
        client.set_registered_model_alias(settings.mlflow.model_name, alias, version)
        for tag, value in {"ds": ds, GATE_METRIC: f"{metrics[GATE_METRIC]:.6f}", "gate": alias,
                           "gate_reason": reason}.items():
            client.set_model_version_tag(settings.mlflow.model_name, version, tag, value)
        mlflow.set_tags({"registered_version": version, "gate": alias, "gate_reason": reason})

    uri = settings.mlflow_uri.rstrip("/")
    result = TrainResult(
        version=version, run_id=run.info.run_id, metrics=metrics, alias=alias, reason=reason,
        run_url=f"{uri}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}",
        model_url=f"{uri}/#/models/{settings.mlflow.model_name}/versions/{version}",
        champion_metrics=champion_metrics,
    )
    log(result.summary())
    return result


def _gate(champion, metrics, train, holdout, user_features, catalogue, log) -> tuple[dict, bool, str]:
    """(champion's metrics on this holdout, promote?, reason)."""
    from models.two_tower import load_registered

    if champion is None:
        return {}, True, "no champion yet"
    if metrics.get("eval_users", 0) == 0:
        return {}, False, "empty holdout: cannot compare with the champion"
    try:
        previous = load_registered(champion.name, champion.version)
    except Exception as exc:  # an unloadable champion cannot serve feeds either
        log(f"champion v{champion.version} could not be loaded ({exc}); promoting the new version")
        return {}, True, f"champion v{champion.version} could not be loaded: {type(exc).__name__}"
    champion_metrics = previous.evaluate(train, holdout, user_features, catalogue, K)
    log(f"champion v{champion.version} on the same holdout: {champion_metrics}")
    new, old = metrics[GATE_METRIC], champion_metrics[GATE_METRIC]
    if new >= old:
        return champion_metrics, True, f"{GATE_METRIC} {new:.4f} >= champion v{champion.version} {old:.4f}"
    return champion_metrics, False, f"{GATE_METRIC} {new:.4f} < champion v{champion.version} {old:.4f}"


def _log_model(model, settings: Settings, log) -> str:
    """Log the towers as a pyfunc model, register it, and return the new version number."""
    import mlflow.pyfunc
    import numpy as np
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    from models.two_tower import TwoTowerPyfunc

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "user_id"), ColSpec("string", "segment")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, model.config.embedding_dim))]),
    )
    with tempfile.TemporaryDirectory(prefix="feedloop-towers-") as tmp:
        towers = model.save(f"{tmp}/towers")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=TwoTowerPyfunc(),
            artifacts={TwoTowerPyfunc.ARTIFACT: str(towers)},
            registered_model_name=settings.mlflow.model_name,
            signature=signature,
            input_example=pd.DataFrame({"user_id": [""], "segment": ["F|25-34|comedy"]}),
            # explicit, so MLflow does not load the model in a subprocess to infer them
            pip_requirements=[f"tensorflow-cpu=={tf.__version__}", f"mlflow=={mlflow.__version__}", "pandas", "numpy"],
        )
    version = str(info.registered_model_version)
    log(f"registered {settings.mlflow.model_name} v{version} from {info.model_uri}")
    return version


# ------------------------------------------------------------------ Spark layer
def read_training_inputs(spark, ds: str, database: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(positive events of the window, users, items) from Hive, as pandas."""
    from pyspark.sql import functions as F

    start = window_start(ds)
    events = spark.table(f"{database}.events").where(F.col("dt").between(start, ds))
    if events.where(F.col("dt") == ds).limit(1).count() == 0:
        raise NoTrainingData(f"{database}.events has no rows in partition dt={ds}: nothing to train on")
    positives = (
        events
        .where(F.col("event_type").isin(*data.POSITIVE_TYPES) & F.col("item_id").isNotNull())
        .select("user_id", "item_id", "event_type", "ts", "dwell_ms")
    )
    users = spark.table(f"{database}.users").select("user_id", "gender", "age", "interests")
    items = spark.table(f"{database}.items").select("item_id", "category")
    return positives.toPandas(), users.toPandas(), items.toPandas()


def main(args) -> int:
    """``feedloop train --ds YYYY-MM-DD``."""
    from feedloop.spark import get_spark

    settings = get_settings()
    window_start(args.ds)  # fail on a bad date before starting Spark
    spark = get_spark("feedloop-train", settings=settings)
    try:
        print(f"reading {settings.hive.database}.events dt {window_start(args.ds)}..{args.ds}, users, items")
        events, users, items = read_training_inputs(spark, args.ds, settings.hive.database)
    finally:
        spark.stop()  # free the JVM's memory before TensorFlow takes its share
    print(f"read {len(events):,} positive events, {len(users):,} users, {len(items):,} items")
    train_and_register(events, users, items, args.ds, settings)
    return 0
