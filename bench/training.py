"""`python -m bench.training`: two-tower training examples/s at three catalogue sizes, against naive Keras.

Both train the same towers (:mod:`models.two_tower`, the shipped configuration from the
settings' model section: :func:`models.tuning.base_params`, the path the DAG's train step
and bench.quality take) with the same batch size on synthetic pairs (``--pairs``
weighted pairs of ``--users`` users, popularity Zipf-like, timestamps for the
histories), over catalogues of ``--items`` sizes (default 1,700, 10,000 and 100,000:
ML-100K's size, a 10,000-item data set's and a large one's):

* ``feedloop``: :meth:`TwoTower.fit` as the daily job runs it: strings hashed once,
  a compiled step on integer batches, sparse (row-wise) optimiser updates, each
  user's history pooled once per batch;
* ``naive_keras`` (the like-for-like baseline, at the first size only): the textbook
  loop: a ``tf.data`` pipeline of string features, the towers called on strings in
  every step (hashing included), in-batch softmax, ``keras.optimizers.Adagrad``
  applied to every variable (embedding gradients densified), in a ``tf.function``.

Rates are steady-state: the first epoch (tracing) is left out; each size reports the
median of the other epochs. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

from feedloop.eta import Steps
from models import data


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def synthetic_pairs(n_pairs: int, n_users: int, n_items: int, seed: int = 7):
    """(pairs ``user_id, item_id, weight, ts``, users, catalogue) with Zipf-like item popularity."""
    rng = np.random.default_rng(seed)
    categories = ["comedy", "drama", "sports", "music", "tech", "food", "travel", "games"]
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, n_pairs, p=popularity / popularity.sum())
    pairs = pd.DataFrame({
        "user_id": [f"u{u}" for u in rng.integers(0, n_users, n_pairs)],
        "item_id": [f"i{i}" for i in items],
        "weight": rng.choice([1.0, 1.0, 1.0, 3.0, 4.0, 5.0], n_pairs),
        "ts": rng.integers(1_760_000_000_000, 1_762_592_000_000, n_pairs),
    })
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)],
                          "gender": rng.choice(["F", "M"], n_users), "age": rng.integers(16, 80, n_users),
                          "interests": [[categories[c]] for c in rng.integers(0, len(categories), n_users)]})
    catalogue = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                              "category": [categories[i % len(categories)] for i in range(n_items)]})
    return pairs, data.user_features(users), catalogue


def feedloop_rate(model, pairs, users, catalogue, epochs: int, batch_size: int, lr: float) -> tuple[float, list]:
    rates: list[float] = []
    losses = model.fit(pairs, users, catalogue, epochs, batch_size, lr,
                       on_epoch=lambda epoch, loss, rate: rates.append(rate), log=log)
    return float(np.median(rates[1:])), losses


def naive_rate(model, pairs, users, catalogue, epochs: int, batch_size: int, lr: float) -> tuple[float, list]:
    """The textbook Keras loop over string features (see the module docstring)."""
    import tensorflow as tf

    from models.two_tower import NO_ID, in_batch_softmax_loss

    history_length = max(model.config.history_length, 1)
    histories = dict(zip(pairs["user_id"].unique(), data.recent_histories(
        pairs, list(pairs["user_id"].unique()), model.config.history_length)))
    history = np.full((len(pairs), history_length), NO_ID, dtype=object)
    for row, user in enumerate(pairs["user_id"]):
        items = histories[user][:history_length]
        history[row, :len(items)] = items
    segments = dict(zip(users["user_id"], users["segment"]))
    categories = dict(zip(catalogue["item_id"], catalogue["category"]))
    counts = pairs["item_id"].map(pairs["item_id"].value_counts()).to_numpy(dtype=np.float32)
    features = {
        "user_id": pairs["user_id"].to_numpy(dtype=str),
        "segment": pairs["user_id"].map(segments).fillna("any|any|any").to_numpy(dtype=str),
        "history": history.astype(str),
        "item_id": pairs["item_id"].to_numpy(dtype=str),
        "category": pairs["item_id"].map(categories).fillna("any").to_numpy(dtype=str),
        "log_q": np.log(counts / counts.sum()).astype(np.float32),
        "weight": pairs["weight"].to_numpy(dtype=np.float32),
    }
    dataset = (tf.data.Dataset.from_tensor_slices(features).shuffle(len(pairs), seed=7)
               .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    towers = (model.query_tower, model.item_tower)
    variables = [v for tower in towers for v in tower.trainable_variables]
    optimizer = tf.keras.optimizers.Adagrad(lr)
    temperature = model.config.temperature

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            query = model.query_tower({k: batch[k] for k in ("user_id", "segment", "history")}, training=True)
            item = model.item_tower({k: batch[k] for k in ("item_id", "category")}, training=True)
            loss = in_batch_softmax_loss(query, item, batch["log_q"], batch["weight"], batch["item_id"], temperature)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rates, losses = [], []
    for epoch in range(1, epochs + 1):
        started, total, steps = time.perf_counter(), 0.0, 0
        for batch in dataset:
            total += float(step(batch))
            steps += 1
        rates.append(len(pairs) / (time.perf_counter() - started))
        losses.append(total / steps)
        log(f"naive keras epoch {epoch}/{epochs}: loss {losses[-1]:.4f}, {rates[-1]:,.0f} examples/s")
    return float(np.median(rates[1:])), losses


GOALS = {1_700: 100_000, 10_000: 30_000}  # reference: the goals, examples/s at these catalogue sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--items", type=int, nargs="+", default=[1_700, 10_000, 100_000])
    parser.add_argument("--epochs", type=int, default=3, help="per trainer; the first (tracing) is not counted")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive Keras baseline")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from feedloop.settings import get_settings
    from models.tuning import base_params
    from models.two_tower import TowerConfig, TwoTower

    params = base_params(get_settings().model)
    config, batch, lr = TowerConfig(**params["config"]), params["batch_size"], params["learning_rate"]
    log(f"{args.pairs:,} pairs, {args.users:,} users, catalogues {args.items}; batch {batch}, {args.epochs} epochs "
        f"each; config {config}")
    sizes, naive = {}, None
    steps = Steps("bench.training", len(args.items) + (0 if args.no_naive else 1))
    for n_items in args.items:
        pairs, users, catalogue = synthetic_pairs(args.pairs, args.users, n_items)
        started = time.perf_counter()
        rate, losses = feedloop_rate(TwoTower(config), pairs, users, catalogue, args.epochs, batch, lr)
        sizes[str(n_items)] = {"examples_per_s": round(rate), "seconds": round(time.perf_counter() - started, 1),
                               "final_loss": round(losses[-1], 4), "goal_reference": GOALS.get(n_items),
                               "meets_goal": rate >= GOALS[n_items] if n_items in GOALS else None,
                               "loadavg_1m": round(os.getloadavg()[0], 2)}
        steps.step(f"{n_items:,} items: {rate:,.0f} examples/s")
        if naive is None and not args.no_naive:
            started = time.perf_counter()
            naive_examples, naive_losses = naive_rate(TwoTower(config), pairs, users, catalogue, args.epochs, batch, lr)
            naive = {"items": n_items, "examples_per_s": round(naive_examples),
                     "seconds": round(time.perf_counter() - started, 1), "final_loss": round(naive_losses[-1], 4),
                     "ratio": round(rate / naive_examples, 2)}
            steps.step(f"naive Keras at {n_items:,} items: {naive_examples:,.0f} examples/s")
    steps.summary(", ".join(f"{n} items {v['examples_per_s']:,} examples/s" for n, v in sizes.items())
                  + (f"; {naive['ratio']}x naive Keras" if naive else ""))
    print(json.dumps({
        "by_catalogue_size": sizes, "naive_keras_baseline": naive, "pairs": args.pairs, "users": args.users,
        "epochs": args.epochs, "batch_size": batch,
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "cpus": os.cpu_count(), "loadavg": list(os.getloadavg()),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
