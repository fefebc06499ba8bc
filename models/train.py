"""Daily training: Hive events -> weighted pairs -> two-tower model -> MLflow run and registry.

``main(args)`` is the thin Spark layer (``feedloop train --ds YYYY-MM-DD``);
:func:`train_and_register` is the core, callable with pandas DataFrames.

A new version becomes ``champion`` only when its NDCG@10 beats (strictly) the
current champion's, both measured on this run's holdout, which tuning never sees
(:mod:`models.tuning` carves its validation split out of the training pairs);
otherwise it is ``challenger`` and the run and version carry the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from feedloop.settings import REPO_ROOT, Settings, get_settings
from models import data

WINDOW_DAYS = 30
K = 10
RECALL_KS = (1, 5, 10, 20, 50)  # the points of the recall@K plot logged with each version
GATE_METRIC = f"ndcg{K}"
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
PYFUNC_CODE = REPO_ROOT / "models" / "pyfunc_model.py"  # the pyfunc entry, logged as code


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


# ------------------------------------------------------------------ tuning schedule
def digest(value) -> str:
    """A short, stable digest of a JSON-able value: the ``tuning_key`` of a search."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def tuning_key(model_settings) -> str:
    """A digest of the configured parameters a search starts from: a changed setting means a new search."""
    from models.tuning import base_params, flat

    return digest(flat(base_params(model_settings)))


def recent_choice(client: MlflowClient, experiment_id: str, ds: str, n_items: int, key: str, model_settings,
                  log=print) -> dict | None:
    """A recent search's choice to reuse, or None to search again.

    Schedule: search when tuning is on and there is no earlier search from the same configured parameters
    (``key``) within ``tune_every_days`` before ``ds``, on a catalogue within a factor
    ``tune_catalogue_change`` of this one's size. So a daily retrain searches about once a week, and at
    once when the catalogue grows or shrinks a lot or a setting changes."""
    ms = model_settings
    if not ms.tune or ms.tune_trials <= 0 or ms.tune_every_days <= 0:
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.tuning = 'searched' and tags.tuning_key = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    day = date.fromisoformat(ds)
    for run in runs:
        tags = run.data.tags
        try:
            searched_on = date.fromisoformat(tags.get("ds", ""))
            items = int(tags.get("items", "0"))
            choice = json.loads(tags["tuning_choice"])
        except (KeyError, ValueError):
            continue
        age = (day - searched_on).days
        ratio = max(items, n_items) / max(min(items, n_items), 1)
        if 0 <= age < ms.tune_every_days and ratio < ms.tune_catalogue_change:
            log(f"tuning: the search of {searched_on} ({items:,} items, run {run.info.run_id}) is recent; reusing it")
            return choice
    return None


def attempt_key(ds: str) -> str | None:
    """``<ds>|<DAG run id>`` when Airflow runs this task (BashOperator exports its context), else None.

    Every try of the DAG run's train task shares it, so a retry finds what an earlier try registered;
    a new DAG run, or ``feedloop train`` run by hand, trains again.
    """
    run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    return f"{ds}|{run}" if run and "'" not in run else None


