"""The two-tower retrieval model: query tower, item tower, in-batch softmax loss, training, scoring.

Query tower inputs: ``user_id`` and ``segment`` (``gender|age band|top interest``,
from :mod:`feature_store.segments`). Item tower inputs: ``item_id`` and
``category``. Every string is hashed (``keras.layers.Hashing``), so unseen users
and items need no vocabulary; an empty user or item id contributes a zero vector,
which is the cold-start (feature-only) representation. Training drops ids and
segment parts at random so that representation, and the coarser ``any`` segments
used as feed fallbacks, are learned too.

Importing this module imports TensorFlow (~12 s): only ``models.train`` and
``models.publish`` do, inside their entry points.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import tensorflow as tf

from feature_store.segments import ANY
from models import data

keras = tf.keras

CONFIG_FILE = "config.json"
WEIGHTS_FILES = {"query_tower": "query_tower.weights.h5", "item_tower": "item_tower.weights.h5"}
FEATURE_BUCKETS = 1024  # gender, age band, interest, category: small vocabularies, few collisions
SEGMENT_PARTS = 3
NO_ID = ""


@dataclass(frozen=True)
class TowerConfig:
    """Everything needed to rebuild the towers before loading their weights."""

    embedding_dim: int = 32
    hash_buckets: int = 100_000
    temperature: float = 0.05
    id_dropout: float = 0.1
    segment_part_dropout: float = 0.1
    seed: int = 7

    @classmethod
    def from_settings(cls, model_settings) -> "TowerConfig":
        return cls(
            embedding_dim=model_settings.embedding_dim,
            hash_buckets=model_settings.hash_buckets,
            temperature=model_settings.temperature,
        )


# ------------------------------------------------------------------ layers
class FeatureDropout(keras.layers.Layer):
    """In training, replaces each string with ``replacement`` with probability ``rate``."""

    def __init__(self, rate: float, replacement: str, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.replacement = replacement
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, values, training=None):
        if not training or self.rate <= 0:
            return values
        drop = keras.random.uniform(tf.shape(values), seed=self.seed_generator) < self.rate
        return tf.where(drop, tf.constant(self.replacement), values)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "replacement": self.replacement, "seed": self.seed}


class IdEmbedding(keras.layers.Layer):
    """Hashed id -> embedding; the empty id maps to a zero vector (no id: features only)."""

    def __init__(self, buckets: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.buckets = buckets
        self.dim = dim
        self.hashing = keras.layers.Hashing(num_bins=buckets, mask_value=NO_ID)
        self.embedding = keras.layers.Embedding(buckets, dim)

    def call(self, ids):
        known = tf.cast(tf.not_equal(ids, NO_ID), self.compute_dtype)[..., None]
        return self.embedding(self.hashing(ids)) * known

    def get_config(self):
        return {**super().get_config(), "buckets": self.buckets, "dim": self.dim}


class Normalise(keras.layers.Layer):
    """Lower-case and strip strings, so ``Comedy `` and ``comedy`` hash alike."""

    def call(self, values):
        return tf.strings.lower(tf.strings.strip(values))


class SegmentParts(keras.layers.Layer):
    """``"F|25-34|comedy"`` -> ``[batch, 3]`` strings, missing parts ``any``."""

    def call(self, segments):
        parts = tf.strings.split(tf.strings.lower(tf.strings.strip(segments)), sep="|")
        return parts.to_tensor(default_value=ANY, shape=[None, SEGMENT_PARTS])


def _embed(values, buckets: int, dim: int, name: str):
    hashed = keras.layers.Hashing(num_bins=buckets, name=f"{name}_hash")(values)
    return keras.layers.Embedding(buckets, dim, name=f"{name}_emb")(hashed)


def _head(features, dim: int, name: str):
    hidden = keras.layers.Dense(2 * dim, activation="relu", name=f"{name}_hidden")(features)
    out = keras.layers.Dense(dim, name=f"{name}_out")(hidden)
    return keras.layers.UnitNormalization(name=f"{name}_l2")(out)


def build_query_tower(config: TowerConfig) -> keras.Model:
    """``{user_id, segment}`` -> unit query vector."""
    dim, small = config.embedding_dim, max(4, config.embedding_dim // 4)
    user_id = keras.Input(shape=(), dtype="string", name="user_id")
    segment = keras.Input(shape=(), dtype="string", name="segment")
    ids = FeatureDropout(config.id_dropout, NO_ID, config.seed, name="user_id_dropout")(user_id)
    parts = SegmentParts(name="segment_parts")(segment)
    parts = FeatureDropout(config.segment_part_dropout, ANY, config.seed + 1, name="segment_dropout")(parts)
    gender, band, interest = (parts[:, i] for i in range(SEGMENT_PARTS))
    features = keras.layers.Concatenate(name="query_features")([
        IdEmbedding(config.hash_buckets, dim, name="user_id_emb")(ids),
        _embed(gender, FEATURE_BUCKETS, small, "gender"),
        _embed(band, FEATURE_BUCKETS, small, "age_band"),
        _embed(interest, FEATURE_BUCKETS, dim // 2, "interest"),
    ])
    return keras.Model({"user_id": user_id, "segment": segment}, _head(features, dim, "query"), name="query_tower")


def build_item_tower(config: TowerConfig) -> keras.Model:
    """``{item_id, category}`` -> unit item vector."""
    dim = config.embedding_dim
    item_id = keras.Input(shape=(), dtype="string", name="item_id")
    category = keras.Input(shape=(), dtype="string", name="category")
    ids = FeatureDropout(config.id_dropout, NO_ID, config.seed + 2, name="item_id_dropout")(item_id)
    features = keras.layers.Concatenate(name="item_features")([
        IdEmbedding(config.hash_buckets, dim, name="item_id_emb")(ids),
        _embed(Normalise(name="category_norm")(category), FEATURE_BUCKETS, dim // 2, "category"),
    ])
    return keras.Model({"item_id": item_id, "category": category}, _head(features, dim, "item"), name="item_tower")


# ------------------------------------------------------------------ loss
def in_batch_softmax_loss(query, candidate, log_q, weight, item_ids, temperature: float):
    """Weighted in-batch sampled softmax with logQ correction; the one place the loss is defined.

    Row i's positive is candidate i; every other candidate in the batch is a
    negative. Popular items are over-sampled as negatives, so each logit is
    corrected by ``-log q(item)``; other rows holding the same item (accidental
    hits) are not counted as negatives.
    """
    logits = tf.matmul(query, candidate, transpose_b=True) / temperature
    logits = logits - log_q[tf.newaxis, :]
    item_keys = tf.strings.to_hash_bucket_fast(item_ids, 2**62)  # string compares are ~25x slower
    same_item = tf.equal(item_keys[:, tf.newaxis], item_keys[tf.newaxis, :])
    not_self = tf.logical_not(tf.eye(tf.shape(item_ids)[0], dtype=tf.bool))
    logits = tf.where(tf.logical_and(same_item, not_self), tf.constant(-1e9, logits.dtype), logits)
    labels = tf.range(tf.shape(logits)[0])
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(per_row * weight) / tf.reduce_sum(weight)


# ------------------------------------------------------------------ model
class TwoTower:
    """The two towers plus their config: train, embed, save and load."""

    def __init__(self, config: TowerConfig):
        self.config = config
        keras.utils.set_random_seed(config.seed)  # same data and config -> same model
        self.query_tower = build_query_tower(config)
        self.item_tower = build_item_tower(config)

    # -- training ------------------------------------------------------
    def fit(
        self,
        train: pd.DataFrame,
        users: pd.DataFrame,
        items: pd.DataFrame,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        on_epoch: Callable[[int, float, float], None] | None = None,
        log: Callable[[str], None] = print,
    ) -> list[float]:
        """Train on weighted pairs; returns the mean loss of each epoch.

        ``users`` are user features (:func:`models.data.user_features`), ``items``
        the catalogue (:func:`models.data.catalogue`). ``on_epoch(epoch, loss,
        examples_per_s)`` is called after each epoch.
        """
        if train.empty:
            raise ValueError("no training pairs")
        examples = self._examples(train, users, items)
        n = len(train)
        dataset = (
            tf.data.Dataset.from_tensor_slices(examples)
            .shuffle(n, seed=self.config.seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        optimizer = keras.optimizers.Adagrad(learning_rate=learning_rate)
        variables = self.query_tower.trainable_variables + self.item_tower.trainable_variables
        temperature = self.config.temperature

        @tf.function(reduce_retracing=True)
        def train_step(batch):
            with tf.GradientTape() as tape:
                query = self.query_tower({"user_id": batch["user_id"], "segment": batch["segment"]}, training=True)
                candidate = self.item_tower({"item_id": batch["item_id"], "category": batch["category"]}, training=True)
                loss = in_batch_softmax_loss(query, candidate, batch["log_q"], batch["weight"], batch["item_id"],
                                             temperature)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        losses = []
        for epoch in range(1, epochs + 1):
            started, total, steps = time.perf_counter(), 0.0, 0
            for batch in dataset:
                total += float(train_step(batch))
                steps += 1
            elapsed = time.perf_counter() - started
            losses.append(total / steps)
            rate = n / elapsed if elapsed > 0 else float("inf")
            log(f"epoch {epoch}/{epochs}: loss {losses[-1]:.4f}, {steps} batches, {rate:,.0f} examples/s")
            if on_epoch:
                on_epoch(epoch, losses[-1], rate)
        return losses

    @staticmethod
    def _examples(train: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> dict[str, np.ndarray]:
        categories = dict(zip(items["item_id"], items["category"]))
        log_q = data.log_sampling_probability(train)
        return {
            "user_id": train["user_id"].astype(str).to_numpy(),
            "segment": np.asarray(data.segments_for(train["user_id"], users)),
            "item_id": train["item_id"].astype(str).to_numpy(),
            "category": np.asarray([categories.get(i, ANY) for i in train["item_id"]]),
            "log_q": train["item_id"].map(log_q).to_numpy(dtype=np.float32),
            "weight": train["weight"].to_numpy(dtype=np.float32),
        }

    # -- inference -----------------------------------------------------
    def query_embeddings(self, user_ids, segments, batch_size: int = 8192) -> np.ndarray:
        """Unit query vectors; pass ``""`` as user id for a segment-only (cold-start) query."""
        return self._embed(self.query_tower, {"user_id": user_ids, "segment": segments}, batch_size)

    def item_embeddings(self, item_ids, categories, batch_size: int = 8192) -> np.ndarray:
        """Unit item vectors."""
        return self._embed(self.item_tower, {"item_id": item_ids, "category": categories}, batch_size)

    @staticmethod
    def _embed(tower: keras.Model, inputs: Mapping[str, object], batch_size: int) -> np.ndarray:
        arrays = {name: np.asarray([str(v) for v in values], dtype=object) for name, values in inputs.items()}
        n = len(next(iter(arrays.values())))
        if n == 0:
            return np.zeros((0, tower.output_shape[-1]), dtype=np.float32)
        chunks = [
            tower({k: tf.constant(v[start:start + batch_size]) for k, v in arrays.items()}, training=False).numpy()
            for start in range(0, n, batch_size)
        ]
        return np.concatenate(chunks)

    def evaluate(self, train: pd.DataFrame, holdout: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                 k: int = 10) -> dict[str, float]:
        """Recall@k and NDCG@k on ``holdout``, ranking the whole catalogue minus each user's train items."""
        item_ids = items["item_id"].tolist()
        user_ids = sorted(holdout["user_id"].unique())
        item_vectors = self.item_embeddings(item_ids, items["category"].tolist())
        query_vectors = self.query_embeddings(user_ids, data.segments_for(user_ids, users))
        return rank_holdout(query_vectors @ item_vectors.T, user_ids, item_ids, train, holdout, k)

    # -- persistence ---------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write config and weights to ``directory`` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        for attr, filename in WEIGHTS_FILES.items():
            getattr(self, attr).save_weights(directory / filename)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "TwoTower":
        """Rebuild the towers from ``directory``'s config and load their weights."""
        directory = Path(directory)
        model = cls(TowerConfig(**json.loads((directory / CONFIG_FILE).read_text())))
        for attr, filename in WEIGHTS_FILES.items():
            getattr(model, attr).load_weights(directory / filename)
        return model


