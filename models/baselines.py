"""Baselines logged next to the two-tower model, on the same holdout, each tuned on the same kind of
validation split as the two-tower (carved out of the training pairs, never the holdout):

- popularity (nothing to tune);
- EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): a closed-form linear item-item model,
  ``B = I - P · diag(1 / diag(P))`` with ``P = (XᵀX + λI)⁻¹`` and a zero diagonal; plain numpy. Its
  cost is an items × items inverse, so above ``EASE_MAX_ITEMS`` items it is skipped (and the reason
  logged);
- Spark MLlib implicit ALS.

The two grids are searched on the two-tower's schedule (:func:`models.train.recent_choice`): about
once a week, or at once when the catalogue's size or the grid changes; the other days reuse the
last search's choice. On the 1M-event day (20,000 users, 5,000 items) the two searches took 12.5 of
the step's 15.5 min (EASE's 7 λ 4 min, ALS's 4 points 8.3 min), every day (docs/performance.md).

``feedloop baselines --ds``; the MLflow UI compares the day's runs (tag ``ds``, ``model_type``).
``bench.quality`` calls the same functions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from models import data
from models.train import K, configure_mlflow, digest, git_sha, read_training_set, recent_choice, window_start

METRIC = f"ndcg{K}"
EASE_MAX_ITEMS = 20_000  # an items x items float64 inverse: 3.2 GB and minutes on two cores at 20k
EASE_LAMBDAS = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0)
ALS_GRID = (  # implicit ALS, maxIter ALS_ITERATIONS; weights are the confidence
    {"rank": 32, "regParam": 0.05, "alpha": 10.0},
    {"rank": 64, "regParam": 0.1, "alpha": 1.0},
    {"rank": 64, "regParam": 1.0, "alpha": 10.0},
    {"rank": 128, "regParam": 1.0, "alpha": 10.0},
)
ALS_ITERATIONS = 15
SEED = 7

Split = Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]


class EaseSkipped(ValueError):
    """The catalogue is larger than EASE_MAX_ITEMS."""


def popularity(train: pd.DataFrame, holdout: pd.DataFrame, item_ids: Sequence[str]) -> dict[str, float]:
    user_ids = sorted(holdout["user_id"].unique())
    scores = np.tile(data.popularity_scores(train, item_ids), (len(user_ids), 1))
    return data.rank_holdout(scores, user_ids, item_ids, train, holdout)


# ------------------------------------------------------------------ EASE
def _interactions(pairs: pd.DataFrame, user_ids: Sequence[str], item_index: dict[str, int]):
    """Binary user x item matrix (scipy CSR) of ``pairs`` for ``user_ids``."""
    from scipy import sparse

    user_index = {u: n for n, u in enumerate(user_ids)}
    known = pairs[pairs["user_id"].isin(user_index) & pairs["item_id"].isin(item_index)]
    rows = known["user_id"].map(user_index).to_numpy()
    cols = known["item_id"].map(item_index).to_numpy()
    matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)),
                               shape=(len(user_ids), len(item_index)))
    matrix.data[:] = 1.0  # repeated pairs count once
    return matrix


class Ease:
    """EASE for several λ from one eigendecomposition of the Gram matrix ``XᵀX = V diag(e) Vᵀ``:
    ``(XᵀX + λI)⁻¹ = V diag(1 / (e + λ)) Vᵀ``, so each λ of a search costs two matrix products."""

    def __init__(self, train: pd.DataFrame, item_ids: Sequence[str]):
        if len(item_ids) > EASE_MAX_ITEMS:
            raise EaseSkipped(f"EASE skipped: {len(item_ids):,} items > {EASE_MAX_ITEMS:,} (an items x items "
                             f"inverse; memory and time grow with the square and cube of the catalogue)")
        self.train = train
        self.item_ids = list(item_ids)
        self.item_index = {i: n for n, i in enumerate(self.item_ids)}
        users = sorted(train["user_id"].unique())
        x = _interactions(train, users, self.item_index)
        gram = (x.T @ x).toarray()
        self.eigenvalues, self.eigenvectors = np.linalg.eigh(gram)

    def weights(self, lam: float) -> np.ndarray:
        v = self.eigenvectors
        inverse = (v / (self.eigenvalues + lam)) @ v.T
        b = inverse / (-np.diag(inverse))
        np.fill_diagonal(b, 0.0)
        return b

    def scores(self, user_ids: Sequence[str], lam: float) -> np.ndarray:
        return _interactions(self.train, user_ids, self.item_index) @ self.weights(lam)

    def evaluate(self, holdout: pd.DataFrame, lam: float) -> dict[str, float]:
        user_ids = sorted(holdout["user_id"].unique())
        return data.rank_holdout(self.scores(user_ids, lam), user_ids, self.item_ids, self.train, holdout)


def tune_ease(train: pd.DataFrame, item_ids: Sequence[str], split: Split, lambdas=EASE_LAMBDAS,
              log: Callable[[str], None] = print) -> tuple[float, list[dict]]:
    """The λ with the best validation NDCG@10 (validation carved out of ``train`` by ``split``)."""
    fit_part, validation = split(train)
    ease = Ease(fit_part, item_ids)
    trials = [{"lambda": lam, "value": round(ease.evaluate(validation, lam)[METRIC], 5)} for lam in lambdas]
    best = max(trials, key=lambda t: t["value"])
    log(f"ease: validation {METRIC} by λ {[(t['lambda'], t['value']) for t in trials]} -> λ {best['lambda']:g}")
    return best["lambda"], trials


# ------------------------------------------------------------------ ALS
def als_scores(spark, train: pd.DataFrame, user_ids: Sequence[str], item_ids: Sequence[str], params: dict
               ) -> np.ndarray:
    """Implicit-feedback ALS (weights as confidence): ``[user_ids, item_ids]`` scores."""
    from pyspark.ml.recommendation import ALS

    users = sorted(set(train["user_id"]) | set(user_ids))
    u_index, i_index = {u: n for n, u in enumerate(users)}, {i: n for n, i in enumerate(item_ids)}
    known = train[train["item_id"].isin(i_index)]
    frame = spark.createDataFrame(pd.DataFrame({
        "u": known["user_id"].map(u_index).astype("int32"), "i": known["item_id"].map(i_index).astype("int32"),
        "w": known["weight"].astype("float64")}))
    model = ALS(userCol="u", itemCol="i", ratingCol="w", implicitPrefs=True, coldStartStrategy="drop",
                maxIter=ALS_ITERATIONS, seed=SEED, **params).fit(frame)
    dim = params["rank"]
    user_f, item_f = np.zeros((len(users), dim)), np.zeros((len(item_ids), dim))
    for factors, out in ((model.userFactors.toPandas(), user_f), (model.itemFactors.toPandas(), item_f)):
        if len(factors):
            out[factors["id"].to_numpy()] = np.stack(factors["features"].to_numpy())
    return user_f[[u_index[u] for u in user_ids]] @ item_f.T


def als(spark, train: pd.DataFrame, holdout: pd.DataFrame, item_ids: Sequence[str], params: dict
        ) -> dict[str, float]:
    user_ids = sorted(holdout["user_id"].unique())
    return data.rank_holdout(als_scores(spark, train, user_ids, item_ids, params), user_ids, item_ids, train, holdout)


def tune_als(spark, train: pd.DataFrame, item_ids: Sequence[str], split: Split, grid=ALS_GRID,
             log: Callable[[str], None] = print) -> tuple[dict, list[dict]]:
    """The grid point with the best validation NDCG@10."""
    fit_part, validation = split(train)
    trials = []
    for params in grid:
        started = time.perf_counter()
        value = als(spark, fit_part, validation, item_ids, params)[METRIC]
        trials.append({**params, "value": round(value, 5), "seconds": round(time.perf_counter() - started, 1)})
        log(f"als {params}: validation {METRIC} {value:.4f} ({trials[-1]['seconds']} s)")
    best = max(trials, key=lambda t: t["value"])
    return {k: best[k] for k in grid[0]}, trials


# ------------------------------------------------------------------ the DAG's step
def grid_key(name: str, grid) -> str:
    """The ``tuning_key`` of a baseline's search: a changed grid means a new search."""
    return f"{name}:{digest(grid)}"


