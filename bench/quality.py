"""Quality on MovieLens 100K: the shipped two-tower model against popularity, EASE and Spark ALS.

    python -m bench.quality [--data ../shared/data/ml-100k] [--seeds 42 43 44] [--no-als]
                            [--no-demographics]

Protocol (``../shared/data/README.md``, as Microsoft Recommenders' benchmark
table): a seeded random 75/25 split of each user's ratings; every held-out rated
item is relevant, whatever its rating; each user's ranking covers every item they
did not rate in train; k = 10. Metrics: recall, NDCG, precision and MAP at 10
(:func:`models.data.ranking_metrics`; MAP normalised by min(k, relevant) as
Recommenders' ``map_at_k``, and also by the number of relevant items as their
older ``map``).

The two-tower model is the one the platform ships: :func:`models.tuning.train_shipped`
with the settings' model section (``feedloop.yaml`` overrides apply), the function the
DAG's train step calls. Its search, and each baseline's (EASE's λ, ALS's grid), run on
the same validation split carved out of each seed's *training* ratings (a random
``model.validation_share`` of each user's, the holdout's protocol); the holdout is
scored once, at the end. Three split seeds by default; each metric is reported per
seed and as mean ± std. Published figures (BPR, BiVAE) are in docs/model.md, not
here. ``--no-demographics`` drops gender and age from the segments (the catalogue-only
setting of data sets without user features). Progress goes to stderr; the last line of
stdout is one JSON object.

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

from feedloop.eta import Steps
from feedloop.settings import REPO_ROOT, get_settings
from feature_store.segments import ANY, segment_of
from models import baselines, data, tuning

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "ml-100k"
ENCODING = "latin-1"
K = 10
HOLDOUT_SHARE = 0.25
SEEDS = (42, 43, 44)
LIKED = 4  # ratings >= 4 decide a user's top genre
GOAL_VS_EASE = 1.02  # reference: the goal, two-tower NDCG@10 >= 1.02 x EASE's (mean of the seeds)
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


def features(train: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, demographics: bool = True
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(user features with segment ``F|25-34|comedy`` (``any|any|comedy`` without demographics), catalogue
    with category = genres joined by ``|``)."""
    top = top_genres(train, items)
    segments = [segment_of(g if demographics else None, a if demographics else None, [top.get(u, ANY)])
                for u, g, a in zip(users["user_id"], users["gender"], users["age"])]
    user_features = pd.DataFrame({"user_id": users["user_id"], "segment": segments})
    catalogue = pd.DataFrame({"item_id": items["item_id"], "category": ["|".join(g) for g in items["genres"]]})
    return user_features, catalogue


def row(model: str, metrics: dict, **extra) -> dict:
    beyond = {k: round(float(metrics[k]), 4) for k in BEYOND_KEYS if k in metrics}
    return {"model": model, **{k: round(float(metrics[k]), 4) for k in METRIC_KEYS}, **beyond, **extra}


# ------------------------------------------------------------------ models
def two_tower(train, holdout, user_features, catalogue, model_settings, split) -> tuple[dict, dict]:
    """The shipped model: tuned on ``split``'s validation pairs, fitted on all of ``train``."""
    started = time.perf_counter()
    rates: list[float] = []
    model, _, params, search = tuning.train_shipped(train, user_features, catalogue, model_settings, split,
                                                    log=progress, on_epoch=lambda e, loss, rate: rates.append(rate))
    seconds = time.perf_counter() - started
    metrics = model.evaluate(train, holdout, user_features, catalogue, K)
    # the first epoch includes tracing the step: the steady rate is the median of the others
    steady = float(np.median(rates[1:] if len(rates) > 1 else rates))
    timing = {"seconds_with_tuning": round(seconds, 1), "examples_per_s": round(steady), "items": len(catalogue),
              "train_examples": len(train), "params": tuning.flat(params),
              "validation_ndcg10_base": search.base_score if search else None,
              "validation_ndcg10_chosen": search.best_score if search else None,
              "tuning_trials": len(search.trials) if search else 0,
              "tuning_seconds": round(search.seconds, 1) if search else 0.0}
    return metrics, timing


def local_spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").appName("bench-quality-als")
             .config("spark.sql.catalogImplementation", "in-memory").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "2g").config("spark.sql.shuffle.partitions", "4")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# ------------------------------------------------------------------ main
