"""Pair weighting, time split, ranking metrics and feed building, as pure functions (no TensorFlow)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from feature_store.segments import fallbacks
from models import data
from feature_store import online
from feature_store.catalogue import with_category_codes
from models.publish import ROOT_SEGMENT, build_feeds, category_feeds, feed_segments


def _events(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts", "dwell_ms"])


def test_event_weights():
    events = _events([
        ("u", "i", "view", 1, None), ("u", "i", "click", 1, None), ("u", "i", "cart", 1, None),
        ("u", "i", "like", 1, None), ("u", "i", "purchase", 1, None), ("u", "i", "impression", 1, None),
        ("u", None, "search", 1, None), ("u", "i", "dwell", 1, 4_999), ("u", "i", "dwell", 1, 5_000),
        ("u", "i", "dwell", 1, 45_000), ("u", "i", "dwell", 1, 10 * 60_000),
    ])
    weights = data.event_weights(events).tolist()
    assert weights[:5] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert all(np.isnan(w) for w in weights[5:8])
    assert weights[8:] == pytest.approx([1 + 5 / 30, 2.5, 4.0])


def test_positive_pairs_sum_weights_and_keep_latest_ts():
    events = _events([
        ("u1", "a", "view", 10, None), ("u1", "a", "purchase", 30, None), ("u1", "a", "impression", 99, None),
        ("u1", "b", "impression", 5, None), ("u2", "a", "dwell", 20, 1_000), ("u2", "b", "like", 15, None),
        ("u3", None, "search", 7, None),
    ])
    pairs = data.positive_pairs(events)
    assert list(pairs.columns) == data.PAIR_COLUMNS
    assert pairs.to_dict("records") == [
        {"user_id": "u2", "item_id": "b", "weight": 4.0, "ts": 15},
        {"user_id": "u1", "item_id": "a", "weight": 6.0, "ts": 30},
    ]


def test_time_split_holds_out_the_latest_fifth_deterministically():
    pairs = pd.DataFrame({"user_id": [f"u{n % 3}" for n in range(10)], "item_id": [f"i{n}" for n in range(10)],
                          "weight": 1.0, "ts": [5, 1, 9, 3, 7, 2, 8, 4, 6, 9]})
    train, holdout = data.time_split(pairs)
    assert (len(train), len(holdout)) == (8, 2)
    assert train["ts"].max() <= holdout["ts"].min()
    assert sorted(holdout["item_id"]) == ["i2", "i9"]
    again_train, again_holdout = data.time_split(pairs.sample(frac=1, random_state=1))
    pd.testing.assert_frame_equal(holdout, again_holdout)
    pd.testing.assert_frame_equal(train, again_train)
    with pytest.raises(ValueError):
        data.time_split(pairs, 1.0)


def test_user_features_and_catalogue():
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "gender": ["f", None, "M"], "age": [29, None, 70],
                          "interests": [np.array(["Comedy", "drama"]), None, []]})
    features = data.user_features(users)
    assert features["segment"].tolist() == ["F|25-34|comedy", "any|any|any", "M|55+|any"]
    assert features["interests"].tolist() == [["Comedy", "drama"], [], []]
    assert data.segments_for(["u1", "nobody"], features) == ["F|25-34|comedy", "any|any|any"]

    items = pd.DataFrame({"item_id": ["a", "b"], "category": ["Comedy ", None]})
    pairs = pd.DataFrame({"user_id": ["u1"], "item_id": ["z"]})
    catalogue = data.catalogue(items, pairs)
    assert catalogue.to_dict("records") == [{"item_id": "a", "category": "comedy"},
                                            {"item_id": "b", "category": "any"},
                                            {"item_id": "z", "category": "any"}]


def test_top_k_and_ranking_metrics():
    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    ranked = data.top_k(scores, [np.array([0]), np.array([], dtype=np.int64)], 2)
    assert ranked.tolist() == [[1, 3], [3, 2]]
    assert scores[0, 0] == 0.9  # not modified
    metrics = data.ranking_metrics(ranked, [np.array([3]), np.array([0, 2])], k=2)
    ideal2 = 1 + 1 / np.log2(3)
    assert metrics["recall2"] == pytest.approx((1.0 + 0.5) / 2)
    assert metrics["ndcg2"] == pytest.approx(((1 / np.log2(3)) + (1 / np.log2(3)) / ideal2) / 2)
    assert metrics["eval_users"] == 2


class StubModel:
    """Scores = dot product of one-hot category vectors: a segment likes its interest's category."""

    categories = ["comedy", "drama", "any"]

    def _one_hot(self, labels):
        return np.array([[1.0 if label == c else 0.0 for c in self.categories] for label in labels])

    def __init__(self):
        self.histories = {}

    def user_histories(self, pairs, user_ids):
        return data.recent_histories(pairs, user_ids, 5)

    def query_embeddings(self, user_ids, segments, histories=None):
        self.histories.update(zip(user_ids, histories or [None] * len(user_ids)))
        return self._one_hot([s.split("|")[2] for s in segments])

    def item_embeddings(self, item_ids, categories):
        return self._one_hot(categories) + np.linspace(0, 0.1, len(item_ids))[:, None]