def registered_attempt(client: MlflowClient, experiment_id: str, name: str, key: str):
    """(run, version) that an earlier try with ``key`` registered, or None (it failed before registering)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.train_key = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=10)
    for run in runs:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
        if versions:
            return run, max(versions, key=lambda v: int(v.version))
    return None


def unfinished_try(client: MlflowClient, experiment_id: str, name: str, key: str, ds: str, log):
    """(run, version) that an earlier try of this DAG run registered and the gate has not decided, its tags
    finished; None when there is none, or when the gate decided it: the run finished and was cleared
    (`feedloop run-dag` of a day that already ran) to run the day again, which a retry is not."""
    earlier = registered_attempt(client, experiment_id, name, key)
    if earlier is None:
        return None
    run, version = earlier
    if version.tags.get("gate") not in (None, "pending"):
        log(f"train: v{version.version} of this DAG run was gated ({version.tags['gate']}); "
            f"the run was cleared to run {ds} again: training again")
        return None
    if version.tags.get("gate") is None:  # that try stopped before its tags
        _tag_pending(client, name, version.version, ds, run.info.run_id)
    log(f"train: v{version.version} was registered for {ds} by an earlier try of this DAG run "
        f"(run {run.info.run_id}); not training again")
    return earlier


def _tag_pending(client: MlflowClient, name: str, version: str, ds: str, run_id: str) -> None:
    """The tags the gate looks for: the day, the run, and ``gate=pending`` (set last)."""
    client.set_model_version_tag(name, version, "ds", ds)
    client.set_model_version_tag(name, version, "run_id", run_id)
    client.set_model_version_tag(name, version, "gate", "pending")


# ------------------------------------------------------------------ core
def train_and_register(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    ds: str,
    settings: Settings | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train on the day's training pairs, evaluate on its holdout, log to MLflow and register.

    ``train``/``holdout``: ``user_id, item_id, weight, ts`` (from training_examples);
    ``users``: ``user_id, gender, age, interests``; ``items``: ``item_id, category``.
    The new version is tagged ``gate=pending``; ``feedloop gate`` decides its alias. A retried try of the
    same DAG run (:func:`attempt_key`) registers nothing new: it finishes tagging the version an earlier
    try registered and returns it, unless the gate has already decided that version (the run finished
    and was cleared to run the day again): then it trains again.
    """
    from models import tuning

    settings = settings or get_settings()
    ms = settings.model
    if train.empty:
        raise NoTrainingData(f"no training pairs for {ds}")
    pairs = pd.concat([train, holdout], ignore_index=True)
    user_features = data.user_features(users)
    catalogue = data.catalogue(items, pairs)
    log(f"pairs: {len(pairs):,} ({len(train):,} train, {len(holdout):,} holdout), "
        f"{pairs['user_id'].nunique():,} users, {len(catalogue):,} items")

    client = configure_mlflow(settings)
    experiment = mlflow.set_experiment(settings.mlflow.experiment)
    name, key = settings.mlflow.model_name, attempt_key(ds)
    earlier = unfinished_try(client, experiment.experiment_id, name, key, ds, log) if key else None
    if earlier is not None:
        run, version = earlier
        return _result(settings, experiment.experiment_id, run.info.run_id, version.version, run.data.metrics, log)
    base_key = tuning_key(ms)
    reuse = recent_choice(client, experiment.experiment_id, ds, len(catalogue), base_key, ms, log)
    with mlflow.start_run(run_name=f"two-tower {ds}") as run:
        if key:
            mlflow.set_tag("train_key", key)
        mlflow.set_tags({"ds": ds, "rows": len(pairs), "train_rows": len(train), "holdout_rows": len(holdout),
                         "data_window": f"{window_start(ds)}..{ds}", "git_sha": git_sha(), "model_type": "two-tower",
                         "items": len(catalogue)})

        def on_epoch(epoch: int, loss: float, rate: float) -> None:
            mlflow.log_metrics({"loss": loss, "examples_per_s": rate}, step=epoch)

        split = tuning.validation_split(ms.validation_share)  # the latest training pairs, as the holdout is
        model, losses, params, search = tuning.train_shipped(train, user_features, catalogue, ms, split,
                                                             reuse=reuse, log=log, on_epoch=on_epoch)
        mlflow.log_params({**tuning.flat(params), "window_days": WINDOW_DAYS, "holdout_share": data.HOLDOUT_SHARE,
                           "validation_share": ms.validation_share, "k": K})
        if search is not None and search.trials:
            choice = search.trials[search.best_trial]["params"]
            mlflow.set_tags({"tuning": "searched", "tuning_key": base_key, "tuning_choice": json.dumps(choice)})
            mlflow.log_metrics({"validation_ndcg10_base": search.base_score, "validation_ndcg10_chosen": search.best_score,
                                "tuning_seconds": search.seconds, "tuning_trials": len(search.trials)})
            mlflow.log_dict({"validation": "latest share of the training pairs", "validation_pairs":
                             search.validation_pairs, "trials": search.trials}, "tuning/trials.json")
        else:
            mlflow.set_tags({"tuning": "reused" if reuse is not None else "off"})
        # one scoring of the holdout for the metrics and the recall@K curve (was one per point: 6 in all,
        # 78 of the train step's 192 s on the 1M-event day)
        scored = model.evaluate(train, holdout, user_features, catalogue, K, RECALL_KS)
        curve = [scored[f"recall{c}"] for c in RECALL_KS]
        metrics = {k: v for k, v in scored.items() if k not in {f"recall{c}" for c in RECALL_KS if c != K}}
        mlflow.log_metrics(metrics)
        _log_plots(curve, losses)
        log(f"holdout: {metrics}")
        version = _log_model(model, settings, log)
        _tag_pending(client, name, version, ds, run.info.run_id)
        mlflow.set_tags({"registered_version": version})
    return _result(settings, experiment.experiment_id, run.info.run_id, version, metrics, log)