def one_seed(ratings, users, items, seed: int, model_settings, spark, demographics: bool) -> dict:
    train, holdout = data.random_split(ratings, HOLDOUT_SHARE, seed)
    user_features, catalogue = features(train, users, items, demographics)
    item_ids = catalogue["item_id"].tolist()
    split = tuning.validation_split(model_settings.validation_share, seed, by_time=False)
    progress(f"seed {seed}: train {len(train):,}, holdout {len(holdout):,}; validation: a random "
             f"{model_settings.validation_share:.0%} of each user's training ratings")
    out: dict[str, dict] = {}
    metrics, timing = two_tower(train, holdout, user_features, catalogue, model_settings, split)
    out["two-tower"] = {**row(metrics), "timing": timing}
    progress(f"seed {seed} two-tower: ndcg10 {metrics['ndcg10']:.4f}; {timing['examples_per_s']:,} examples/s")
    out["popularity"] = row(baselines.popularity(train, holdout, item_ids))
    started = time.perf_counter()
    lam, trials = baselines.tune_ease(train, item_ids, split, log=progress)
    out["ease"] = {**row(baselines.Ease(train, item_ids).evaluate(holdout, lam)),
                   "params": {"lambda": lam}, "seconds_with_tuning": round(time.perf_counter() - started, 1)}
    progress(f"seed {seed} ease: ndcg10 {out['ease']['ndcg10']:.4f}")
    if spark is not None:
        started = time.perf_counter()
        params, _ = baselines.tune_als(spark, train, item_ids, split, log=progress)
        out["als"] = {**row(baselines.als(spark, train, holdout, item_ids, params)),
                      "params": {**params, "maxIter": baselines.ALS_ITERATIONS},
                      "seconds_with_tuning": round(time.perf_counter() - started, 1)}
        progress(f"seed {seed} als: ndcg10 {out['als']['ndcg10']:.4f}")
    out["eval_users"] = metrics["eval_users"]
    return out


def row(metrics: dict) -> dict:
    return {k: round(float(metrics[k]), 5) for k in METRIC_KEYS + BEYOND_KEYS if k in metrics}


def summarise(per_seed: dict[int, dict]) -> dict:
    """Mean and (sample) standard deviation of each metric per model over the seeds."""
    models = [m for m in next(iter(per_seed.values())) if m != "eval_users"]
    out = {}
    for model in models:
        out[model] = {}
        for key in METRIC_KEYS + BEYOND_KEYS:
            values = [r[model][key] for r in per_seed.values() if key in r[model]]
            if values:
                out[model][key] = {"mean": round(float(np.mean(values)), 5),
                                   "std": round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 5)}
    return out


def run(path: Path, seeds=SEEDS, with_als: bool = True, demographics: bool = True) -> dict:
    ratings, users, items = load(path)
    settings = get_settings()
    progress(f"ml-100k: {len(ratings):,} ratings, {ratings['user_id'].nunique()} users, {len(items):,} items; "
             f"random {1 - HOLDOUT_SHARE:.0%}/{HOLDOUT_SHARE:.0%} per user, seeds {list(seeds)}; "
             f"demographics {'on' if demographics else 'off'}")
    spark = local_spark() if with_als else None
    steps, per_seed = Steps("bench.quality", len(seeds)), {}
    try:
        for seed in seeds:
            per_seed[seed] = one_seed(ratings, users, items, seed, settings.model, spark, demographics)
            steps.step(f"seed {seed}: " + ", ".join(f"{m} ndcg10 {r['ndcg10']:.4f}" for m, r in per_seed[seed].items()
                                                    if isinstance(r, dict) and "ndcg10" in r))
    finally:
        if spark is not None:
            spark.stop()
    summary = summarise(per_seed)
    tt, ease = summary["two-tower"]["ndcg10"]["mean"], summary["ease"]["ndcg10"]["mean"]
    wins = {m: all(r["two-tower"]["ndcg10"] > r[m]["ndcg10"] for r in per_seed.values())
            for m in summary if m != "two-tower"}
    return {"metric": "ndcg10", "summary": summary, "per_seed": {str(k): v for k, v in per_seed.items()},
            "two_tower_vs_ease_ndcg10": round(tt / ease, 4), "goal_vs_ease_reference": GOAL_VS_EASE,
            "meets_goal_vs_ease": tt >= GOAL_VS_EASE * ease, "two_tower_beats_on_every_seed": wins,
            "demographics": demographics, "k": K, "seeds": list(seeds),
            "split": f"random {1 - HOLDOUT_SHARE:.2f}/{HOLDOUT_SHARE:.2f} per user",
            "validation": f"random {settings.model.validation_share:.2f} of each user's training ratings",
            "map10": "AP@10 / min(10, relevant) (Recommenders map_at_k)", "loadavg": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the ml-100k directory (read in place)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="the splits' seeds")
    parser.add_argument("--no-als", action="store_true", help="skip Spark ALS (no JVM)")
    parser.add_argument("--no-demographics", action="store_true", help="segments without gender and age")
    args = parser.parse_args(argv)
    try:
        result = run(args.data, args.seeds, not args.no_als, not args.no_demographics)
    except MissingData as exc:
        print(exc, file=sys.stderr)
        return 2
    Steps("bench.quality", None).summary(
        f"NDCG@10 two-tower / EASE {result['two_tower_vs_ease_ndcg10']} (goal, reference: "
        f"{GOAL_VS_EASE}); " + ", ".join(f"{m} {v['ndcg10']['mean']:.4f}" for m, v in result["summary"].items()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
