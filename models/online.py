"""The online learner's core: bounded fine-tuning of the champion's towers, judged test-then-train.

Pure model code (no Kafka, Spark or Redis), so every rule is unit-tested; the
streaming job (:mod:`spark.stream_learner`) feeds it micro-batches of click and dwell
pairs and publishes the feeds of the segments it names.

One :meth:`OnlineLearner.update` per micro-batch:

1. **bound the batch** (:func:`bounded_pairs`): each user and each item contributes
   at most ``max_pairs_per_user`` / ``max_pairs_per_item`` pairs, no pair weighs
   more than ``MAX_PAIR_WEIGHT``, and at most ``max_steps × batch_size`` pairs in
   all, so a flood of clicks from one user or on one item moves the model no more
   than an ordinary user or item can;
2. **test** (prequential, before learning): each of the batch's clicks is scored by
   where the clicked item ranks in the catalogue for the clicker's segment (the
   query the published segment feeds are ranked by), once with the current online
   state and once with the frozen champion: :func:`percentile_ranks`. The pair of
   means goes into a :class:`PrequentialWindow` of the last ``window`` batches.
   When the window shows the online state behind the champion by more than
   ``margin``, and by more than its noise (two standard errors between batches),
   the online state is **reset to the champion** (its weights restored exactly, its
   catalogue the champion's), the segments it had republished are republished from
   the champion, and the reset is reported as an alert; after ``max_rollbacks``
   resets on one champion the learner **stops learning** until the next champion;
3. **train**: both towers fine-tuned on the bounded pairs (a small batch repeated to
   fill half a training batch) plus as many replayed past pairs (negatives for the
   in-batch softmax, and less forgetting), ``PASSES`` passes from the current state
   (same loss, weights and features as the daily training:
   :meth:`models.two_tower.TwoTower.fit`). New users and items need nothing: their
   ids hash to embedding rows that the update trains;
4. **secondary bound** (catastrophe only): recall@K on a fixed sample of the
   champion's holdout after the update; below ``holdout_floor`` × the score of the
   state before the update, the update is refused (weights restored exactly). That
   holdout scores the world before any drift and moves by ±15% with no real change,
   and learning the present slowly costs it recall by construction, so the bound is
   per update and wide: it decides only when one batch has wrecked the model;
5. an accepted update bumps the online version, ``<champion>+online.<n>``, and
   reports the segments its users belong to (with their fallbacks): the feeds to
   recompute. A reset to the champion is a new state too and takes the next number.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from feature_store.segments import fallbacks
from models import data

GUARD_K = 10
PASSES = 3  # passes over an update's rows
# a pair's weight at most: a click (2) and the longest dwell (4), twice over; the flood caps count pairs,
# this caps what one pair can weigh
MAX_PAIR_WEIGHT = 12.0
REPLAY_RATIO = 1  # replayed past pairs per new training row
NOISE_Z = 2.0  # a shortfall must also exceed this many standard errors (between batches) of the window's mean
MIN_BATCHES = 3  # a window judges nothing on fewer batches: no standard error worth the name


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


def percentile_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each row of ``scores`` (``[events, items]``), the share of the other items its target outscores.

    1.0: the clicked item ranked first; 0.5: a random ranking's expectation; ties
    count half. ``targets``: the clicked item's column in each row.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[0] == 0:
        return np.zeros(0)
    target = scores[np.arange(len(targets)), targets][:, None]
    below = (scores < target).sum(axis=1)
    ties = (scores == target).sum(axis=1) - 1  # the target itself is not a rival
    return (below + 0.5 * ties) / max(scores.shape[1] - 1, 1)


@dataclass
class Verdict:
    """A window's judgement: the online state against the champion on the same recent events."""

    ok: bool
    online: float  # mean score of the online state over the window's events
    champion: float  # the frozen champion's, same events
    shortfall: float  # champion - online (positive: the online state is behind)
    stderr: float  # standard error of the shortfall, between batches
    events: int
    batches: int
    judged: bool  # False: too few events or batches to judge (ok by default)

    def describe(self) -> str:
        return (f"prequential percentile rank online {self.online:.4f} vs champion {self.champion:.4f} over "
                f"{self.events} events in {self.batches} batches (shortfall {self.shortfall:+.4f} ± "
                f"{self.stderr:.4f})")


