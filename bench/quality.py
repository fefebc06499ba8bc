"""Quality on MovieLens 100K: the two-tower model against popularity, Spark ALS and published figures.

    python -m bench.quality [--data ../shared/data/ml-100k] [--epochs N] [--no-als]

Protocol (``../shared/data/README.md``, as Microsoft Recommenders' benchmark
table): a seeded random 75/25 split of each user's ratings; every held-out rated
item is relevant, whatever its rating; each user's ranking covers every item they
did not rate in train; k = 10. Metrics: recall, NDCG, precision and MAP at 10
(:func:`models.data.ranking_metrics`; MAP normalised by min(k, relevant) as
Recommenders' ``map_at_k``, and also by the number of relevant items as their
older ``map``, which their published MAP figures used).

Rows: the two-tower model (trained here on the 75 %), popularity, Spark MLlib
implicit ALS (a small grid; the best on NDCG@10 is reported, the others logged),
and the published BPR and BiVAE figures, marked ``published``. Progress goes to
stderr; the last line of stdout is one JSON object.

The data set's licence forbids redistribution: it is read in place, never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from feedloop.settings import REPO_ROOT
from feature_store.segments import ANY, segment_of
from models import data

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "ml-100k"
ENCODING = "latin-1"
K = 10
HOLDOUT_SHARE = 0.25
SEED = 42
LIKED = 4  # ratings >= 4 decide a user's top genre

# Microsoft Recommenders' ML-100K table, as quoted in ../shared/data/README.md (same protocol).
# Their MAP is the older normalisation (by the number of relevant items): ``map10_by_relevant``.
PUBLISHED = [
    {"model": "bpr (published)", "recall10": 0.2125, "ndcg10": 0.4420, "precision10": 0.3882, "map10": None,
     "map10_by_relevant": 0.1325, "published": True},
    {"model": "bivae (published)", "recall10": 0.2191, "ndcg10": 0.4751, "precision10": None, "map10": None,
     "map10_by_relevant": None, "published": True},
]

# The two-tower settings for this data set (the daily DAG uses feedloop.settings' ModelSettings).
TWO_TOWER = {
    "config": {"embedding_dim": 64, "hash_buckets": 200_000, "temperature": 0.05, "id_dropout": 0.1,
               "segment_part_dropout": 0.1, "history_length": 200, "history_dropout": 0.5,
               "history_pooling": "mean", "user_id_dropout": 1.0, "uniform_negatives": 1024, "hidden_units": 256,
               "hidden_layers": 1, "head_dropout": 0.3, "optimizer": "adam", "weight_decay": 0.0,
               "average_epochs": 10, "log_q_weight": 2.0, "seed": 7},
    "epochs": 24, "batch_size": 1024, "learning_rate": 0.002, "final_learning_rate": 0.002,
}
ALS_GRID = [  # (rank, regParam, alpha)
    {"rank": 64, "regParam": 0.1, "alpha": 1.0},
    {"rank": 64, "regParam": 1.0, "alpha": 10.0},
    {"rank": 128, "regParam": 1.0, "alpha": 10.0},
]
ALS_ITERATIONS = 15
METRIC_KEYS = ("recall10", "ndcg10", "precision10", "map10", "map10_by_relevant")
BEYOND_KEYS = ("coverage10", "popularity_bias10")  # share of the catalogue recommended; popularity percentile


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ data
class MissingData(FileNotFoundError):
    """The ML-100K files are not where ``--data`` points."""


def load(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ratings ``user_id, item_id, rating, ts, weight``, users ``user_id, gender, age, occupation``,
    items ``item_id, genres`` (a list)) with ids ``u<n>`` and ``i<n>``."""
    files = {name: path / name for name in ("u.data", "u.user", "u.item", "u.genre")}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise MissingData(f"bench.quality: MovieLens 100K not found (missing {', '.join(missing)}); "
                          f"pass --data DIR holding u.data, u.user, u.item and u.genre "
                          f"(default {DEFAULT_DATA})")
    ratings = pd.read_csv(files["u.data"], sep="\t", names=["user", "item", "rating", "ts"], encoding=ENCODING)
    ratings = pd.DataFrame({"user_id": "u" + ratings["user"].astype(str), "item_id": "i" + ratings["item"].astype(str),
                            "rating": ratings["rating"], "ts": ratings["ts"].astype("int64") * 1000,
                            "weight": 1.0})
    users = pd.read_csv(files["u.user"], sep="|", names=["user", "age", "gender", "occupation", "zip"],
                        encoding=ENCODING, dtype={"zip": str})
    users = pd.DataFrame({"user_id": "u" + users["user"].astype(str), "gender": users["gender"],
                          "age": users["age"], "occupation": users["occupation"]})
    genres = pd.read_csv(files["u.genre"], sep="|", names=["name", "index"], encoding=ENCODING).dropna()
    names = [str(g).lower() for g in genres.sort_values("index")["name"]]
    raw = pd.read_csv(files["u.item"], sep="|", header=None, encoding=ENCODING)
    flags = raw.iloc[:, 5:5 + len(names)].to_numpy()
    items = pd.DataFrame({"item_id": "i" + raw[0].astype(str),
                          "genres": [[g for g, f in zip(names, row) if f == 1] or ["unknown"] for row in flags]})
    return ratings, users, items


