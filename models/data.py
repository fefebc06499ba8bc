"""Training data as pure pandas/numpy functions: event weights, pairs, split, ranking metrics.

Nothing here touches Spark, TensorFlow or a service, so every rule (which events
are positives and how much they weigh, which pairs are held out, how a ranking
is scored) is unit-tested on small DataFrames. ``models.train`` reads Hive and
calls these; ``models.publish`` uses the same user features.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from feature_store.definitions import DWELL_MAX_BONUS, DWELL_MIN_MS, DWELL_UNIT_MS, EVENT_WEIGHTS, POSITIVE_TYPES  # noqa: F401
from feature_store.segments import ANY, segment_of


HOLDOUT_SHARE = 0.2
PAIR_COLUMNS = ["user_id", "item_id", "weight", "ts"]
USER_COLUMNS = ["user_id", "segment", "gender", "age", "interests"]
ITEM_COLUMNS = ["item_id", "category"]


def event_weights(events: pd.DataFrame) -> pd.Series:
    """Weight of each event row; NaN for rows that are not positives.

    ``events`` needs ``event_type`` and ``dwell_ms``. A dwell counts
    ``1 + min(dwell_ms / 30 s, 3)`` when it lasted at least 5 s, else nothing.
    """
    weights = events["event_type"].map(EVENT_WEIGHTS).astype("float64")
    dwell_ms = pd.to_numeric(events["dwell_ms"], errors="coerce")
    is_dwell = (events["event_type"] == "dwell") & (dwell_ms >= DWELL_MIN_MS)
    dwell = 1.0 + np.minimum(dwell_ms / DWELL_UNIT_MS, DWELL_MAX_BONUS)
    return weights.where(~is_dwell, dwell)


def positive_pairs(events: pd.DataFrame) -> pd.DataFrame:
    """Weighted (user, item) positives: weights summed per pair, ``ts`` = the pair's latest event.

    ``events`` needs ``user_id``, ``item_id``, ``event_type``, ``ts``, ``dwell_ms``.
    Returns ``user_id, item_id, weight, ts``, sorted by ``ts`` then ids.
    """
    weighted = events.assign(weight=event_weights(events))
    weighted = weighted[weighted["weight"].notna() & weighted["user_id"].notna() & weighted["item_id"].notna()]
    pairs = (
        weighted.groupby(["user_id", "item_id"], as_index=False, sort=False)
        .agg(weight=("weight", "sum"), ts=("ts", "max"))
    )
    pairs["ts"] = pairs["ts"].astype("int64")
    return pairs.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)[PAIR_COLUMNS]


def time_split(pairs: pd.DataFrame, holdout_share: float = HOLDOUT_SHARE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): the latest ``holdout_share`` of pairs by ``ts`` are held out.

    Ties on ``ts`` are broken by user and item id, so the split is deterministic.
    """
    if not 0.0 < holdout_share < 1.0:
        raise ValueError(f"holdout_share must be in (0, 1), got {holdout_share}")
    ordered = pairs.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    cut = int(round(len(ordered) * (1.0 - holdout_share)))
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)


def _interest_list(value: object) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return [str(v) for v in value if v is not None]


def user_features(users: pd.DataFrame) -> pd.DataFrame:
    """``user_id, segment, gender, age, interests`` (a list) for each row of the users table."""
    if users.empty:
        return pd.DataFrame(columns=USER_COLUMNS)
    interests = [_interest_list(v) for v in users["interests"]]
    ages = [None if pd.isna(a) else int(a) for a in users["age"]]
    genders = [None if pd.isna(g) else str(g) for g in users["gender"]]
    segments = [segment_of(g, a, i) for g, a, i in zip(genders, ages, interests)]
    return pd.DataFrame(
        {"user_id": users["user_id"].astype(str).to_numpy(), "segment": segments,
         "gender": genders, "age": ages, "interests": interests}
    )[USER_COLUMNS]


def segments_for(user_ids: Iterable[str], users: pd.DataFrame) -> list[str]:
    """The segment of each user id; ``any|any|any`` for users missing from ``users`` (features)."""
    known = dict(zip(users["user_id"], users["segment"]))
    unknown = "|".join((ANY, ANY, ANY))
    return [known.get(u, unknown) for u in user_ids]