def _result(settings: Settings, experiment_id: str, run_id: str, version: str, metrics: dict, log) -> TrainResult:
    uri = settings.mlflow_uri.rstrip("/")
    result = TrainResult(
        version=version, run_id=run_id, metrics=metrics, alias="pending", reason="awaiting the gate",
        run_url=f"{uri}/#/experiments/{experiment_id}/runs/{run_id}",
        model_url=f"{uri}/#/models/{settings.mlflow.model_name}/versions/{version}",
    )
    log(result.summary())
    return result


def _log_plots(recalls: list[float], losses) -> None:
    """The holdout's recall@K curve (at :data:`RECALL_KS`) and the training curve, as MLflow figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(RECALL_KS, recalls, marker="o")
    ax.set(xlabel="K", ylabel="recall@K", title="Holdout recall@K")
    mlflow.log_figure(fig, "plots/recall_at_k.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(losses or []) + 1), losses or [], marker="o")
    ax.set(xlabel="epoch", ylabel="loss", title="Training loss")
    mlflow.log_figure(fig, "plots/training_curve.png")
    plt.close(fig)


def pending_version(client: MlflowClient, name: str, ds: str):
    """The newest version registered for ds that the gate has not decided yet."""
    versions = [v for v in client.search_model_versions(f"name='{name}'")
                if v.tags.get("ds") == ds and v.tags.get("gate") == "pending"]
    return max(versions, key=lambda v: int(v.version), default=None)


def gate(train, holdout, users, items, ds: str, settings: Settings | None = None, log=print) -> TrainResult:
    """Evaluate the day's new version and the champion on the same holdout; move the aliases."""
    from models.two_tower import load_registered

    settings = settings or get_settings()
    client = configure_mlflow(settings)
    name = settings.mlflow.model_name
    candidate = pending_version(client, name, ds)
    if candidate is None:
        raise NoTrainingData(f"no version of {name} registered for {ds} is waiting for the gate: run `feedloop train --ds {ds}`")
    pairs = pd.concat([train, holdout], ignore_index=True)
    user_features, catalogue = data.user_features(users), data.catalogue(items, pairs)
    model = load_registered(name, candidate.version)
    metrics = model.evaluate(train, holdout, user_features, catalogue, K)
    champion = aliased_version(client, name)
    champion_metrics, promote, reason = _gate(champion, candidate, metrics, train, holdout, user_features, catalogue,
                                              log)
    alias = CHAMPION if promote else CHALLENGER
    run_id = candidate.tags.get("run_id") or candidate.run_id
    # Order matters for a retry: the Hive rows and the run's tags first, the alias next, and the version's
    # `gate` tag last. Until that tag is set the version is still pending, so a retried task finds it and
    # gates it again (a champion alias already moved to it is recognised by _gate).
    rows = [(candidate.version, run_id, metrics, promote)]
    if champion is not None and champion_metrics:
        rows.append((champion.version, champion.run_id, champion_metrics, not promote))
    write_model_metrics(settings, ds, name, rows)
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tags({"gate": alias, "gate_reason": reason})
        if champion_metrics:
            mlflow.log_metrics({f"champion_{k}": v for k, v in champion_metrics.items() if k != "eval_users"})
    client.set_registered_model_alias(name, alias, candidate.version)
    for tag, value in {GATE_METRIC: f"{metrics[GATE_METRIC]:.6f}", "gate_reason": reason, "gate": alias}.items():
        client.set_model_version_tag(name, candidate.version, tag, value)
    uri = settings.mlflow_uri.rstrip("/")
    result = TrainResult(version=candidate.version, run_id=run_id, metrics=metrics, alias=alias, reason=reason,
                         run_url=f"{uri}/#/models/{name}/versions/{candidate.version}",
                         model_url=f"{uri}/#/models/{name}/versions/{candidate.version}",
                         champion_metrics=champion_metrics)
    log(result.summary())
    return result