def main(args) -> int:
    import mlflow

    from feature_store.offline import batch_spark
    from feedloop.settings import get_settings
    from models.tuning import too_small_to_search, validation_split

    settings = get_settings()
    split = validation_split(settings.model.validation_share)  # the train step's protocol
    spark = batch_spark("feedloop-baselines", settings=settings)
    try:
        train, holdout, users, items = read_training_set(spark, args.ds, settings.hive.database)
        item_ids = data.catalogue(items, train, holdout)["item_id"].tolist()
        configure_mlflow(settings)
        mlflow.set_experiment(settings.mlflow.experiment)

        def fit_popularity():
            return popularity(train, holdout, item_ids), {}

        # too little validation data: each grid's first point (the defaults), no search (model settings)
        small = too_small_to_search(train, split, settings.model)

        client = mlflow.MlflowClient()
        experiment_id = mlflow.get_experiment_by_name(settings.mlflow.experiment).experiment_id

        def searched(name: str, grid, search: Callable[[], tuple]) -> tuple:
            """(choice, trials): a recent search's choice (no trials), else a new search, tagged for reuse."""
            key = grid_key(name, grid)
            choice = recent_choice(client, experiment_id, args.ds, len(item_ids), key, settings.model,
                                   log=lambda m: print(f"  {name} {m}", flush=True))
            if choice is not None:
                mlflow.set_tags({"tuning": "reused"})  # as the two-tower's run says it
                return choice, []
            choice, trials = search()
            mlflow.set_tags({"tuning": "searched", "tuning_key": key, "tuning_choice": json.dumps(choice)})
            return choice, trials

        def fit_ease():
            if small:
                lam, trials = tune_ease(train, item_ids, split, lambdas=EASE_LAMBDAS[:1])
            else:
                lam, trials = searched("ease", EASE_LAMBDAS, lambda: tune_ease(train, item_ids, split))
            return Ease(train, item_ids).evaluate(holdout, lam), {"lambda": lam, "tuning": trials}

        def fit_als():
            params, trials = (ALS_GRID[0], []) if small else searched(
                "als", ALS_GRID, lambda: tune_als(spark, train, item_ids, split))
            return als(spark, train, holdout, item_ids, params), {**params, "maxIter": ALS_ITERATIONS,
                                                                  "tuning": trials}

        results = {}
        for name, fit in (("popularity", fit_popularity), ("ease", fit_ease), ("als", fit_als)):
            started = time.time()
            with mlflow.start_run(run_name=f"{name} {args.ds}"):
                mlflow.set_tags({"ds": args.ds, "model_type": name, "baseline": "true", "git_sha": git_sha(),
                                 "rows": len(train) + len(holdout), "data_window": f"{window_start(args.ds)}..{args.ds}",
                                 "items": len(item_ids)})
                try:
                    metrics, params = fit()
                except EaseSkipped as exc:  # above its catalogue limit: say so in the run
                    mlflow.set_tags({"skipped": str(exc)})
                    print(f"  {name}: {exc}", flush=True)
                    continue
                tuning = params.pop("tuning", None)
                if tuning:  # [] when a recent search's choice was reused
                    mlflow.log_dict({"validation": "latest share of the training pairs", "trials": tuning},
                                    "tuning/trials.json")
                mlflow.log_params({**params, "k": K, "validation_share": settings.model.validation_share})
                mlflow.log_metrics({**metrics, "train_seconds": time.time() - started})
            results[name] = metrics
            print(f"  {name}: {metrics}", flush=True)
    finally:
        spark.stop()
    summary = ", ".join(f"{n} ndcg{K} {m.get(f'ndcg{K}', 0):.4f}" for n, m in results.items())
    print(f"baselines for {args.ds}: {summary}; experiment {settings.mlflow.experiment} at {settings.mlflow_uri}")
    return 0
