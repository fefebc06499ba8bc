"""The two-tower retrieval model: query tower, item tower, in-batch softmax loss, training, scoring.

Query tower inputs: ``user_id``, ``segment`` (``gender|age band|top interest``,
from :mod:`feature_store.segments`) and ``history`` (the user's most recent
positive item ids, latest first). Item tower inputs: ``item_id`` and
``category`` (one category, or several joined by ``|``, e.g. a film's genres).
Every string is hashed (``keras.layers.Hashing``), so unseen users and items need
no vocabulary; an empty user id, item id or history contributes a zero vector,
which is the cold-start (feature-only) representation. Training drops ids,
histories and segment parts at random so that representation, and the coarser
``any`` segments used as feed fallbacks, are learned too.

Training hashes every string once, then runs a compiled step on integer indices
only: sparse (row-wise) Adagrad on the embedding tables, each user's history
pooled once per batch, and optional uniformly sampled negatives mixed with the
in-batch ones (both logQ-corrected). See ``docs/model.md``.

Importing this module imports TensorFlow (~12 s): only ``models.train``,
``models.publish`` and ``bench.quality`` do, inside their entry points.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import tensorflow as tf

from feature_store.segments import ANY
from models import data
from models.data import rank_holdout

keras = tf.keras

CONFIG_FILE = "config.json"
WEIGHTS_FILES = {"query_tower": "query_tower.weights.h5", "item_tower": "item_tower.weights.h5"}
FEATURE_BUCKETS = 1024  # gender, age band, interest, category: small vocabularies, few collisions
SEGMENT_PARTS = 3
CATEGORY_PARTS = 6  # a category string may list several, "|"-separated (ML-100K films have up to 6 genres)
CATEGORY_SEPARATOR = "|"
NO_ID = ""
HISTORY_SEPARATOR = " "  # the pyfunc's optional ``history`` column, when given as one string
ADAGRAD_INITIAL_ACCUMULATOR = 0.1
ADAGRAD_EPSILON = 1e-7
HISTORY_DENSE_MAX_CELLS_PER_ENTRY = 50  # the history product goes dense at 1 entry or more per 50 cells


@dataclass(frozen=True)
class TowerConfig:
    """Everything needed to rebuild the towers before loading their weights, plus training knobs.

    ``history_length``: how many recent items feed the query tower (0: none).
    ``history_dropout``: share of history items dropped per training step (denoising);
    ``history_pooling``: ``mean`` or ``sqrt`` (sum / sqrt(items)) of their embeddings.
    ``id_dropout``: share of examples trained as cold start (no user id and no
    history; items: no item id). ``user_id_dropout``: share of the other examples
    trained without their user id (history only; 1.0: the user id is never used).
    ``uniform_negatives``: items sampled uniformly from the training catalogue per
    step, added to the in-batch negatives. ``hidden_units``: width of each tower's
    hidden ReLU layer (0: 2 x embedding_dim); ``hidden_layers``: how many;
    ``head_dropout``: dropout on each tower's features and hidden units in training.
    ``optimizer``: ``adagrad`` or ``adam`` (both update embedding rows sparsely);
    ``weight_decay``: L2 coefficient on the summed loss, on the embedding rows a
    step uses and on the dense weights. ``average_epochs``: the trained weights are
    the mean of the last N epochs' (0: the last epoch's). ``log_q_weight``: scale of
    the logQ correction (1: the textbook correction; on ML-100K 2 ranks best, see
    docs/model.md). ``full_softmax_max_items``: when the training catalogue has at
    most this many items, every step scores the whole catalogue (an exact softmax:
    no sampled negatives; the logQ term stays, as a popularity penalty); above it, the
    sampled softmax. Off by default: on ML-100K it did not beat the sampled softmax.
    """

    embedding_dim: int = 32
    hash_buckets: int = 100_000
    temperature: float = 0.05
    id_dropout: float = 0.1
    segment_part_dropout: float = 0.1
    history_length: int = 50
    history_dropout: float = 0.2
    history_pooling: str = "mean"
    user_id_dropout: float = 0.0
    uniform_negatives: int = 0
    hidden_units: int = 0
    hidden_layers: int = 1
    head_dropout: float = 0.0
    optimizer: str = "adagrad"
    weight_decay: float = 0.0
    average_epochs: int = 0
    log_q_weight: float = 1.0
    full_softmax_max_items: int = 0
    seed: int = 7

    @classmethod
    def from_settings(cls, model_settings) -> "TowerConfig":
        """Every field from the settings' model section (``feedloop.settings.ModelSettings``), the shipped
        configuration before tuning (:func:`models.tuning.base_params`)."""
        return cls(**{f.name: getattr(model_settings, f.name) for f in fields(cls)})

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> "TowerConfig":
        """Config from a saved dict; unknown keys (from another version) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# ------------------------------------------------------------------ towers
