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


def index_lists(pairs: pd.DataFrame, user_ids: Sequence[str], item_index: dict[str, int]) -> list[np.ndarray]:
    """For each user in ``user_ids``, the catalogue indices of that user's items in ``pairs``."""
    grouped = pairs.groupby("user_id")["item_id"].agg(list).to_dict()
    return [
        np.fromiter((item_index[i] for i in grouped.get(u, ()) if i in item_index), dtype=np.int64)
        for u in user_ids
    ]


def top_k(scores: np.ndarray, exclude: Sequence[np.ndarray] | None, k: int) -> np.ndarray:
    """Indices of the ``k`` best items per row, best first, never an item of ``exclude[row]``.

    Excluded items are ranked last, so they still appear when a row has fewer
    than ``k`` other items. ``scores`` is not modified.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    for row, cols in enumerate(exclude or ()):
        scores[row, np.asarray(cols, dtype=np.int64)] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def ranking_metrics(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int = 10) -> dict[str, float]:
    """Mean ``recall@k`` and ``ndcg@k`` (binary relevance) over users with at least one relevant item.

    recall@k = hits in the top k / number of relevant items;
    ndcg@k = DCG of the top k / DCG of an ideal ranking of min(k, relevant) hits.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for row, rel in zip(ranked, relevant):
        if len(rel) == 0:
            continue
        hits = np.isin(row[:k], rel)
        recalls.append(hits.sum() / len(rel))
        ideal = discounts[: min(k, len(rel))].sum()
        ndcgs.append(float((hits * discounts[: len(hits)]).sum() / ideal))
    if not recalls:
        return {f"recall{k}": 0.0, f"ndcg{k}": 0.0, "eval_users": 0}
    return {f"recall{k}": float(np.mean(recalls)), f"ndcg{k}": float(np.mean(ndcgs)), "eval_users": len(recalls)}


def popularity_scores(train: pd.DataFrame, item_ids: Sequence[str]) -> np.ndarray:
    """Summed training weight of each catalogue item: the popularity baseline's score."""
    weight = train.groupby("item_id")["weight"].sum()
    return weight.reindex(list(item_ids)).fillna(0.0).to_numpy(dtype=np.float64)