class PrequentialWindow:
    """Test-then-train scores of the last ``size`` batches, the online state's and the champion's, per event.

    Judges :meth:`verdict`: the online state fails when, over the window's events,
    its mean score is below the champion's by more than ``margin`` *and* by more
    than ``NOISE_Z`` standard errors of that shortfall. The standard error is taken
    between batches (each batch's mean shortfall), because one batch's events are
    not independent: a burst of clicks on one new item is one observation, not
    forty. Nothing is judged before ``min_events`` events in ``MIN_BATCHES`` batches.
    """

    def __init__(self, size: int, margin: float, min_events: int, batches: list | None = None):
        if size < MIN_BATCHES:
            raise ValueError(f"a prequential window needs at least {MIN_BATCHES} batches, got {size}")
        self.size = size
        self.margin = margin
        self.min_events = min_events
        # per batch: (events, online mean, champion mean)
        self.batches: deque[tuple[int, float, float]] = deque((tuple(b) for b in batches or ()), maxlen=size)

    def add(self, online: np.ndarray, champion: np.ndarray) -> None:
        """One batch's per-event scores, the online state's and the champion's on the same events."""
        if len(online) != len(champion):
            raise ValueError("online and champion scores must cover the same events")
        if len(online):
            self.batches.append((len(online), float(np.mean(online)), float(np.mean(champion))))

    def clear(self) -> None:
        self.batches.clear()

    def verdict(self) -> Verdict:
        if not self.batches:
            return Verdict(True, 0.0, 0.0, 0.0, 0.0, 0, 0, False)
        n = np.array([b[0] for b in self.batches], dtype=np.float64)
        online = np.array([b[1] for b in self.batches])
        champion = np.array([b[2] for b in self.batches])
        events, k = int(n.sum()), len(n)
        mean_online, mean_champion = float(n @ online / n.sum()), float(n @ champion / n.sum())
        shortfall = mean_champion - mean_online
        # the event-weighted mean's standard error, batches as clusters (a ratio estimator's variance)
        residual = (champion - online) - shortfall
        stderr = float(math.sqrt(k / (k - 1) * float((n * residual) @ (n * residual))) / n.sum()) if k > 1 else 0.0
        judged = events >= self.min_events and k >= MIN_BATCHES
        ok = not judged or shortfall <= self.margin or shortfall <= NOISE_Z * stderr
        return Verdict(ok, mean_online, mean_champion, shortfall, stderr, events, k, judged)

    def state(self) -> list[list[float]]:
        """What a checkpoint keeps (the window survives a restart)."""
        return [list(b) for b in self.batches]


@dataclass
class UpdateResult:
    """What one update did: accepted or refused, whether the state was reset to the champion, and why."""

    accepted: bool
    reason: str
    version: str
    pairs_in: int
    pairs_used: int
    guard_before: float  # secondary bound: holdout recall@K before and after the update
    guard_after: float
    seconds: float
    segments: list[str] = field(default_factory=list)  # feeds to republish from the state the learner is in now
    floor: float = 0.0  # the holdout recall the update had to keep (secondary bound)
    reset: bool = False  # the online state was reset to the champion (the prequential judge failed)
    halted: bool = False  # learning is stopped until the next champion
    prequential_online: float = 0.0  # the window's mean score of the online state before this batch was learned
    prequential_champion: float = 0.0  # ... and of the champion, on the same events
    prequential_shortfall: float = 0.0
    prequential_stderr: float = 0.0
    prequential_events: int = 0
    top_user_pairs: int = 0  # most pairs one user contributed after the flood caps
    top_item_pairs: int = 0  # most pairs one item received after the flood caps
    top_pair_weight: float = 0.0  # the heaviest pair after the weight cap

    @property
    def publish(self) -> bool:
        """Whether there are feeds to republish (an accepted update, or a reset to the champion)."""
        return bool(self.segments) and (self.accepted or self.reset)