def lookup(layer: keras.layers.Embedding, ids):
    """``layer(ids)``, as a gather on the table's variable (``ResourceGather``). Measured reason
    (docs/model.md, "Training speed"): Keras' ``Embedding`` reads the whole table first
    (``ReadVariableOp``), and once the sparse optimiser has scattered into a table, TensorFlow
    keeps it in copy-on-read mode, so that read copies all ``hash_buckets`` rows (25 MB at 64
    dimensions) in every step: the user and item tables' copies were ~30% of the step."""
    if not layer.built:  # the towers' first call builds them
        layer.build()
    return tf.gather(_tf_variable(layer.embeddings), ids)


def _masked_mean(vectors, mask):
    """Mean of ``vectors [B, n, d]`` over the entries where ``mask [B, n]``; zero when none."""
    mask = tf.cast(mask, vectors.dtype)
    total = tf.reduce_sum(vectors * mask[..., tf.newaxis], axis=1)
    return total / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)


def pool(total, count, pooling: str):
    """Pooled history from the sum of its ``count`` vectors: ``mean`` or ``sqrt`` (sum / sqrt(count))."""
    count = tf.maximum(count, 1.0)
    return total / (tf.sqrt(count) if pooling == "sqrt" else count)


class Head(keras.layers.Layer):
    """Concatenated features -> hidden ReLU -> linear -> unit vector."""

    def __init__(self, dim: int, hidden: int, layers: int = 1, dropout: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.hidden = [keras.layers.Dense(hidden, activation="relu", name=f"hidden{n or ''}") for n in range(layers)]
        self.out = keras.layers.Dense(dim, name="out")
        self.dropout = keras.layers.Dropout(dropout, seed=seed) if dropout > 0 else None

    def call(self, features, training=False):
        for layer in self.hidden:
            if self.dropout is not None:
                features = self.dropout(features, training=training)
            features = layer(features)
        return tf.math.l2_normalize(self.out(features), axis=-1)


class QueryTower(keras.Model):
    """``{user_id [B], segment [B], history [B, history_length]}`` -> unit query vectors ``[B, dim]``.

    :meth:`call` takes strings; training calls :meth:`indices` once on the whole
    data set and :meth:`encode` on integer indices in every step.
    """

    def __init__(self, config: TowerConfig, **kwargs):
        super().__init__(name="query_tower", **kwargs)
        dim, small = config.embedding_dim, max(4, config.embedding_dim // 4)
        self.history_length = config.history_length
        self.history_pooling = config.history_pooling
        self.id_hash = keras.layers.Hashing(num_bins=config.hash_buckets, mask_value=NO_ID, name="id_hash")
        self.part_hash = keras.layers.Hashing(num_bins=FEATURE_BUCKETS, name="part_hash")
        self.user_embedding = keras.layers.Embedding(config.hash_buckets, dim, name="user_id_emb")
        self.gender_embedding = keras.layers.Embedding(FEATURE_BUCKETS, small, name="gender_emb")
        self.age_band_embedding = keras.layers.Embedding(FEATURE_BUCKETS, small, name="age_band_emb")
        self.interest_embedding = keras.layers.Embedding(FEATURE_BUCKETS, dim // 2, name="interest_emb")
        self.history_embedding = keras.layers.Embedding(config.hash_buckets, dim, name="history_emb")
        self.head = Head(dim, config.hidden_units or 2 * dim, config.hidden_layers, config.head_dropout, config.seed,
                         name="query_head")
        self.any_parts = self.part_hash(tf.constant([ANY] * SEGMENT_PARTS))  # what a dropped segment part becomes
        self(self.empty_inputs(1))  # build

    def empty_inputs(self, n: int) -> dict[str, tf.Tensor]:
        return {"user_id": tf.constant([NO_ID] * n), "segment": tf.constant(["|".join([ANY] * SEGMENT_PARTS)] * n),
                "history": tf.fill([n, max(self.history_length, 1)], NO_ID)}

    def indices(self, inputs):
        """(user bucket [B], segment part buckets [B, 3], history buckets [B, L]); bucket 0 = no id."""
        segments = tf.strings.lower(tf.strings.strip(inputs["segment"]))
        parts = tf.strings.split(segments, sep="|").to_tensor(default_value=ANY, shape=[None, SEGMENT_PARTS])
        return self.id_hash(inputs["user_id"]), self.part_hash(parts), self.id_hash(inputs["history"])

    def pool_history(self, history):
        """Pooled embedding of the known history buckets ``[B, L]`` (zero for an empty history)."""
        known = tf.cast(tf.not_equal(history, 0), self.compute_dtype)
        total = tf.reduce_sum(lookup(self.history_embedding, history) * known[..., tf.newaxis], axis=1)
        return pool(total, tf.reduce_sum(known, axis=1, keepdims=True), self.history_pooling)

    def encode(self, user, parts, history_vector, training=False):
        known = tf.cast(tf.not_equal(user, 0), self.compute_dtype)[:, tf.newaxis]
        features = tf.concat([
            lookup(self.user_embedding, user) * known,
            lookup(self.gender_embedding, parts[:, 0]),
            lookup(self.age_band_embedding, parts[:, 1]),
            lookup(self.interest_embedding, parts[:, 2]),
            history_vector,
        ], axis=-1)
        return self.head(features, training=training)

    def call(self, inputs, training=False):
        user, parts, history = self.indices(inputs)
        return self.encode(user, parts, self.pool_history(history), training)


class ItemTower(keras.Model):
    """``{item_id [B], category [B]}`` -> unit item vectors ``[B, dim]``."""

    def __init__(self, config: TowerConfig, **kwargs):
        super().__init__(name="item_tower", **kwargs)
        dim = config.embedding_dim
        self.id_hash = keras.layers.Hashing(num_bins=config.hash_buckets, mask_value=NO_ID, name="id_hash")
        self.category_hash = keras.layers.Hashing(num_bins=FEATURE_BUCKETS, mask_value=NO_ID, name="category_hash")
        self.item_embedding = keras.layers.Embedding(config.hash_buckets, dim, name="item_id_emb")
        self.category_embedding = keras.layers.Embedding(FEATURE_BUCKETS, dim // 2, name="category_emb")
        self.head = Head(dim, config.hidden_units or 2 * dim, config.hidden_layers, config.head_dropout,
                         config.seed + 1, name="item_head")
        self({"item_id": tf.constant([NO_ID]), "category": tf.constant([ANY])})  # build

    def indices(self, inputs):
        """(item bucket [B], category buckets [B, CATEGORY_PARTS]); bucket 0 = none."""
        categories = tf.strings.lower(tf.strings.strip(inputs["category"]))
        parts = tf.strings.strip(tf.strings.split(categories, sep=CATEGORY_SEPARATOR))
        parts = parts.to_tensor(default_value=NO_ID, shape=[None, CATEGORY_PARTS])
        return self.id_hash(inputs["item_id"]), self.category_hash(parts)

    def encode(self, item, categories, training=False):
        known = tf.cast(tf.not_equal(item, 0), self.compute_dtype)[:, tf.newaxis]
        category = _masked_mean(lookup(self.category_embedding, categories), tf.not_equal(categories, 0))
        return self.head(tf.concat([lookup(self.item_embedding, item) * known, category], axis=-1), training=training)

    def call(self, inputs, training=False):
        return self.encode(*self.indices(inputs), training)


# ------------------------------------------------------------------ loss
def in_batch_softmax_loss(query, candidate, log_q, weight, item_ids, temperature: float, labels=None):
    """Weighted sampled softmax with logQ correction; the one place the loss is defined.

    ``query`` is ``[B, d]``, ``candidate`` ``[C, d]``: the batch's positives and,
    during training, extra uniformly sampled negatives. Row i's positive is
    candidate ``labels[i]``; every other candidate is a negative. Candidates were
    sampled with popular items more often, so each logit is corrected by
    ``-log_q`` of its column (the log of how likely that item was to be a
    candidate).

    ``labels=None``: candidate i is row i's positive, and the same item may appear
    in several columns; those other columns (accidental hits) are not counted as
    row i's negatives. With ``labels``, the candidates must be distinct items
    (training deduplicates them), so there are no accidental hits to mask.
    ``item_ids`` (``[C]``, strings or integer keys) identify the candidates' items.
    """
    if labels is not None:
        # temperature and correction folded into one matmul: [q / T, 1] . [c, -log q]
        ones = tf.ones_like(query[:, :1])
        logits = tf.matmul(tf.concat([query / temperature, ones], axis=1),
                           tf.concat([candidate, -log_q[:, tf.newaxis]], axis=1), transpose_b=True)
        return _weighted_cross_entropy(logits, tf.cast(labels, tf.int32), weight)
    logits = tf.matmul(query, candidate, transpose_b=True) / temperature
    logits = logits - log_q[tf.newaxis, :]
    if item_ids.dtype == tf.string:
        item_ids = tf.strings.to_hash_bucket_fast(item_ids, 2**62)  # string compares are ~25x slower
    rows, columns = tf.shape(query)[0], tf.shape(candidate)[0]
    same_item = tf.equal(item_ids[:rows, tf.newaxis], item_ids[tf.newaxis, :])
    not_self = tf.logical_not(tf.eye(rows, columns, dtype=tf.bool))
    logits = tf.where(tf.logical_and(same_item, not_self), tf.constant(-1e9, logits.dtype), logits)
    return _weighted_cross_entropy(logits, tf.range(rows), weight)


def _weighted_cross_entropy(logits, labels, weight):
    """The weighted mean of each row's softmax cross-entropy, as log-sum-exp minus the label's logit:
    the same value and gradient as ``tf.nn.sparse_softmax_cross_entropy_with_logits``, which ran on one
    thread at about half the speed here ([1,024, 1,400] logits, forward and backward: 5.7 against 2.7 ms)."""
    per_row = tf.reduce_logsumexp(logits, axis=1) - tf.gather(logits, labels, batch_dims=1)
    return tf.reduce_sum(per_row * weight) / tf.reduce_sum(weight)


def sampling_log_q(item_counts: np.ndarray, batch_size: int, uniform_negatives: int) -> np.ndarray:
    """log P(item is among a training step's candidates), the logQ correction of each item.

    A step's candidates are the distinct items of ``batch_size`` positives, drawn
    with q(item) = count / total, plus ``uniform_negatives`` items drawn uniformly:
    P = 1 - (1 - q)^batch_size * (1 - 1/items)^uniform_negatives. For rare items
    this is about ``batch_size * q``: the in-batch logQ correction up to a constant.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    q = counts / counts.sum()
    log_missed = batch_size * np.log1p(-np.minimum(q, 1 - 1e-12)) + uniform_negatives * np.log1p(-1 / max(len(q), 2))
    return np.log(np.maximum(-np.expm1(log_missed), 1e-12)).astype(np.float32)


# ------------------------------------------------------------------ optimiser
def _tf_variable(variable) -> tf.Variable:
    """The ``tf.Variable`` behind a Keras variable (the raw training ops need its handle)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _row_gradient(grad: tf.IndexedSlices, var, weight_decay: float):
    """(distinct rows, their summed gradient + weight_decay * row): L2 only on the rows in use."""
    rows, position = tf.unique(grad.indices)
    values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(rows)[0])
    if weight_decay:
        values += weight_decay * tf.gather(var, rows)
    return rows, values


class SparseAdagrad:
    """Adagrad that updates only the rows an ``IndexedSlices`` gradient touches.

    Keras' optimisers densify embedding gradients: every step would rewrite all
    ``hash_buckets`` rows of every table and its accumulator. Same update rule as
    ``keras.optimizers.Adagrad`` (initial accumulator 0.1, epsilon 1e-7).
    """

    def __init__(self, variables, learning_rate: float, weight_decay: float = 0.0):
        self.variables = [_tf_variable(v) for v in variables]
        self.learning_rate = tf.Variable(float(learning_rate), trainable=False, dtype=tf.float32)
        self.weight_decay = weight_decay
        self.accumulators = [
            tf.Variable(tf.fill(v.shape, ADAGRAD_INITIAL_ACCUMULATOR), trainable=False) for v in self.variables
        ]

    def apply(self, gradients) -> None:
        lr = self.learning_rate
        for grad, var, acc in zip(gradients, self.variables, self.accumulators):
            if grad is None:
                continue
            if isinstance(grad, tf.IndexedSlices):
                rows, values = _row_gradient(grad, var, self.weight_decay)
                tf.raw_ops.ResourceSparseApplyAdagradV2(var=var.handle, accum=acc.handle, lr=lr,
                                                       epsilon=ADAGRAD_EPSILON, grad=values, indices=rows)
            else:
                tf.raw_ops.ResourceApplyAdagradV2(var=var.handle, accum=acc.handle, lr=lr, epsilon=ADAGRAD_EPSILON,
                                                  grad=grad + self.weight_decay * var if self.weight_decay else grad)


class SparseAdam:
    """Lazy Adam: moments and weights change only in the rows a sparse gradient touches.

    Dense gradients (the towers' dense layers) get plain Adam. The bias correction
    uses the global step, as ``tfa.optimizers.LazyAdam`` does.
    """

    def __init__(self, variables, learning_rate: float, weight_decay: float = 0.0, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7):
        self.variables = [_tf_variable(v) for v in variables]
        self.weight_decay = weight_decay
        self.learning_rate = tf.Variable(float(learning_rate), trainable=False, dtype=tf.float32)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.iterations = tf.Variable(0.0, trainable=False)
        self.moments = [(tf.Variable(tf.zeros(v.shape), trainable=False), tf.Variable(tf.zeros(v.shape),
                         trainable=False)) for v in self.variables]

    def apply(self, gradients) -> None:
        step = self.iterations.assign_add(1.0)
        b1, b2 = self.beta_1, self.beta_2
        b1_power, b2_power = tf.pow(b1, step), tf.pow(b2, step)
        lr = self.learning_rate * tf.sqrt(1.0 - b2_power) / (1.0 - b1_power)
        for grad, var, (m, v) in zip(gradients, self.variables, self.moments):
            if grad is None:
                continue
            if isinstance(grad, tf.IndexedSlices):
                rows, values = _row_gradient(grad, var, self.weight_decay)
                m_rows = b1 * tf.gather(m, rows) + (1.0 - b1) * values
                v_rows = b2 * tf.gather(v, rows) + (1.0 - b2) * tf.square(values)
                m.scatter_update(tf.IndexedSlices(m_rows, rows))
                v.scatter_update(tf.IndexedSlices(v_rows, rows))
                var.scatter_sub(tf.IndexedSlices(lr * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))
            else:
                tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=b1_power,
                                             beta2_power=b2_power, lr=self.learning_rate, beta1=b1, beta2=b2,
                                             epsilon=self.epsilon,
                                             grad=grad + self.weight_decay * var if self.weight_decay else grad)


OPTIMIZERS = {"adagrad": SparseAdagrad, "adam": SparseAdam}


# ------------------------------------------------------------------ model
def _batch_histories(t, user_rows, position, drop):
    """Each user's history once per batch (traced inside the training step): the kept (not dropped)
    items, less the example's own item. ``drop(shape)`` draws the dropped entries."""
    batch_users, user_slot = tf.unique(user_rows)
    starts = tf.gather(t["history_splits"], batch_users)
    ranges = tf.ragged.range(starts, tf.gather(t["history_splits"], batch_users + 1))
    history = tf.gather(t["history_values"], ranges.flat_values)
    history_user = tf.cast(ranges.value_rowids(), tf.int32)
    kept = tf.logical_not(drop(tf.shape(history)))
    own = tf.gather(ranges.row_splits, user_slot) + tf.cast(tf.maximum(position, 0), tf.int64)
    own_kept = tf.logical_and(position >= 0, tf.gather(tf.concat([kept, [False]], 0), own))  # safe when empty
    own_kept = tf.cast(own_kept, tf.float32)[:, tf.newaxis]
    kept_f = tf.cast(kept, tf.float32)[:, tf.newaxis]
    slots = tf.shape(batch_users)[0]
    user_count = tf.math.unsorted_segment_sum(kept_f, history_user, slots)
    return user_slot, history, history_user, kept_f, own_kept, slots, user_count


def _history_sums(indices, values, shape, item_vectors):
    """``[users, d]``: the ``[users, used]`` adjacency (``indices``, ``values``, ``shape``; duplicates add up)
    times ``item_vectors [used, d]``, and its gradient the transposed product.

    Dense when there is an entry (kept or dropped) per ``HISTORY_DENSE_MAX_CELLS_PER_ENTRY`` cells or more
    (ML-100K's batches: ~1 per 20), else sparse.
    Measured here (a 30-step median, forward and backward, d 64): 640 users x 1,682 items with
    55,000 entries took 4.9 ms sparse and 1.0 ms dense; 900 x 10,000 with 40,000 entries 4.2 ms sparse and
    13.0 ms dense; they meet near 1%. TensorFlow's sparse product runs on one thread, one entry at a time.
    """
    cells = tf.cast(shape[0] * shape[1], tf.float32)
    dense = tf.cast(tf.shape(values)[0], tf.float32) * HISTORY_DENSE_MAX_CELLS_PER_ENTRY >= cells

    def dense_product():  # built by a segment sum on the flat cell index: ~2.5x faster than scatter_nd here
        cell = indices[:, 0] * shape[1] + indices[:, 1]
        return tf.matmul(tf.reshape(tf.math.unsorted_segment_sum(values, cell, shape[0] * shape[1]), shape),
                         item_vectors)

    return tf.cond(dense, dense_product,
                   lambda: tf.sparse.sparse_dense_matmul(tf.SparseTensor(indices, values, shape), item_vectors))


class TwoTower:
    """The two towers plus their config: train, embed, save and load."""

    def __init__(self, config: TowerConfig):
        self.config = config
        keras.utils.set_random_seed(config.seed)  # same data and config -> same model
        self.query_tower = QueryTower(config)
        self.item_tower = ItemTower(config)
        self._optimizer = None  # created by the first fit, kept by the next ones (the online learner's)
        self._steps: dict[tuple[bool, bool], Callable] = {}  # the compiled step, per softmax kind and scope

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
        final_learning_rate: float | None = None,
        embeddings_only: bool = False,
        average_epochs: int | None = None,
    ) -> list[float]:
        """Train on weighted pairs; returns the mean loss of each epoch.

        ``train``: ``user_id, item_id, weight`` and optionally ``ts`` (orders the
        histories: each user's ``history_length`` latest items, minus the example's
        own item). ``users`` are user features (:func:`models.data.user_features`),
        ``items`` the catalogue (:func:`models.data.catalogue`). ``on_epoch(epoch,
        loss, examples_per_s)`` is called after each epoch. The learning rate
        decays linearly to ``final_learning_rate`` over the epochs (default: constant).
        ``embeddings_only``: train the embedding rows and keep the towers' dense
        layers as they are (the online learner's fine-tuning, see :mod:`models.online`).
        ``average_epochs``: overrides the config's (the online learner's passes: 0).
        """
        if train.empty:
            raise ValueError("no training pairs")
        cfg = self.config
        tensors = self._training_tensors(train, users, items, batch_size)
        n = len(train)
        columns = tensors.pop("pairs")
        shuffle = np.random.default_rng(cfg.seed)

        def batches():
            """The pairs in a new random order each epoch, as whole batches. A numpy permutation
            and slices cost a fraction of tf.data's element-wise shuffle (which alone ran at
            ~190k examples/s here, on the cores the step needs)."""
            order = shuffle.permutation(n)
            shuffled = {name: values[order] for name, values in columns.items()}
            for start in range(0, n, batch_size):
                yield {name: tf.constant(values[start:start + batch_size]) for name, values in shuffled.items()}

        tables = {name: tf.convert_to_tensor(value) for name, value in tensors.items()}
        step = self._train_step(int(tables["item_bucket"].shape[0]) <= cfg.full_softmax_max_items, embeddings_only)
        schedule = np.linspace(learning_rate, learning_rate if final_learning_rate is None else final_learning_rate,
                               max(epochs, 1))
        towers = (self.query_tower, self.item_tower)
        average = cfg.average_epochs if average_epochs is None else average_epochs
        average_from = epochs - min(average, epochs) + 1 if average > 0 else epochs + 1
        averaged: list[list[np.ndarray]] | None = None
        losses = []
        for epoch in range(1, epochs + 1):
            self._optimizer.learning_rate.assign(float(schedule[epoch - 1]))
            started, total, steps = time.perf_counter(), tf.constant(0.0), 0
            for batch in batches():
                total += step(batch, tables)  # no sync with the device: the loss is read once per epoch
                steps += 1
            losses.append(float(total) / steps)
            elapsed = time.perf_counter() - started
            rate = n / elapsed if elapsed > 0 else float("inf")
            log(f"epoch {epoch}/{epochs}: loss {losses[-1]:.4f}, {steps} batches, {rate:,.0f} examples/s")
            if epoch >= average_from:  # a running mean of the last epochs' weights
                weights = [tower.get_weights() for tower in towers]
                if averaged is None:
                    averaged = weights
                else:
                    share = 1.0 / (epoch - average_from + 1)
                    averaged = [[a + share * (w - a) for a, w in zip(aa, ww)] for aa, ww in zip(averaged, weights)]
            if on_epoch:
                on_epoch(epoch, losses[-1], rate)
        if averaged is not None and epochs > average_from:
            for tower, weights in zip(towers, averaged):
                tower.set_weights(weights)
            log(f"weights: the mean of epochs {average_from}..{epochs}")
        return losses

    def _training_tensors(self, train: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                          batch_size: int) -> dict:
        """Hash every string once: per-user and per-item index tables, and the pairs as integer rows."""
        cfg = self.config
        user_ids = pd.Index(pd.unique(train["user_id"].astype(str)))
        item_ids = pd.Index(pd.unique(train["item_id"].astype(str)))
        categories = dict(zip(items["item_id"].astype(str), items["category"]))
        user_rows = user_ids.get_indexer(train["user_id"].astype(str))
        item_rows = item_ids.get_indexer(train["item_id"].astype(str))

        histories = data.recent_histories(train, list(user_ids), cfg.history_length)
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        history_splits = np.concatenate([[0], np.cumsum(lengths)])
        history_values = item_ids.get_indexer([i for h in histories for i in h]).astype(np.int32)
        # where each pair's own item sits in its user's history (-1: not there), to leave it out
        owner = np.repeat(np.arange(len(user_ids)), lengths)
        slots = pd.DataFrame({"u": owner, "i": history_values, "p": np.arange(len(owner)) - history_splits[owner]})
        history_position = (pd.DataFrame({"u": user_rows, "i": item_rows}).merge(slots, on=["u", "i"], how="left")
                            ["p"].fillna(-1).to_numpy(dtype=np.int32))

        user, parts, _ = self.query_tower.indices({
            "user_id": tf.constant(user_ids.to_numpy(dtype=str)),
            "segment": tf.constant(data.segments_for(user_ids, users)),
            "history": tf.fill([1, 1], NO_ID),
        })
        item, category = self.item_tower.indices({
            "item_id": tf.constant(item_ids.to_numpy(dtype=str)),
            "category": tf.constant([categories.get(i, ANY) for i in item_ids]),
        })
        counts = np.bincount(item_rows, minlength=len(item_ids))
        return {
            "pairs": {
                "user_row": user_rows.astype(np.int32),
                "item_row": item_rows.astype(np.int32),
                "history_position": history_position,
                "weight": train["weight"].to_numpy(dtype=np.float32),
            },
            "user_bucket": user, "user_parts": parts,
            "history_values": tf.constant(history_values), "history_splits": tf.constant(history_splits),
            "item_bucket": item, "item_category": category,
            "log_q": tf.constant(sampling_log_q(counts, batch_size, cfg.uniform_negatives)),
        }

    def _train_step(self, full_softmax: bool, embeddings_only: bool = False):
        """The compiled training step ``step(batch, tables)`` on integer batches, built once per model,
        softmax kind and scope, with one optimiser for all: the online learner's small fits (a few steps
        each) do not trace again nor allocate a new optimiser's full-size slots."""
        key = (full_softmax, embeddings_only)
        if key in self._steps:
            return self._steps[key]
        cfg = self.config
        query_tower, item_tower = self.query_tower, self.item_tower
        variables = query_tower.trainable_variables + item_tower.trainable_variables
        tables = {id(layer.embeddings) for tower in (query_tower, item_tower) for layer in tower.layers
                  if isinstance(layer, keras.layers.Embedding)}
        trained = [n for n, v in enumerate(variables) if not embeddings_only or id(v) in tables]
        if self._optimizer is None:
            self._optimizer = OPTIMIZERS[cfg.optimizer](variables, 0.0, cfg.weight_decay)
            self._seed = tf.random.Generator.from_seed(cfg.seed)
        optimizer, seed = self._optimizer, self._seed
        history_table = query_tower.history_embedding.embeddings
        any_parts = query_tower.any_parts

        def dropped(shape, rate):
            return seed.uniform(shape) < rate

        @tf.function(reduce_retracing=True)
        def step(batch, t):
            n_items = tf.shape(t["item_bucket"])[0]
            user_rows, item_rows, weight = batch["user_row"], batch["item_row"], batch["weight"]
            rows = tf.shape(user_rows)[0]
            # cold-start examples: no user id, no history (the item side: no item id)
            cold = dropped([rows], cfg.id_dropout)
            no_user_id = tf.logical_or(cold, dropped([rows], cfg.user_id_dropout))
            user = tf.where(no_user_id, tf.zeros_like(user_rows, dtype=tf.int64), tf.gather(t["user_bucket"], user_rows))
            parts = tf.gather(t["user_parts"], user_rows)
            parts = tf.where(dropped(tf.shape(parts), cfg.segment_part_dropout), any_parts[tf.newaxis, :], parts)
            if full_softmax:  # every item is a candidate
                candidates, labels = tf.range(n_items, dtype=tf.int64), tf.cast(item_rows, tf.int32)
            else:  # the batch's distinct items plus uniform negatives, each item once
                negatives = seed.uniform_full_int([cfg.uniform_negatives], dtype=tf.int64) % tf.cast(n_items, tf.int64)
                candidates, candidate_slot = tf.unique(tf.concat([tf.cast(item_rows, tf.int64), negatives], axis=0))
                labels = candidate_slot[:rows]
            # logQ: the sampling correction of the sampled softmax; in the exact one, a popularity penalty
            log_q = tf.gather(t["log_q"], candidates) * cfg.log_q_weight
            item = tf.gather(t["item_bucket"], candidates)
            item = tf.where(dropped(tf.shape(item), cfg.id_dropout), tf.zeros_like(item), item)
            category = tf.gather(t["item_category"], candidates)
            user_slot, history, history_user, kept_f, own_kept, slots, user_count = _batch_histories(
                t, user_rows, batch["history_position"], lambda shape: dropped(shape, cfg.history_dropout))
            # the history-table rows this step reads: its histories' items and its positives, each once
            n_history = tf.shape(history)[0]
            used, used_slot = tf.unique(tf.concat([history, item_rows], axis=0))
            with tf.GradientTape() as tape:
                # [used, d]: one sparse gradient, on the rows used only (not the whole catalogue)
                item_vectors = tf.gather(history_table.value, tf.gather(t["item_bucket"], used))
                # each user's kept history summed as one [users, used] x [used, d] product, dense or sparse
                # (and its gradient as the transposed product): no [history, d] gather, mask and segment sum
                user_sum = _history_sums(
                    tf.stack([tf.cast(history_user, tf.int64), tf.cast(used_slot[:n_history], tf.int64)], axis=1),
                    kept_f[:, 0], tf.cast(tf.stack([slots, tf.shape(used)[0]]), tf.int64), item_vectors)
                own_vectors = tf.gather(item_vectors, used_slot[n_history:])
                total = tf.gather(user_sum, user_slot) - own_kept * own_vectors
                count = tf.gather(user_count, user_slot) - own_kept
                history_vector = pool(total, count, cfg.history_pooling) * (1.0 - tf.cast(cold, tf.float32))[:, tf.newaxis]
                if not cfg.history_length:
                    history_vector = tf.zeros_like(history_vector)
                query = query_tower.encode(user, parts, history_vector, training=True)
                candidate = item_tower.encode(item, category, training=True)
                loss = in_batch_softmax_loss(query, candidate, log_q, weight, candidates, cfg.temperature, labels)
                # the summed loss (as TFRS' retrieval task): a row's gradient does not shrink as batches grow
                summed = loss * tf.reduce_sum(weight)
            gradients = [None] * len(variables)  # None: not trained (the optimiser skips it)
            for n, gradient in zip(trained, tape.gradient(summed, [variables[n] for n in trained])):
                gradients[n] = gradient
            optimizer.apply(gradients)
            return loss

        self._steps[key] = step
        return step

    # -- inference -----------------------------------------------------
    def query_embeddings(self, user_ids, segments, histories: Sequence[Sequence[str]] | None = None,
                         batch_size: int = 8192) -> np.ndarray:
        """Unit query vectors; pass ``""`` as user id for a segment-only (cold-start) query.

        ``histories``: each user's recent positive item ids, latest first
        (:func:`models.data.recent_histories`); None: no history.
        """
        user_ids, segments = [str(u) for u in user_ids], [str(s) for s in segments]
        length = max(self.config.history_length, 1)
        history = np.full((len(user_ids), length), NO_ID, dtype=object)
        if histories is not None and self.config.history_length > 0:
            for row, items in enumerate(histories):
                items = [str(i) for i in list(items)[:length]]
                history[row, :len(items)] = items
        return self._embed(self.query_tower, {"user_id": np.asarray(user_ids, dtype=object),
                                              "segment": np.asarray(segments, dtype=object),
                                              "history": history}, batch_size)

    def item_embeddings(self, item_ids, categories, batch_size: int = 8192) -> np.ndarray:
        """Unit item vectors."""
        return self._embed(self.item_tower, {"item_id": np.asarray([str(i) for i in item_ids], dtype=object),
                                             "category": np.asarray([str(c) for c in categories], dtype=object)},
                           batch_size)

    def _embed(self, tower: keras.Model, arrays: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
        n = len(next(iter(arrays.values())))
        if n == 0:
            return np.zeros((0, self.config.embedding_dim), dtype=np.float32)
        chunks = [
            tower({k: tf.constant(v[start:start + batch_size].astype(str)) for k, v in arrays.items()},
                  training=False).numpy()
            for start in range(0, n, batch_size)
        ]
        return np.concatenate(chunks)

    def user_histories(self, pairs: pd.DataFrame, user_ids: Sequence[str]) -> list[list[str]]:
        """The ``history`` input for ``user_ids``: their latest ``history_length`` items in ``pairs``."""
        return data.recent_histories(pairs, user_ids, self.config.history_length)

    def scores(self, train: pd.DataFrame, user_ids: Sequence[str], users: pd.DataFrame,
               items: pd.DataFrame) -> np.ndarray:
        """``[users, items]`` scores, each user's history taken from ``train``."""
        item_vectors = self.item_embeddings(items["item_id"].tolist(), items["category"].tolist())
        query_vectors = self.query_embeddings(user_ids, data.segments_for(user_ids, users),
                                              self.user_histories(train, user_ids))
        return query_vectors @ item_vectors.T

    def evaluate(self, train: pd.DataFrame, holdout: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                 k: int = 10, recall_ks: Sequence[int] = ()) -> dict[str, float]:
        """Ranking metrics at k on ``holdout``, ranking the whole catalogue minus each user's train items
        (and ``recall{c}`` for each of ``recall_ks``, from the same scores: :func:`models.data.rank_holdout`)."""
        user_ids = sorted(holdout["user_id"].unique())
        scores = self.scores(train, user_ids, users, items)
        return rank_holdout(scores, user_ids, items["item_id"].tolist(), train, holdout, k, recall_ks)

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
        model = cls(TowerConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text())))
        for attr, filename in WEIGHTS_FILES.items():
            getattr(model, attr).load_weights(directory / filename)
        return model