def write_model_metrics(settings: Settings, ds: str, name: str, rows) -> None:
    """INSERT OVERWRITE the dt=ds partition of model_metrics: one row per version and metric."""
    import time

    from feedloop.clients import hive_connection

    now = int(time.time() * 1000)
    values = [(name, str(version), str(run_id), metric, float(value), bool(is_champion), now)
              for version, run_id, metrics, is_champion in rows for metric, value in sorted(metrics.items())]
    if not values:
        return
    # PyHive's parameters (pyformat, escaped by the driver); the partition value is a checked date
    day = date.fromisoformat(ds).isoformat()
    placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(values))
    conn = hive_connection(settings, settings.hive.database)
    try:
        conn.cursor().execute(f"INSERT OVERWRITE TABLE model_metrics PARTITION (dt='{day}') VALUES {placeholders}",
                              [v for row in values for v in row])
    finally:
        conn.close()


def _gate(champion, candidate, metrics, train, holdout, user_features, catalogue, log) -> tuple[dict, bool, str]:
    """(champion's metrics on this holdout, promote?, reason)."""
    from models.two_tower import load_registered

    if champion is None:
        return {}, True, "no champion yet"
    if champion.version == candidate.version:  # a retry after the alias moved: the decision was made
        return {}, True, f"already champion (a retried gate for v{candidate.version})"
    if metrics.get("eval_users", 0) == 0:
        return {}, False, "empty holdout: cannot compare with the champion"
    try:
        previous = load_registered(champion.name, champion.version)
    except Exception as exc:  # an unloadable champion cannot serve feeds either
        log(f"champion v{champion.version} could not be loaded ({exc}); promoting the new version")
        return {}, True, f"champion v{champion.version} could not be loaded: {type(exc).__name__}"
    champion_metrics = previous.evaluate(train, holdout, user_features, catalogue, K)
    log(f"champion v{champion.version} on the same holdout: {champion_metrics}")
    promote, reason = beats(metrics, champion_metrics, champion.version)
    return champion_metrics, promote, reason


def beats(metrics: dict, champion_metrics: dict, champion_version: str) -> tuple[bool, str]:
    """(promote?, reason): the new version must beat the champion strictly; a tie keeps the champion."""
    new, old = metrics[GATE_METRIC], champion_metrics[GATE_METRIC]
    if new > old:
        return True, f"{GATE_METRIC} {new:.4f} > champion v{champion_version} {old:.4f}"
    return False, f"{GATE_METRIC} {new:.4f} <= champion v{champion_version} {old:.4f}"


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
            python_model=str(PYFUNC_CODE),  # models from code: the version's artifacts hold no pickle
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
def read_training_set(spark, ds: str, database: str):
    """(train pairs, holdout pairs, users, items) from Hive, as pandas."""
    from pyspark.sql import functions as F

    examples = spark.table(f"{database}.training_examples").where(F.col("dt") == ds)
    pdf = examples.select("user_id", "item_id", "weight", "ts", "split").toPandas()
    if pdf.empty:
        raise NoTrainingData(f"{database}.training_examples has no rows for dt={ds}: run the training_set step first")
    pdf = pdf.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    train = pdf[pdf["split"] == "train"].drop(columns="split").reset_index(drop=True)
    holdout = pdf[pdf["split"] == "holdout"].drop(columns="split").reset_index(drop=True)
    users = spark.table(f"{database}.users").select("user_id", "gender", "age", "interests").toPandas()
    items = spark.table(f"{database}.items").select("item_id", "category").toPandas()
    return train, holdout, users, items


def _inputs(ds: str, app: str):
    from feature_store.offline import batch_spark

    settings = get_settings()
    window_start(ds)  # fail on a bad date before starting Spark
    spark = batch_spark(app, settings=settings)
    try:
        return settings, read_training_set(spark, ds, settings.hive.database)
    finally:
        spark.stop()  # free the JVM's memory before TensorFlow takes its share


def main(args) -> int:
    """``feedloop train --ds YYYY-MM-DD``."""
    settings, (train, holdout, users, items) = _inputs(args.ds, "feedloop-train")
    train_and_register(train, holdout, users, items, args.ds, settings)
    return 0


def gate_main(args) -> int:
    """``feedloop gate --ds``: champion only if the new version beats it on the same holdout."""
    settings, (train, holdout, users, items) = _inputs(args.ds, "feedloop-gate")
    gate(train, holdout, users, items, args.ds, settings)
    return 0