def catalogue(items: pd.DataFrame, *pairs: pd.DataFrame) -> pd.DataFrame:
    """``item_id, category``: the items table plus any item seen in ``pairs`` (category ``any``)."""
    known = items[ITEM_COLUMNS].drop_duplicates("item_id") if not items.empty else pd.DataFrame(columns=ITEM_COLUMNS)
    seen = pd.concat([p["item_id"] for p in pairs], ignore_index=True) if pairs else pd.Series(dtype=object)
    extra = pd.DataFrame({"item_id": sorted(set(seen) - set(known["item_id"]))})
    extra["category"] = ANY
    out = pd.concat([known, extra], ignore_index=True)
    out["category"] = out["category"].fillna(ANY).astype(str).str.strip().str.lower().replace("", ANY)
    out["item_id"] = out["item_id"].astype(str)
    return out.reset_index(drop=True)


def log_sampling_probability(train: pd.DataFrame) -> pd.Series:
    """log q(item): the share of training pairs with each item, i.e. how often it is an in-batch negative."""
    counts = train["item_id"].value_counts()
    return np.log(counts / counts.sum())


def by_user(user_column: pd.Series, values: np.ndarray, user_ids: Sequence[str]) -> list[np.ndarray]:
    """``values`` split by ``user_column`` (rows in their order), one array per user of ``user_ids``
    (empty where a user has no rows; rows of other users are dropped).

    One stable sort instead of pandas' ``groupby(...).agg(list)``, which builds a Series per
    group in Python: 0.9 s against ~0.05 s for 400,000 rows of 20,000 users (cProfile of
    ``models.publish.build_feeds``, docs/performance.md)."""
    wanted = pd.Index(pd.unique(pd.Series(list(user_ids), dtype=object)))
    codes = wanted.get_indexer(user_column)
    keep = codes >= 0
    codes, values = codes[keep], np.asarray(values)[keep]
    order = np.argsort(codes, kind="stable")
    parts = np.split(values[order], np.cumsum(np.bincount(codes, minlength=len(wanted)))[:-1])
    return [parts[n] for n in wanted.get_indexer(list(user_ids))]


def index_lists(pairs: pd.DataFrame, user_ids: Sequence[str], item_index: dict[str, int]) -> list[np.ndarray]:
    """For each user in ``user_ids``, the catalogue indices of that user's items in ``pairs``."""
    if pairs.empty:
        return [np.zeros(0, dtype=np.int64) for _ in user_ids]
    indices = pairs["item_id"].map(item_index)
    known = indices.notna().to_numpy()
    return by_user(pairs["user_id"][known], indices[known].to_numpy(dtype=np.int64), user_ids)


def top_k(scores: np.ndarray, exclude: Sequence[np.ndarray] | None, k: int) -> np.ndarray:
    """Indices of the ``k`` best items per row, best first, never an item of ``exclude[row]``.

    Excluded items are ranked last, so they still appear when a row has fewer
    than ``k`` other items. ``scores`` is not modified.
    """
    scores = np.array(scores, dtype=np.result_type(scores, np.float32), copy=True)  # float32 stays float32
    for row, cols in enumerate(exclude or ()):
        scores[row, np.asarray(cols, dtype=np.int64)] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def ranking_metrics(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int = 10) -> dict[str, float]:
    """Mean ranking metrics at ``k`` (binary relevance) over users with at least one relevant item.

    For a user with relevant set R and top-k list with hit flags h_1..h_k:

    * ``recall@k`` = hits / |R|;
    * ``precision@k`` = hits / k;
    * ``ndcg@k`` = sum(h_i / log2(i + 1)) / the same sum for an ideal list of min(k, |R|) hits;
    * ``map@k`` = sum(h_i * precision@i) / min(k, |R|): average precision at k, normalised
      as Microsoft Recommenders' ``map_at_k`` (and Spark's ``meanAveragePrecisionAt``);
    * ``map@k_by_relevant`` = the same sum / |R|: Recommenders' older ``map``, the
      normalisation behind the MAP figures of their published benchmark tables.

    Returns ``recall{k}, precision{k}, ndcg{k}, map{k}, map{k}_by_relevant, eval_users``.
    """
    names = (f"recall{k}", f"precision{k}", f"ndcg{k}", f"map{k}", f"map{k}_by_relevant")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    positions = np.arange(1, k + 1)
    rows = []
    for row, rel in zip(ranked, relevant):
        if len(rel) == 0:
            continue
        hits = np.isin(row[:k], rel).astype(np.float64)
        n_hits = hits.sum()
        ideal = discounts[: min(k, len(rel))].sum()
        precision_at = np.cumsum(hits) / positions[: len(hits)]
        average_precision = float((hits * precision_at).sum())
        rows.append((n_hits / len(rel), n_hits / k, float((hits * discounts[: len(hits)]).sum() / ideal),
                     average_precision / min(k, len(rel)), average_precision / len(rel)))
    if not rows:
        return {**dict.fromkeys(names, 0.0), "eval_users": 0}
    means = np.mean(np.asarray(rows), axis=0)
    return {**{name: float(value) for name, value in zip(names, means)}, "eval_users": len(rows)}


