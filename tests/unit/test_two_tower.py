"""The two-tower model learns a clear preference structure, handles cold start, saves and loads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from models import baselines, data

import tensorflow as tf  # noqa: E402  (a locked dependency: a broken install fails, never skips)

from models.two_tower import (  # noqa: E402
    SparseAdagrad,
    SparseAdam,
    TowerConfig,
    TwoTower,
    in_batch_softmax_loss,
    sampling_log_q,
)

CATEGORIES = ("comedy", "drama", "sports", "music", "tech", "food")
N_USERS, N_ITEMS, N_EVENTS = 240, 300, 6000


def synthetic(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Users mostly engage with half the items of their top interest's category."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [f"i{n}" for n in range(N_ITEMS)],
                          "category": [CATEGORIES[n % len(CATEGORIES)] for n in range(N_ITEMS)]})
    interest = rng.integers(0, len(CATEGORIES), N_USERS)
    users = pd.DataFrame({
        "user_id": [f"u{n}" for n in range(N_USERS)],
        "gender": rng.choice(["F", "M"], N_USERS),
        "age": rng.integers(18, 70, N_USERS),
        "interests": [[CATEGORIES[i], CATEGORIES[(i + 1) % len(CATEGORIES)]] for i in interest],
    })
    half = N_ITEMS // len(CATEGORIES) // 2
    liked = {c: np.arange(n, N_ITEMS, len(CATEGORIES))[:half] for n, c in enumerate(CATEGORIES)}
    who = rng.integers(0, N_USERS, N_EVENTS)
    on_topic = rng.random(N_EVENTS) < 0.85
    favourite = [rng.choice(liked[CATEGORIES[interest[u]]]) for u in who]
    item = np.where(on_topic, favourite, rng.integers(0, N_ITEMS, N_EVENTS))
    types = rng.choice(["view", "click", "dwell", "cart", "like", "purchase"], N_EVENTS, p=[.4, .2, .2, .1, .07, .03])
    events = pd.DataFrame({
        "user_id": users["user_id"].to_numpy()[who],
        "item_id": items["item_id"].to_numpy()[item],
        "event_type": types,
        "ts": 1_767_225_600_000 + np.sort(rng.integers(0, 30 * 86_400_000, N_EVENTS)),
        "dwell_ms": np.where(types == "dwell", 20_000, None),
    })
    return events, users, items


SMALL = TowerConfig(embedding_dim=16, hash_buckets=2_000, temperature=0.1, seed=3)


@pytest.fixture(scope="module")
def trained():
    tf.keras.utils.set_random_seed(3)
    events, users, items = synthetic()
    pairs = data.positive_pairs(events)
    train, holdout = data.time_split(pairs)
    user_features, catalogue = data.user_features(users), data.catalogue(items, pairs)
    model = TwoTower(SMALL)
    losses = model.fit(train, user_features, catalogue, epochs=8, batch_size=256, learning_rate=0.1, log=lambda _: None)
    return model, losses, train, holdout, user_features, catalogue


def test_loss_decreases(trained):
    _, losses, *_ = trained
    assert losses[-1] < 0.8 * losses[0], losses


def test_recall_beats_random_and_popularity(trained):
    model, _, train, holdout, user_features, catalogue = trained
    metrics = model.evaluate(train, holdout, user_features, catalogue, k=10)
    popularity = baselines.popularity(train, holdout, catalogue["item_id"].tolist())
    random_recall = 10 / len(catalogue)
    assert metrics["eval_users"] > 100
    assert metrics["recall10"] > 3 * random_recall, metrics
    assert metrics["ndcg10"] > popularity["ndcg10"], (metrics, popularity)


def test_cold_start_segment_query_prefers_its_interest(trained):
    model, *_, catalogue = trained
    # no user id (never seen, or a segment feed): the segment features alone decide
    query = model.query_embeddings(["", "brand-new-user"], ["F|25-34|sports", "M|35-44|sports"])
    items = model.item_embeddings(catalogue["item_id"].tolist(), catalogue["category"].tolist())
    top = data.top_k(query @ items.T, None, 10)
    for row in top:
        share = (catalogue["category"].to_numpy()[row] == "sports").mean()
        assert share >= 0.7, catalogue.iloc[row]


def test_history_alone_steers_a_new_users_query(trained):
    model, *_, catalogue = trained
    # a user the model never saw, no segment information: only the recent history says "sports"
    sports = catalogue.loc[catalogue["category"] == "sports", "item_id"].tolist()
    liked_sports = sports[: len(sports) // 2][:8]  # the liked half of each category, as in synthetic()
    query = model.query_embeddings(["new-user"], ["any|any|any"], [liked_sports])
    without = model.query_embeddings(["new-user"], ["any|any|any"])
    assert not np.allclose(query, without)
    items = model.item_embeddings(catalogue["item_id"].tolist(), catalogue["category"].tolist())
    top = data.top_k(query @ items.T, [catalogue.index[catalogue["item_id"].isin(liked_sports)].to_numpy()], 10)[0]
    assert (catalogue["category"].to_numpy()[top] == "sports").mean() >= 0.7, catalogue.iloc[top]


def test_outputs_are_unit_vectors_and_round_trip(trained, tmp_path):
    model, *_ = trained
    histories = [["i1", "i7"], []]
    query = model.query_embeddings(["u1", ""], ["F|25-34|comedy", "any|any|any"], histories)
    np.testing.assert_allclose(np.linalg.norm(query, axis=1), 1.0, rtol=1e-5)
    loaded = TwoTower.load(model.save(tmp_path / "towers"))
    assert loaded.config == model.config
    np.testing.assert_allclose(loaded.query_embeddings(["u1", ""], ["F|25-34|comedy", "any|any|any"], histories),
                               query, atol=1e-6)
    np.testing.assert_allclose(loaded.item_embeddings(["i1"], ["drama"]), model.item_embeddings(["i1"], ["drama"]),
                               atol=1e-6)


def test_loss_prefers_aligned_pairs_and_ignores_accidental_hits():
    eye = tf.eye(3)
    ids = tf.constant(["a", "b", "c"])
    zero_q, unit_w = tf.zeros(3), tf.ones(3)
    aligned = in_batch_softmax_loss(eye, eye, zero_q, unit_w, ids, 0.1)
    shuffled = in_batch_softmax_loss(eye, tf.roll(eye, 1, axis=0), zero_q, unit_w, ids, 0.1)
    assert float(aligned) < 0.01 < float(shuffled)
    # the same item twice in a batch is not its own negative: loss as if the batch held it once
    dup = tf.constant([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    with_dup = in_batch_softmax_loss(dup, dup, tf.zeros(3), unit_w, tf.constant(["a", "a", "b"]), 0.1)
    assert float(with_dup) < 0.01


def test_logq_correction_discounts_popular_candidates():
    query = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    candidate = tf.constant([[1.0, 0.0], [0.7071, 0.7071]])
    ids = tf.constant(["popular", "niche"])
    log_q = tf.math.log([0.9, 0.1])
    row0, row1 = tf.constant([1.0, 0.0]), tf.constant([0.0, 1.0])

    def loss(log_q, weight):
        return float(in_batch_softmax_loss(query, candidate, log_q, weight, ids, 1.0))

    # a popular positive earns less credit; a niche positive earns more
    assert loss(log_q, row0) > loss(tf.zeros(2), row0)
    assert loss(log_q, row1) < loss(tf.zeros(2), row1)
    # weights select rows: row 0 alone is plain softmax cross-entropy
    expected = -np.log(np.exp(1.0) / (np.exp(1.0) + np.exp(0.7071)))
    assert loss(tf.zeros(2), row0) == pytest.approx(expected, rel=1e-4)


def test_distinct_candidates_with_labels_match_the_in_batch_form():
    rng = np.random.default_rng(0)
    query = tf.math.l2_normalize(tf.constant(rng.normal(size=(4, 3)), tf.float32), -1)
    candidate = tf.math.l2_normalize(tf.constant(rng.normal(size=(4, 3)), tf.float32), -1)
    log_q = tf.constant([-1.0, -2.0, -0.5, -3.0])
    weight = tf.constant([1.0, 2.0, 1.0, 0.5])
    ids = tf.constant([10, 11, 12, 13], tf.int64)
    diagonal = in_batch_softmax_loss(query, candidate, log_q, weight, ids, 0.1)
    # the same candidates in another order, each row pointing at its positive
    order = [2, 0, 3, 1]
    labels = tf.constant([order.index(i) for i in range(4)])
    shuffled = in_batch_softmax_loss(query, tf.gather(candidate, order), tf.gather(log_q, order), weight,
                                     tf.gather(ids, order), 0.1, labels)
    assert float(shuffled) == pytest.approx(float(diagonal), rel=1e-5)


def test_sampling_log_q_is_the_inclusion_probability():
    counts = np.array([1000, 10, 1, 1])
    log_q = sampling_log_q(counts, batch_size=100, uniform_negatives=0)
    q = counts / counts.sum()
    np.testing.assert_allclose(np.exp(log_q), 1 - (1 - q) ** 100, rtol=1e-5)
    assert np.exp(log_q[0]) == pytest.approx(1.0, abs=1e-6)  # always in a batch of 100
    assert np.exp(log_q[2]) == pytest.approx(100 * q[2], rel=0.05)  # rare: about batch_size * q
    # uniform negatives raise every item's chance, most for rare items
    mixed = sampling_log_q(counts, batch_size=100, uniform_negatives=2)
    assert (mixed >= log_q).all() and mixed[2] - log_q[2] > mixed[1] - log_q[1]


@pytest.mark.parametrize("optimizer", [SparseAdagrad, SparseAdam])
def test_sparse_optimisers_touch_only_used_rows(optimizer):
    table = tf.Variable(tf.ones([6, 2]))
    dense = tf.Variable(tf.ones([2]))
    opt = optimizer([table, dense], 0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, [1, 4, 4]) * dense)
    grads = tape.gradient(loss, [table, dense])
    assert isinstance(grads[0], tf.IndexedSlices)
    opt.apply(grads)
    changed = np.flatnonzero(np.abs(table.numpy() - 1.0).sum(axis=1) > 0)
    assert changed.tolist() == [1, 4]
    assert (dense.numpy() < 1.0).all()
    if optimizer is SparseAdagrad:  # matches Adagrad's rule: acc = 0.1 + g^2, w -= lr * g / sqrt(acc)
        assert table.numpy()[4, 0] == pytest.approx(1.0 - 0.1 * 2.0 / np.sqrt(0.1 + 4.0), rel=1e-5)


def test_fit_without_history_and_with_mixed_negatives():
    events, users, items = synthetic(1)
    pairs = data.positive_pairs(events)
    train, holdout = data.time_split(pairs)
    user_features, catalogue = data.user_features(users), data.catalogue(items, pairs)
    for config in (TowerConfig(embedding_dim=8, hash_buckets=1_000, history_length=0, seed=1),
                   TowerConfig(embedding_dim=8, hash_buckets=1_000, uniform_negatives=64, optimizer="adam", seed=1)):
        model = TwoTower(config)
        losses = model.fit(train, user_features, catalogue, epochs=2, batch_size=512, learning_rate=0.01,
                           log=lambda _: None)
        assert len(losses) == 2 and all(np.isfinite(losses))
        assert model.evaluate(train, holdout, user_features, catalogue)["eval_users"] > 100


def test_exact_softmax_on_a_small_catalogue_learns_and_fits_again_without_a_new_step():
    events, users, items = synthetic(2)
    pairs = data.positive_pairs(events)
    train, holdout = data.time_split(pairs)
    user_features, catalogue = data.user_features(users), data.catalogue(items, pairs)
    model = TwoTower(dataclasses.replace(SMALL, full_softmax_max_items=N_ITEMS))
    losses = model.fit(train, user_features, catalogue, epochs=6, batch_size=256, learning_rate=0.1,
                       log=lambda _: None)
    assert losses[-1] < 0.8 * losses[0], losses
    metrics = model.evaluate(train, holdout, user_features, catalogue, k=10)
    assert metrics["ndcg10"] > baselines.popularity(train, holdout, catalogue["item_id"].tolist())["ndcg10"]
    # later fits (the online learner's, on other pairs) reuse the compiled step and the optimiser's slots:
    # once its shapes are relaxed, a fit traces nothing
    step, optimizer = model._steps[(True, False)], model._optimizer
    traces = []
    for rows in (300, 200, 100):
        model.fit(train.sample(rows, random_state=rows), user_features, catalogue, epochs=1, batch_size=64,
                  learning_rate=0.1, log=lambda _: None)
        traces.append(step.experimental_get_tracing_count())
    assert model._steps == {(True, False): step} and model._optimizer is optimizer
    assert traces[-1] == traces[-2], traces


def test_pickle_payloads_are_found_by_name_or_by_their_first_bytes(tmp_path):
    import pickle

    from models.two_tower import pickle_payloads

    model = TwoTower(TowerConfig(embedding_dim=8, hash_buckets=100, seed=1))
    model.save(tmp_path / "artifacts" / "towers")
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    assert pickle_payloads(tmp_path) == []
    (tmp_path / "python_model.pkl").write_bytes(b"")
    (tmp_path / "artifacts" / "weights.bin").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert pickle_payloads(tmp_path) == ["artifacts/weights.bin", "python_model.pkl"]


def test_lookup_reads_what_the_layer_reads_and_trains_only_the_rows_used():
    from models.two_tower import lookup

    layer = tf.keras.layers.Embedding(8, 3)
    ids = tf.constant([5, 1, 5], dtype=tf.int64)
    looked_up = lookup(layer, ids)  # builds the layer, as the towers' first call does
    np.testing.assert_array_equal(looked_up.numpy(), layer(ids).numpy())
    opt = SparseAdam(layer.trainable_variables, 0.1)
    before = layer.embeddings.numpy().copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(lookup(layer, ids))
    grads = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(grads[0], tf.IndexedSlices)  # a sparse gradient, not the whole table
    opt.apply(grads)
    changed = np.flatnonzero(np.abs(layer.embeddings.numpy() - before).sum(axis=1) > 0)
    assert changed.tolist() == [1, 5]
    np.testing.assert_array_equal(lookup(layer, ids).numpy(), layer(ids).numpy())  # after a scatter too


@pytest.mark.parametrize("users, items, entries, dense", [(6, 5, 20, True), (40, 900, 30, False)])
def test_history_sums_equal_the_sparse_product_and_its_gradient_on_either_path(users, items, entries, dense):
    from models.two_tower import HISTORY_DENSE_MAX_CELLS_PER_ENTRY, _history_sums

    rng = np.random.default_rng(3)
    indices = tf.constant(np.stack([rng.integers(0, users, entries), rng.integers(0, items, entries)], axis=1))
    indices = tf.concat([indices, indices[:2]], axis=0)  # a repeated entry adds up, as in the sparse product
    values = tf.constant(rng.choice([0.0, 1.0], entries + 2).astype(np.float32))  # 0: a dropped entry
    shape = tf.constant([users, items], dtype=tf.int64)
    vectors = tf.Variable(rng.normal(size=(items, 4)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(users, 4)).astype(np.float32))
    results = []
    for product in (_history_sums, lambda i, v, s, x: tf.sparse.sparse_dense_matmul(tf.SparseTensor(i, v, s), x)):
        with tf.GradientTape() as tape:
            total = product(indices, values, shape, vectors)
        results.append((total.numpy(), tf.convert_to_tensor(tape.gradient(total, vectors, upstream)).numpy()))
    assert ((entries + 2) * HISTORY_DENSE_MAX_CELLS_PER_ENTRY >= users * items) == dense  # the path this case runs
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    assert np.abs(results[0][0]).sum() > 0


def test_the_weighted_cross_entropy_equals_tensorflows_with_its_gradient():
    from models.two_tower import _weighted_cross_entropy

    rng = np.random.default_rng(4)
    logits = tf.Variable(rng.normal(size=(7, 11)).astype(np.float32) * 8)
    labels = tf.constant(rng.integers(0, 11, 7).astype(np.int32))
    weight = tf.constant(rng.random(7).astype(np.float32) + 0.1)
    reference = lambda: tf.reduce_sum(  # noqa: E731
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits) * weight) / tf.reduce_sum(weight)
    values = []
    for loss in (lambda: _weighted_cross_entropy(logits, labels, weight), reference):
        with tf.GradientTape() as tape:
            value = loss()
        values.append((value.numpy(), tf.convert_to_tensor(tape.gradient(value, logits)).numpy()))
    np.testing.assert_allclose(values[0][0], values[1][0], rtol=1e-5)
    np.testing.assert_allclose(values[0][1], values[1][1], rtol=1e-5, atol=1e-7)
