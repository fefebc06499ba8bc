"""Baselines logged next to the two-tower model, on the same holdout: popularity and
Spark MLlib implicit ALS. ``feedloop baselines --ds``; the MLflow UI compares all three
runs of a day (tag ``ds``, ``model_type``)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from models import data
from models.train import K, configure_mlflow, git_sha, read_training_set, window_start

ALS_PARAMS = {"rank": 32, "regParam": 0.05, "alpha": 10.0, "maxIter": 10, "seed": 7}


def rank_metrics(scores: np.ndarray, user_ids: list[str], item_ids: list[str], train: pd.DataFrame,
                 holdout: pd.DataFrame, k: int = K) -> dict[str, float]:
    """Ranking metrics of a [users, items] score matrix, each user's train items excluded."""
    index = {item: n for n, item in enumerate(item_ids)}
    exclude = data.index_lists(train, user_ids, index)
    relevant = data.index_lists(holdout, user_ids, index)
    return data.ranking_metrics(data.top_k(scores, exclude, k), relevant, k)


def popularity(train: pd.DataFrame, holdout: pd.DataFrame, item_ids: list[str]) -> dict[str, float]:
    user_ids = sorted(holdout["user_id"].unique())
    scores = np.tile(data.popularity_scores(train, item_ids), (len(user_ids), 1))
    return rank_metrics(scores, user_ids, item_ids, train, holdout)


def als(spark, train: pd.DataFrame, holdout: pd.DataFrame, item_ids: list[str], params=ALS_PARAMS) -> dict[str, float]:
    """Implicit-feedback ALS (weights as confidence), scored over the full catalogue."""
    from pyspark.ml.recommendation import ALS

    users = sorted(set(train["user_id"]) | set(holdout["user_id"]))
    u_index, i_index = {u: n for n, u in enumerate(users)}, {i: n for n, i in enumerate(item_ids)}
    rows = [(u_index[u], i_index[i], float(w)) for u, i, w in train[["user_id", "item_id", "weight"]].itertuples(index=False)
            if i in i_index]
    model = ALS(userCol="u", itemCol="i", ratingCol="w", implicitPrefs=True, coldStartStrategy="drop",
                **params).fit(spark.createDataFrame(rows, "u int, i int, w double"))
    dim = params["rank"]
    user_f, item_f = np.zeros((len(users), dim)), np.zeros((len(item_ids), dim))
    for r in model.userFactors.collect():
        user_f[r.id] = r.features
    for r in model.itemFactors.collect():
        item_f[r.id] = r.features
    eval_users = sorted(holdout["user_id"].unique())
    scores = user_f[[u_index[u] for u in eval_users]] @ item_f.T
    return rank_metrics(scores, eval_users, item_ids, train, holdout)


def main(args) -> int:
    import mlflow

    from feedloop.settings import get_settings
    from feedloop.spark import get_spark

    settings = get_settings()
    spark = get_spark("feedloop-baselines", settings=settings)
    try:
        train, holdout, users, items = read_training_set(spark, args.ds, settings.hive.database)
        item_ids = data.catalogue(items, train, holdout)["item_id"].tolist()
        configure_mlflow(settings)
        mlflow.set_experiment(settings.mlflow.experiment)
        results = {}
        for name, fit, params in (("popularity", lambda: popularity(train, holdout, item_ids), {}),
                                  ("als", lambda: als(spark, train, holdout, item_ids), ALS_PARAMS)):
            started = time.time()
            with mlflow.start_run(run_name=f"{name} {args.ds}"):
                metrics = fit()
                mlflow.set_tags({"ds": args.ds, "model_type": name, "baseline": "true", "git_sha": git_sha(),
                                 "rows": len(train) + len(holdout), "data_window": f"{window_start(args.ds)}..{args.ds}"})
                mlflow.log_params({**params, "k": K})
                mlflow.log_metrics({**metrics, "train_seconds": time.time() - started})
            results[name] = metrics
            print(f"  {name}: {metrics}", flush=True)
    finally:
        spark.stop()
    summary = ", ".join(f"{n} ndcg{K} {m.get(f'ndcg{K}', 0):.4f}" for n, m in results.items())
    print(f"baselines for {args.ds}: {summary}; experiment {settings.mlflow.experiment} at {settings.mlflow_uri}")
    return 0
