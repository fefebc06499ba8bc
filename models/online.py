"""The online learner's core: bounded fine-tuning of the champion's towers, with a guardrail.

Pure model code (no Kafka, Spark or Redis), so every rule is unit-tested; the
streaming job (:mod:`spark.stream_learner`) feeds it micro-batches of click and dwell
pairs and publishes the feeds of the segments it names.

One :meth:`OnlineLearner.update` per micro-batch:

1. **bound the batch** (:func:`bounded_pairs`): each user and each item contributes
   at most ``max_pairs_per_user`` / ``max_pairs_per_item`` pairs, no pair weighs
   more than ``MAX_PAIR_WEIGHT``, and at most
   ``max_steps × batch_size`` pairs in all, so a flood of clicks from one user or on
   one item moves the model no more than an ordinary user or item can;
2. **fine-tune** both towers on them (a small batch repeated to fill half a training
   batch) plus as many replayed past pairs (negatives for the in-batch softmax, and
   less forgetting), from the current state, ``PASSES`` passes of at most
   ``2 × max_steps`` steps each (same loss, weights and features as the daily training:
   :meth:`models.two_tower.TwoTower.fit`). New users and items need nothing: their
   ids hash to embedding rows that the update trains;
3. **guardrail**: recall@K on a fixed holdout before and after. The floor is the
   higher of two bounds: an update may lose at most ``max_regression`` (relative) of
   the last good score, and the online state at most ``max_drift`` (relative) of the
   champion's, in both cases and at least ``min_tolerance`` (absolute: at a recall
   of 1%, 5% is sampling noise). An update below the floor is retried at half and
   then a quarter of its step (the weights moved that share of the way: a trust
   region, so a batch that overshoots still teaches something); when even the
   quarter step is below the floor it is rolled back (the towers' weights restored
   exactly) and reported, and the state stays at the last good one. The holdout is
   the champion's, so it measures the world before any drift: ``max_drift`` is how
   far the online state may move away from it before the next daily retrain;
4. an accepted update bumps the online version, ``<champion>+online.<n>``, and
   reports the segments its users belong to (with their fallbacks): the feeds to
   recompute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from feature_store.segments import fallbacks
from models import data

GUARD_K = 10
PASSES = 3  # passes over an update's rows
# a pair's weight at most: a click (2) and the longest dwell (4), twice over; the flood caps count pairs,
# this caps what one pair can weigh
MAX_PAIR_WEIGHT = 12.0
STEP_SHARES = (1.0, 0.5, 0.25)  # shares of an update's step tried against the guardrail, in turn
REPLAY_RATIO = 1  # replayed past pairs per new training row


def bounded_pairs(pairs: pd.DataFrame, max_per_user: int, max_per_item: int, max_total: int,
                  seed: int = 0, max_weight: float | None = None) -> pd.DataFrame:
    """At most ``max_per_user`` pairs per user, ``max_per_item`` per item and ``max_total`` in all.

    Within a user (then an item) the heaviest, then latest, pairs are kept; the
    total cap keeps a seeded random sample. ``pairs``: ``user_id, item_id, weight``
    (and ``ts``); weights are summed per (user, item) first, then capped at
    ``max_weight`` (default :data:`MAX_PAIR_WEIGHT`): a thousand clicks on one item
    weigh what a click and a long dwell do.
    """
    max_weight = MAX_PAIR_WEIGHT if max_weight is None else max_weight
    if pairs.empty:
        return pairs
    agg = {"weight": ("weight", "sum")}
    if "ts" in pairs:
        agg["ts"] = ("ts", "max")
    merged = pairs.groupby(["user_id", "item_id"], as_index=False, sort=False).agg(**agg)
    order = ["weight", "ts"] if "ts" in merged else ["weight"]
    merged["weight"] = merged["weight"].clip(upper=max_weight)
    merged = merged.sort_values(order, ascending=False, kind="stable")
    merged = merged[merged.groupby("user_id", sort=False).cumcount() < max_per_user]
    merged = merged[merged.groupby("item_id", sort=False).cumcount() < max_per_item]
    if len(merged) > max_total:
        merged = merged.sample(n=max_total, random_state=seed)
    return merged.reset_index(drop=True)


@dataclass
class UpdateResult:
    """What one update did: accepted or rolled back, and why."""

    accepted: bool
    reason: str
    version: str
    pairs_in: int
    pairs_used: int
    guard_before: float
    guard_after: float
    seconds: float
    segments: list[str] = field(default_factory=list)
    step_share: float = 0.0  # share of the step kept (1: all of it; 0: rolled back)
    floor: float = 0.0  # the guard score the update had to keep
    top_user_pairs: int = 0  # most pairs one user contributed after the flood caps
    top_item_pairs: int = 0  # most pairs one item received after the flood caps
    top_pair_weight: float = 0.0  # the heaviest pair after the weight cap


class OnlineLearner:
    """Fine-tunes a :class:`models.two_tower.TwoTower` in place, one micro-batch at a time.

    ``users``: user features (:func:`models.data.user_features`); ``catalogue``:
    ``item_id, category``. ``guard_history`` / ``guard_holdout``: the fixed holdout
    the guardrail scores (the champion's evaluation split: its users' training pairs
    are their history, the held-out pairs are what recall@K counts).
    """

    def __init__(self, model, base_version: str, users: pd.DataFrame, catalogue: pd.DataFrame,
                 guard_history: pd.DataFrame, guard_holdout: pd.DataFrame, *, max_steps: int = 8,
                 batch_size: int = 256, learning_rate: float = 0.01, max_regression: float = 0.05,
                 min_tolerance: float = 0.005, max_drift: float = 0.2,
                 max_pairs_per_user: int = 20, max_pairs_per_item: int = 50, updates: int = 0,
                 base_score: float | None = None, log=print):
        self.model = model
        self.base_version = str(base_version)
        self.users = users
        self.catalogue = catalogue
        self.guard_history = guard_history
        self.guard_holdout = guard_holdout
        self.replay = guard_history[[c for c in ("user_id", "item_id", "weight", "ts") if c in guard_history]]
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_regression = max_regression
        self.min_tolerance = min_tolerance
        self.max_drift = max_drift
        self.max_pairs_per_user = max_pairs_per_user
        self.max_pairs_per_item = max_pairs_per_item
        self.updates = updates
        self.rollbacks = 0
        self.log = log
        self.guard_score = self._guard()
        # the champion's score, the drift bound's base (a state resumed from a checkpoint passes it on)
        self.base_score = self.guard_score if base_score is None else float(base_score)

    @property
    def version(self) -> str:
        """The model version feeds published from this state carry, e.g. ``12+online.37``."""
        return f"{self.base_version}+online.{self.updates}" if self.updates else self.base_version

    def _guard(self) -> float:
        if self.guard_holdout.empty:
            return 0.0
        metrics = self.model.evaluate(self.guard_history, self.guard_holdout, self.users, self.catalogue, GUARD_K)
        return float(metrics[f"recall{GUARD_K}"])

    def _weights(self) -> list[list[np.ndarray]]:
        return [tower.get_weights() for tower in (self.model.query_tower, self.model.item_tower)]

    def _restore(self, weights: list[list[np.ndarray]]) -> None:
        for tower, values in zip((self.model.query_tower, self.model.item_tower), weights):
            tower.set_weights(values)

    def floor(self) -> float:
        """The lowest guard score an update may leave: the per-update and the cumulative bound."""
        per_update = self.guard_score - max(self.guard_score * self.max_regression, self.min_tolerance)
        cumulative = self.base_score - max(self.base_score * self.max_drift, self.min_tolerance)
        return max(per_update, cumulative)

    def _with_replay(self, used: pd.DataFrame) -> pd.DataFrame:
        """The batch (repeated when small) plus as many replayed past pairs.

        A burst on one item alone has no negatives in an in-batch softmax (one candidate,
        zero loss); replayed pairs bring the other items in as negatives, and keep the
        towers close to what they knew (less forgetting between daily retrains).
        """
        # a small batch is repeated until it fills half a training batch: ten clicks must be able to move
        # a brand-new item's embedding row, which starts at random
        new = pd.concat([used] * max(1, -(-self.batch_size // (2 * len(used)))), ignore_index=True)
        if self.replay.empty:
            return new
        n = min(len(self.replay), REPLAY_RATIO * max(len(new), self.batch_size // 2))
        sample = self.replay.sample(n=n, random_state=self.updates)[used.columns.intersection(self.replay.columns)]
        return pd.concat([new, sample], ignore_index=True)

    def touched_segments(self, pairs: pd.DataFrame) -> list[str]:
        """The segments (exact and their fallbacks) of the batch's users: the feeds to recompute."""
        ids = pairs["user_id"].astype(str).unique().tolist()
        segments = data.segments_for(ids, self.users)
        return sorted({parent for segment in segments for parent in fallbacks(segment)})

    def update(self, pairs: pd.DataFrame) -> UpdateResult:
        """Fine-tune on one micro-batch of weighted positive pairs; keep it only if the guardrail allows."""
        started = time.perf_counter()
        used = bounded_pairs(pairs, self.max_pairs_per_user, self.max_pairs_per_item,
                             self.max_steps * self.batch_size, seed=self.updates)
        if used.empty:
            return UpdateResult(False, "no positive pairs", self.version, len(pairs), 0, self.guard_score,
                                self.guard_score, time.perf_counter() - started)
        before = self._weights()
        catalogue = data.catalogue(self.catalogue, used)  # items first seen in the stream join the catalogue
        self.model.fit(self._with_replay(used), self.users, catalogue, PASSES, self.batch_size, self.learning_rate,
                       log=lambda _: None)
        floor = self.floor()
        tops = {"top_user_pairs": int(used["user_id"].value_counts().max()),
                "top_item_pairs": int(used["item_id"].value_counts().max()),
                "top_pair_weight": float(used["weight"].max())}
        full = self._weights()
        tried = []
        for share in STEP_SHARES:
            if share < 1.0:  # the weights moved only this share of the way from before to the full step
                self._restore([[b + share * (f - b) for b, f in zip(bb, ff)] for bb, ff in zip(before, full)])
            after = self._guard()
            tried.append(f"{after:.4f} at {share:g}")
            if after >= floor:
                break
        else:
            self._restore(before)
            self.rollbacks += 1
            reason = (f"rolled back: guard recall@{GUARD_K} {', '.join(tried)} of the step < floor {floor:.4f} "
                      f"(last good {self.guard_score:.4f} less {self.max_regression:.0%}, champion's "
                      f"{self.base_score:.4f} less {self.max_drift:.0%}, at least {self.min_tolerance})")
            self.log(f"online update {self.updates + 1}: {reason}")
            return UpdateResult(False, reason, self.version, len(pairs), len(used), self.guard_score, after,
                                time.perf_counter() - started, floor=floor, **tops)
        self.catalogue = catalogue
        self.updates += 1
        previous, self.guard_score = self.guard_score, after
        reason = "accepted" if share == 1.0 else f"accepted at {share:g} of the step (full step: {tried[0]})"
        return UpdateResult(True, reason, self.version, len(pairs), len(used), previous, after,
                            time.perf_counter() - started, self.touched_segments(used), share, floor, **tops)