def rank_holdout(scores: np.ndarray, user_ids: list[str], item_ids: list[str], train: pd.DataFrame,
                 holdout: pd.DataFrame, k: int = 10) -> dict[str, float]:
    """Ranking metrics of a ``[users, items]`` score matrix, each user's train items excluded."""
    index = {item: n for n, item in enumerate(item_ids)}
    exclude = data.index_lists(train, user_ids, index)
    relevant = data.index_lists(holdout, user_ids, index)
    return data.ranking_metrics(data.top_k(scores, exclude, k), relevant, k)


def popularity_metrics(train: pd.DataFrame, holdout: pd.DataFrame, items: pd.DataFrame,
                       k: int = 10) -> dict[str, float]:
    """The popularity baseline on the same holdout: every user gets the most-weighted train items."""
    item_ids = items["item_id"].tolist()
    user_ids = sorted(holdout["user_id"].unique())
    scores = np.tile(data.popularity_scores(train, item_ids), (len(user_ids), 1))
    return rank_holdout(scores, user_ids, item_ids, train, holdout, k)


# ------------------------------------------------------------------ MLflow flavour
class TwoTowerPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: ``predict`` maps ``user_id, segment`` rows to query vectors.

    ``models.publish`` unwraps it (``unwrap_python_model().model``) to use both towers.
    """

    ARTIFACT = "towers"

    def load_context(self, context):
        self.model = TwoTower.load(context.artifacts[self.ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        user_ids = model_input["user_id"].fillna(NO_ID) if "user_id" in model_input else [NO_ID] * len(model_input)
        return self.model.query_embeddings(list(user_ids), model_input["segment"].tolist())


def load_registered(name: str, version: str) -> TwoTower:
    """The towers of the registered version ``models:/<name>/<version>`` (tracking URI already set)."""
    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().model