def test_build_feeds_covers_segments_fallbacks_and_active_users():
    users = data.user_features(pd.DataFrame({"user_id": ["u1", "u2"], "gender": ["F", "M"], "age": [30, 40],
                                             "interests": [["comedy"], ["drama"]]}))
    catalogue = pd.DataFrame({"item_id": ["c1", "c2", "d1", "d2"], "category": ["comedy", "comedy", "drama", "drama"]})
    recent = pd.DataFrame({"user_id": ["u1", "u1", "u9"], "item_id": ["c2", "c1", "d1"],
                           "event_type": ["purchase", "impression", "view"]})
    model = StubModel()
    feeds = build_feeds(model, "7", users, catalogue, recent, feed_size=3, log=lambda _: None)
    # a user's query carries their positive items as history (an impression is not one)
    assert model.histories["u1"] == ["c2"] and model.histories["u9"] == ["d1"]

    expected_segments = set(fallbacks("F|25-34|comedy")) | set(fallbacks("M|35-44|drama"))
    assert {ident for kind, ident in feeds if kind == "seg"} == expected_segments | {ROOT_SEGMENT}
    assert {ident for kind, ident in feeds if kind == "user"} == {"u1", "u9"}  # active users only
    assert all(f.model_version == "7" and len(f.items) <= 3 for f in feeds.values())
    assert feeds[("seg", "F|25-34|comedy")].items[:2] == ["c2", "c1"]
    assert feeds[("seg", "M|35-44|drama")].items[:2] == ["d2", "d1"]
    u1 = feeds[("user", "u1")].items
    assert "c2" not in u1 and u1[0] == "c1"  # purchased item left out; an impression is not engagement
    assert "d1" not in feeds[("user", "u9")].items  # unknown user: any|any|any, own positives excluded
    assert all(np.isfinite(f.scores).all() and len(f.scores) == len(f.items) for f in feeds.values())


def test_feed_segments_always_include_the_root():
    assert feed_segments(pd.DataFrame({"segment": []})) == [ROOT_SEGMENT]


def test_train_and_publish_modules_do_not_import_tensorflow():
    code = "import sys, models.train, models.publish, models.data; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_per_category_feeds_hold_only_their_category_best_first():
    users = data.user_features(pd.DataFrame({"user_id": ["u1"], "gender": ["F"], "age": [30],
                                             "interests": [["comedy"]]}))
    catalogue = pd.DataFrame({"item_id": ["c1", "c2", "c3", "d1", "d2", "x1"],
                              "category": ["comedy", "comedy", "comedy", "drama", "drama", "music"]})
    recent = pd.DataFrame(columns=["user_id", "item_id", "event_type"])
    feeds = build_feeds(StubModel(), "7", users, catalogue, recent, feed_size=3, log=lambda _: None,
                        category_size=2, max_categories=2)
    by_category = {ident: f for (kind, ident), f in feeds.items() if kind == online.CATEGORY_FEED}
    segments = {ident for kind, ident in feeds if kind == "seg"}
    # the two largest categories, for every segment feed; music (one item) has none
    assert set(by_category) == {online.category_feed_ident(s, c) for s in segments for c in ("comedy", "drama")}
    comedy = by_category[online.category_feed_ident("F|25-34|comedy", "comedy")]
    assert comedy.items == ["c3", "c2"] and comedy.scores[0] >= comedy.scores[1]  # best 2 of 3, best first
    assert by_category[online.category_feed_ident("F|25-34|comedy", "drama")].items == ["d2", "d1"]
    assert category_feeds(["s"], np.zeros((1, 2)), np.array(["a", "b"], dtype=object),
                          np.array(["x", "y"], dtype=object), 0, 5, "7", 0) == {}


def test_feeds_carry_their_items_category_numbers_in_the_catalogue_version():
    items = pd.DataFrame({"item_id": ["c1", "d1", "m1", "n1"], "category": ["Comedy", "drama", "music", None]})
    feeds = {("user", "u1"): online.Feed(items=["d1", "c1", "n1"], model_version="7", scores=[3.0, 2.0, 1.0]),
             ("seg", "s"): online.Feed(items=["c1", "x9"], model_version="7")}  # x9: not in the catalogue
    stored = [b"any", b"comedy", b"drama", b"music"]  # the version's categories, as SMEMBERS returns them
    pairs = list(zip(items["item_id"], items["category"]))
    out = with_category_codes(feeds, pairs, "1700", stored)
    user = out[("user", "u1")]
    assert user.category_codes == [2, 1, 0] and user.catalogue == "1700"  # any, comedy, drama, music
    assert user.items == ["d1", "c1", "n1"] and user.scores == [3.0, 2.0, 1.0]
    assert out[("seg", "s")].category_codes == [] and out[("seg", "s")].catalogue == ""
    back = online.Feed.from_json(user.to_json())
    assert (back.category_codes, back.catalogue) == ([2, 1, 0], "1700")
    assert "category_codes" not in feeds[("seg", "s")].to_json()  # nothing stored for a feed without them
    # another version's categories (a newer catalogue won the race): an unknown category keeps none
    assert with_category_codes(feeds, pairs, "1800", ["comedy", "drama"])[("user", "u1")].category_codes == []