# ------------------------------------------------------------------ MLflow flavour
class TwoTowerPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: ``predict`` maps ``user_id, segment[, history]`` rows to query vectors.

    ``history`` (optional) is a list of item ids or one space-separated string,
    latest first. Logged as code (:mod:`models.pyfunc_model`), never pickled;
    feedloop loads versions with :func:`load_registered`, not through pyfunc.
    """

    ARTIFACT = "towers"

    def load_context(self, context):
        self.model = TwoTower.load(context.artifacts[self.ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        user_ids = model_input["user_id"].fillna(NO_ID) if "user_id" in model_input else [NO_ID] * len(model_input)
        histories = None
        if "history" in model_input:
            histories = [
                [] if h is None or (isinstance(h, float) and np.isnan(h))
                else [i for i in h.split(HISTORY_SEPARATOR) if i] if isinstance(h, str) else list(h)
                for h in model_input["history"]
            ]
        return self.model.query_embeddings(list(user_ids), model_input["segment"].tolist(), histories)


class UnsafeModel(ValueError):
    """A registered version whose artifacts could run code when loaded (a pickle)."""


PICKLE_SUFFIXES = (".pkl", ".pickle", ".cloudpickle", ".joblib", ".dill")


def pickle_payloads(directory: str | Path) -> list[str]:
    """Files under ``directory`` that are pickles: by name, or by a pickle's first bytes (protocol 2-5)."""
    root = Path(directory)
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            head = f.read(2)
        if path.suffix.lower() in PICKLE_SUFFIXES or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
            found.append(str(path.relative_to(root)))
    return found


def load_registered(name: str, version: str) -> TwoTower:
    """The towers of the registered version ``models:/<name>/<version>`` (tracking URI already set), rebuilt
    from their JSON config and weights: nothing in the artifacts is unpickled or run. A version whose
    artifacts carry a pickle payload is refused (:class:`UnsafeModel`)."""
    import tempfile

    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="feedloop-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        pickles = pickle_payloads(local)
        if pickles:
            raise UnsafeModel(f"{name} v{version} is refused: its artifacts carry a pickle payload "
                              f"({', '.join(pickles)}), which could run code when loaded. feedloop registers "
                              f"towers as config.json and .h5 weights; retrain, or register it with `feedloop train`")
        towers = local / "artifacts" / TwoTowerPyfunc.ARTIFACT
        if not (towers / CONFIG_FILE).is_file():
            raise UnsafeModel(f"{name} v{version} is not a feedloop two-tower version: no "
                              f"artifacts/{TwoTowerPyfunc.ARTIFACT}/{CONFIG_FILE} in its artifacts")
        return TwoTower.load(towers)