def top_genres(train: pd.DataFrame, items: pd.DataFrame) -> dict[str, str]:
    """Each user's top genre from their *training* ratings: most ratings >= 4, then most ratings, then name."""
    genres = items.set_index("item_id")["genres"]
    rows = train[["user_id", "item_id", "rating"]].assign(genre=train["item_id"].map(genres)).explode("genre")
    stats = rows.assign(liked=(rows["rating"] >= LIKED).astype(int)).groupby(["user_id", "genre"]).agg(
        liked=("liked", "sum"), n=("liked", "size")).reset_index()
    stats = stats.sort_values(["user_id", "liked", "n", "genre"], ascending=[True, False, False, True])
    return dict(stats.drop_duplicates("user_id")[["user_id", "genre"]].to_numpy())


def features(train: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(user features with segment ``F|25-34|comedy``, catalogue with category = genres joined by ``|``)."""
    top = top_genres(train, items)
    segments = [segment_of(g, a, [top.get(u, ANY)]) for u, g, a in zip(users["user_id"], users["gender"], users["age"])]
    user_features = pd.DataFrame({"user_id": users["user_id"], "segment": segments})
    catalogue = pd.DataFrame({"item_id": items["item_id"], "category": ["|".join(g) for g in items["genres"]]})
    return user_features, catalogue


def row(model: str, metrics: dict, **extra) -> dict:
    beyond = {k: round(float(metrics[k]), 4) for k in BEYOND_KEYS if k in metrics}
    return {"model": model, **{k: round(float(metrics[k]), 4) for k in METRIC_KEYS}, **beyond, **extra}


# ------------------------------------------------------------------ models
def two_tower(train, holdout, user_features, catalogue, settings: dict) -> tuple[dict, dict]:
    from models.two_tower import TowerConfig, TwoTower

    model = TwoTower(TowerConfig(**settings["config"]))
    started = time.perf_counter()
    rates: list[float] = []
    model.fit(train, user_features, catalogue, settings["epochs"], settings["batch_size"], settings["learning_rate"],
              on_epoch=lambda epoch, loss, rate: rates.append(rate), log=progress,
              final_learning_rate=settings.get("final_learning_rate"))
    seconds = time.perf_counter() - started
    metrics = model.evaluate(train, holdout, user_features, catalogue, K)
    # the first epoch includes tracing the step: the steady rate is the median of the others
    steady = float(np.median(rates[1:] if len(rates) > 1 else rates))
    timing = {"train_seconds": round(seconds, 1), "examples_per_s": round(steady),
              "examples_per_s_overall": round(len(train) * settings["epochs"] / seconds),
              "train_examples": len(train), **{k: v for k, v in settings.items() if k != "config"},
              "config": settings["config"]}
    return metrics, timing


def popularity(train, holdout, catalogue) -> dict:
    from models.two_tower import popularity_metrics

    return popularity_metrics(train, holdout, catalogue, K)


def als(train, holdout, catalogue, grid=ALS_GRID) -> tuple[dict, dict]:
    """Spark MLlib implicit ALS (local[2], no Hive); the best of ``grid`` on NDCG@10."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    from models.two_tower import rank_holdout

    spark = (SparkSession.builder.master("local[2]").appName("bench-quality-als")
             .config("spark.sql.catalogImplementation", "in-memory").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "1g").config("spark.sql.shuffle.partitions", "4")
             .config("spark.ui.showConsoleProgress", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        user_ids = sorted(holdout["user_id"].unique())
        item_ids = catalogue["item_id"].tolist()
        user_index = {u: n for n, u in enumerate(sorted(train["user_id"].unique()))}
        item_index = {i: n for n, i in enumerate(item_ids)}
        frame = spark.createDataFrame(pd.DataFrame({
            "user": train["user_id"].map(user_index).astype("int32"),
            "item": train["item_id"].map(item_index).astype("int32"),
            "rating": np.ones(len(train), dtype=np.float32),
        })).cache()
        best: tuple[dict, dict] | None = None
        for params in grid:
            started = time.perf_counter()
            fitted = ALS(implicitPrefs=True, maxIter=ALS_ITERATIONS, seed=SEED, coldStartStrategy="drop",
                         userCol="user", itemCol="item", ratingCol="rating", **params).fit(frame)
            users = _factors(fitted.userFactors.toPandas(), len(user_index), params["rank"])
            items = _factors(fitted.itemFactors.toPandas(), len(item_ids), params["rank"])
            scores = users[[user_index[u] for u in user_ids]] @ items.T
            metrics = rank_holdout(scores, user_ids, item_ids, train, holdout, K)
            progress(f"als {params}: ndcg10 {metrics['ndcg10']:.4f} recall10 {metrics['recall10']:.4f} "
                     f"({time.perf_counter() - started:.1f} s)")
            if best is None or metrics["ndcg10"] > best[0]["ndcg10"]:
                best = (metrics, {**params, "maxIter": ALS_ITERATIONS})
        return best
    finally:
        spark.stop()


def _factors(frame: pd.DataFrame, n: int, rank: int) -> np.ndarray:
    out = np.zeros((n, rank), dtype=np.float64)
    out[frame["id"].to_numpy()] = np.stack(frame["features"].to_numpy())
    return out


# ------------------------------------------------------------------ main
def run(path: Path, epochs: int | None = None, with_als: bool = True, seed: int = SEED) -> dict:
    ratings, users, items = load(path)
    train, holdout = data.random_split(ratings, HOLDOUT_SHARE, seed)
    user_features, catalogue = features(train, users, items)
    progress(f"ml-100k: {len(ratings):,} ratings, {ratings['user_id'].nunique()} users, {len(items):,} items; "
             f"train {len(train):,}, holdout {len(holdout):,} (random {1 - HOLDOUT_SHARE:.0%}/{HOLDOUT_SHARE:.0%} "
             f"per user, seed {seed})")
    rows = []
    settings = {**TWO_TOWER, **({"epochs": epochs} if epochs else {})}
    metrics, timing = two_tower(train, holdout, user_features, catalogue, settings)
    progress(f"two-tower: {metrics}; {timing['examples_per_s']:,} examples/s")
    rows.append(row("two-tower", metrics))
    rows.append(row("popularity", popularity(train, holdout, catalogue)))
    progress(f"popularity: {rows[-1]}")
    if with_als:
        als_metrics, als_params = als(train, holdout, catalogue)
        rows.append(row("als (spark mllib, implicit)", als_metrics, params=als_params))
    rows.extend(PUBLISHED)
    beaten = [r["model"] for r in rows[1:] if r["ndcg10"] is not None and metrics["ndcg10"] > r["ndcg10"]]
    return {"models": rows, "two_tower": timing, "k": K, "split": f"random {1 - HOLDOUT_SHARE:.2f}/{HOLDOUT_SHARE:.2f} "
            f"per user, seed {seed}", "eval_users": metrics["eval_users"],
            "two_tower_beats_on_ndcg10": beaten, "map10": "AP@10 / min(10, relevant) (Recommenders map_at_k)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the ml-100k directory (read in place)")
    parser.add_argument("--epochs", type=int, default=None, help=f"two-tower epochs (default {TWO_TOWER['epochs']})")
    parser.add_argument("--seed", type=int, default=SEED, help="the split's seed")
    parser.add_argument("--no-als", action="store_true", help="skip Spark ALS (no JVM)")
    args = parser.parse_args(argv)
    try:
        result = run(args.data, args.epochs, not args.no_als, args.seed)
    except MissingData as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