def copy_model(model):
    """An independent :class:`models.two_tower.TwoTower` with ``model``'s config and weights (exact)."""
    from models.two_tower import TwoTower

    tmp = Path(tempfile.mkdtemp(prefix="feedloop-copy-"))
    try:
        return TwoTower.load(model.save(tmp / "towers"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OnlineLearner:
    """Fine-tunes a :class:`models.two_tower.TwoTower` in place, one micro-batch at a time.

    ``users``: user features (:func:`models.data.user_features`); ``catalogue``:
    ``item_id, category``. ``guard_history`` / ``guard_holdout``: the fixed holdout
    of the secondary bound (the champion's evaluation split: its users' training
    pairs are their history and the replay set, the held-out pairs are what
    recall@K counts). ``champion``: the frozen champion the prequential judge
    compares with and a reset restores (default: a copy of ``model`` as given).
    ``resume``: what :meth:`state` returned, to carry on from a checkpoint.
    """

    def __init__(self, model, base_version: str, users: pd.DataFrame, catalogue: pd.DataFrame,
                 guard_history: pd.DataFrame, guard_holdout: pd.DataFrame, *, champion=None, max_steps: int = 8,
                 batch_size: int = 256, learning_rate: float = 0.01, window: int = 8, margin: float = 0.02,
                 min_events: int = 30, max_rollbacks: int = 3, holdout_floor: float = 0.5,
                 max_pairs_per_user: int = 20, max_pairs_per_item: int = 50, embeddings_only: bool = False,
                 updates: int = 0,
                 base_score: float | None = None, resume: dict | None = None, log=print):
        resume = resume or {}
        self.model = model
        self.champion = champion if champion is not None else copy_model(model)
        self.base_version = str(base_version)
        self.users = users
        self.catalogue = catalogue
        self.base_catalogue = catalogue
        self.guard_history = guard_history
        self.guard_holdout = guard_holdout
        self.replay = guard_history[[c for c in ("user_id", "item_id", "weight", "ts") if c in guard_history]]
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.embeddings_only = embeddings_only
        self.window = PrequentialWindow(window, margin, min_events, resume.get("window"))
        self.max_rollbacks = max_rollbacks
        self.holdout_floor = holdout_floor
        self.max_pairs_per_user = max_pairs_per_user
        self.max_pairs_per_item = max_pairs_per_item
        self.updates = updates
        self.rollbacks = int(resume.get("rollbacks", 0))  # resets to the champion on this champion
        self.refusals = 0  # updates refused by the secondary bound
        self.halted = bool(resume.get("halted", False))
        self.alert = str(resume.get("alert", ""))
        self.touched: set[str] = set(resume.get("touched", ()))  # segments published from the online state
        self.log = log
        self.guard_score = self._guard()
        # the champion's holdout score, the secondary bound's base (a state resumed from a checkpoint passes it on)
        self.base_score = self.guard_score if base_score is None else float(base_score)

    @property
    def version(self) -> str:
        """The model version feeds published from this state carry, e.g. ``12+online.37``."""
        return f"{self.base_version}+online.{self.updates}" if self.updates else self.base_version

    def state(self) -> dict:
        """What a checkpoint must keep besides the towers: the judge's window, resets, the alert."""
        return {"window": self.window.state(), "rollbacks": self.rollbacks, "halted": self.halted,
                "alert": self.alert, "touched": sorted(self.touched)}

    def _guard(self) -> float:
        if self.guard_holdout.empty:
            return 0.0
        metrics = self.model.evaluate(self.guard_history, self.guard_holdout, self.users, self.catalogue, GUARD_K)
        return float(metrics[f"recall{GUARD_K}"])

    @staticmethod
    def _towers(model) -> tuple:
        return model.query_tower, model.item_tower

    def _weights(self, model=None) -> list[list[np.ndarray]]:
        return [tower.get_weights() for tower in self._towers(model or self.model)]

    def _restore(self, weights: list[list[np.ndarray]]) -> None:
        for tower, values in zip(self._towers(self.model), weights):
            tower.set_weights(values)

    def floor(self) -> float:
        """The lowest holdout recall an update may leave (the secondary bound): a share of the current state's."""
        return self.guard_score * self.holdout_floor

    def prequential_scores(self, pairs: pd.DataFrame, catalogue: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Per pair, the clicked item's percentile rank for the user's segment: (online state, champion).

        The segment-only query is what the published segment feeds are ranked by, so
        this scores what the learner actually serves.
        """
        index = {item: n for n, item in enumerate(catalogue["item_id"])}
        targets = pairs["item_id"].astype(str).map(index).to_numpy(dtype=np.int64)
        segments = data.segments_for(pairs["user_id"].astype(str), self.users)
        unique = sorted(set(segments))
        row_of = {segment: n for n, segment in enumerate(unique)}
        rows = np.array([row_of[s] for s in segments], dtype=np.int64)
        items, categories = catalogue["item_id"].tolist(), catalogue["category"].tolist()
        out = []
        for model in (self.model, self.champion):
            scores = model.query_embeddings([""] * len(unique), unique) @ model.item_embeddings(items, categories).T
            out.append(percentile_ranks(scores[rows], targets))
        return out[0], out[1]

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

    def reset_to_champion(self, why: str) -> list[str]:
        """The online state becomes the champion again (weights restored exactly); returns the feeds to republish."""
        self._restore(self._weights(self.champion))
        self.catalogue = self.base_catalogue
        self.window.clear()
        self.rollbacks += 1
        self.updates += 1  # a new state, published under the next number
        republish, self.touched = sorted(self.touched), set()
        self.halted = self.rollbacks >= self.max_rollbacks
        self.alert = (f"reset to champion v{self.base_version} ({self.rollbacks} of {self.max_rollbacks} allowed): "
                      f"{why}" + ("; learning stopped until the next champion" if self.halted else ""))
        self.log(f"online update {self.updates}: {self.alert}")
        return republish

    def update(self, pairs: pd.DataFrame) -> UpdateResult:
        """Test the current state on one micro-batch of weighted positive pairs, then learn them (see the module)."""
        started = time.perf_counter()
        if self.halted:
            return UpdateResult(False, f"not learned: halted ({self.alert})", self.version, len(pairs), 0,
                                self.guard_score, self.guard_score, time.perf_counter() - started, halted=True)
        used = bounded_pairs(pairs, self.max_pairs_per_user, self.max_pairs_per_item,
                             self.max_steps * self.batch_size, seed=self.updates)
        if used.empty:
            return UpdateResult(False, "no positive pairs", self.version, len(pairs), 0, self.guard_score,
                                self.guard_score, time.perf_counter() - started)
        tops = {"top_user_pairs": int(used["user_id"].value_counts().max()),
                "top_item_pairs": int(used["item_id"].value_counts().max()),
                "top_pair_weight": float(used["weight"].max())}
        # 1. test, then train: the batch scores the state before it is learned
        self.window.add(*self.prequential_scores(used, data.catalogue(self.catalogue, used)))
        verdict = self.window.verdict()
        judged = {"prequential_online": verdict.online, "prequential_champion": verdict.champion,
                  "prequential_shortfall": verdict.shortfall, "prequential_stderr": verdict.stderr,
                  "prequential_events": verdict.events}
        republish: list[str] = []
        reset = not verdict.ok
        if reset:
            republish = self.reset_to_champion(f"{verdict.describe()} > margin {self.window.margin}")
            if self.halted:
                return UpdateResult(False, f"not learned: {self.alert}", self.version, len(pairs), len(used),
                                    self.guard_score, self.guard_score, time.perf_counter() - started, republish,
                                    reset=True, halted=True, **judged, **tops)
            self.guard_score = self.base_score
        # 2. train
        before = self._weights()
        catalogue = data.catalogue(self.catalogue, used)  # items first seen in the stream join the catalogue
        self.model.fit(self._with_replay(used), self.users, catalogue, PASSES, self.batch_size, self.learning_rate,
                       log=lambda _: None, embeddings_only=self.embeddings_only,
                       average_epochs=0)  # averaging copied every table each pass: most of an update's second
        # 3. the secondary bound: only a wrecked model falls this far
        after, floor = self._guard(), self.floor()
        prefix = "reset to the champion, then " if reset else ""
        if after < floor:
            self._restore(before)
            self.refusals += 1
            reason = (f"{prefix}refused: holdout recall@{GUARD_K} {after:.4f} after the update < floor {floor:.4f} "
                      f"({self.holdout_floor:g} of the state's {self.guard_score:.4f} before it); weights restored")
            self.log(f"online update {self.updates + 1}: {reason}")
            return UpdateResult(False, reason, self.version, len(pairs), len(used), self.guard_score, after,
                                time.perf_counter() - started, republish, floor, reset, **judged, **tops)
        self.catalogue = catalogue
        self.updates += 1
        segments = self.touched_segments(used)
        self.touched.update(segments)
        previous, self.guard_score = self.guard_score, after
        reason = f"{prefix}accepted" + (f" ({verdict.describe()})" if verdict.judged else "")
        return UpdateResult(True, reason, self.version, len(pairs), len(used), previous, after,
                            time.perf_counter() - started, sorted(set(segments) | set(republish)), floor, reset,
                            **judged, **tops)