def coverage_and_popularity_bias(ranked: np.ndarray, item_counts: np.ndarray, k: int = 10) -> dict[str, float]:
    """Beyond accuracy, over every ranked row's top ``k`` (item indices into ``item_counts``).

    * ``coverage{k}``: the share of the catalogue that appears in some top k;
    * ``popularity_bias{k}``: the mean popularity percentile of the recommended items
      (each item's training count ranked against the catalogue's: 1.0 = the most
      popular item, 0.5 = the median one). Popularity-only feeds score near 1.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    if len(counts) == 0 or ranked.size == 0:
        return {f"coverage{k}": 0.0, f"popularity_bias{k}": 0.0}
    top = np.asarray(ranked)[:, :k]
    top = top[top >= 0]
    order = np.argsort(np.argsort(counts, kind="stable"), kind="stable")
    percentile = (order + 1) / len(counts)
    return {f"coverage{k}": float(len(np.unique(top)) / len(counts)),
            f"popularity_bias{k}": float(percentile[top].mean()) if top.size else 0.0}


def random_split(pairs: pd.DataFrame, holdout_share: float = 0.25, seed: int = 42
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): a seeded random ``holdout_share`` of each user's pairs is held out.

    Each user keeps ``round(n * (1 - holdout_share))`` pairs for training (at least
    one), so every user with two or more pairs has a holdout. The evaluation
    protocol of ``../shared/data/README.md`` (random 75/25 per user).
    """
    if not 0.0 < holdout_share < 1.0:
        raise ValueError(f"holdout_share must be in (0, 1), got {holdout_share}")
    rng = np.random.default_rng(seed)
    shuffled = pairs.iloc[rng.permutation(len(pairs))]
    rank = shuffled.groupby("user_id", sort=False).cumcount().to_numpy()
    size = shuffled.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    keep = np.maximum(np.round(size * (1.0 - holdout_share)), 1)
    in_train = rank < keep
    train = shuffled[in_train].sort_index().reset_index(drop=True)
    holdout = shuffled[~in_train].sort_index().reset_index(drop=True)
    return train, holdout


def recent_histories(pairs: pd.DataFrame, user_ids: Sequence[str], length: int) -> list[list[str]]:
    """Each user's ``length`` most recent items in ``pairs`` (latest ``ts`` first; ``[]`` if none).

    Ties on ``ts`` (or no ``ts`` column: row order) keep the later row first. The
    query tower's ``history`` input.
    """
    if length <= 0 or pairs.empty:
        return [[] for _ in user_ids]
    ordered = pairs[::-1]
    if "ts" in pairs:
        ordered = ordered.sort_values("ts", ascending=False, kind="stable")
    latest = ordered.drop_duplicates(["user_id", "item_id"]).groupby("user_id", sort=False).head(length)
    return [[str(i) for i in items] for items in by_user(latest["user_id"], latest["item_id"].to_numpy(), user_ids)]


def popularity_scores(train: pd.DataFrame, item_ids: Sequence[str]) -> np.ndarray:
    """Summed training weight of each catalogue item: the popularity baseline's score."""
    weight = train.groupby("item_id")["weight"].sum()
    return weight.reindex(list(item_ids)).fillna(0.0).to_numpy(dtype=np.float64)


def rank_holdout(scores: np.ndarray, user_ids: Sequence[str], item_ids: Sequence[str], train: pd.DataFrame,
                 holdout: pd.DataFrame, k: int = 10, recall_ks: Sequence[int] = ()) -> dict[str, float]:
    """Ranking metrics (and coverage, popularity bias) of a ``[users, items]`` score matrix, each user's
    train items excluded: how every model (two-tower, popularity, EASE, ALS) is scored.

    ``recall_ks``: also ``recall{c}`` for each ``c`` (a recall@K curve), from the same ranking."""
    index = {item: n for n, item in enumerate(item_ids)}
    exclude = index_lists(train, user_ids, index)
    relevant = index_lists(holdout, user_ids, index)
    ranked = top_k(scores, exclude, max((k, *recall_ks)))
    counts = np.bincount(train["item_id"].map(index).dropna().astype(int), minlength=len(item_ids))
    out = {**ranking_metrics(ranked[:, :k], relevant, k), **coverage_and_popularity_bias(ranked[:, :k], counts, k)}
    for c in recall_ks:
        out.setdefault(f"recall{c}", ranking_metrics(ranked[:, :c], relevant, c)[f"recall{c}"])
    return out
