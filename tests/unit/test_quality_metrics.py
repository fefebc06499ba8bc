"""Ranking metrics, the per-user random split and the ML-100K bench's data helpers, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench import quality
from models import data


def metrics(ranked, relevant, k):
    return data.ranking_metrics(np.asarray(ranked), [np.asarray(r) for r in relevant], k)


# ------------------------------------------------------------------ ranking metrics
def test_one_user_by_hand():
    # top 4 = [1, 2, 3, 4], relevant {1, 3, 9}: hits at ranks 1 and 3
    m = metrics([[1, 2, 3, 4]], [[1, 3, 9]], k=4)
    assert m["recall4"] == pytest.approx(2 / 3)
    assert m["precision4"] == pytest.approx(2 / 4)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    ideal = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)  # min(k, 3) = 3 ideal hits
    assert m["ndcg4"] == pytest.approx(dcg / ideal)
    average_precision = 1 / 1 + 2 / 3  # precision at each hit
    assert m["map4"] == pytest.approx(average_precision / 3)  # / min(k=4, |R|=3)
    assert m["map4_by_relevant"] == pytest.approx(average_precision / 3)
    assert m["eval_users"] == 1


def test_map_normalises_by_min_k_relevant_and_by_relevant():
    # 5 relevant items, k = 2, both top items relevant: a perfect list
    m = metrics([[7, 8]], [[7, 8, 9, 10, 11]], k=2)
    assert m["map2"] == pytest.approx(1.0)  # (1/1 + 2/2) / min(2, 5)
    assert m["map2_by_relevant"] == pytest.approx(2 / 5)  # (1/1 + 2/2) / 5: Recommenders' older `map`
    assert m["ndcg2"] == pytest.approx(1.0)
    assert m["precision2"] == pytest.approx(1.0)
    assert m["recall2"] == pytest.approx(2 / 5)


def test_precision_divides_by_k_even_with_few_relevant():
    m = metrics([[3, 1, 2]], [[3]], k=3)
    assert m["precision3"] == pytest.approx(1 / 3)
    assert m["recall3"] == pytest.approx(1.0)
    assert m["ndcg3"] == pytest.approx(1.0)
    assert m["map3"] == pytest.approx(1.0)


def test_late_hit_and_miss():
    m = metrics([[5, 6, 7], [1, 2, 3]], [[7], [9]], k=3)
    # user 1: hit at rank 3; user 2: no hit
    assert m["recall3"] == pytest.approx((1 + 0) / 2)
    assert m["ndcg3"] == pytest.approx((1 / math.log2(4)) / 2)
    assert m["map3"] == pytest.approx((1 / 3) / 2)
    assert m["precision3"] == pytest.approx((1 / 3) / 2)


def test_users_without_relevant_items_are_skipped():
    m = metrics([[1, 2], [1, 2]], [[1], []], k=2)
    assert m["eval_users"] == 1
    assert m["recall2"] == 1.0
    empty = metrics([[1, 2]], [[]], k=2)
    assert empty == {"recall2": 0.0, "precision2": 0.0, "ndcg2": 0.0, "map2": 0.0, "map2_by_relevant": 0.0,
                     "eval_users": 0}


def test_top_k_never_returns_excluded_items_when_others_exist():
    scores = np.array([[0.9, 0.8, 0.1, 0.5]])
    assert data.top_k(scores, [np.array([0])], 2).tolist() == [[1, 3]]
    assert data.top_k(scores, None, 2).tolist() == [[0, 1]]


# ------------------------------------------------------------------ split and histories
def pairs_of(n_users: int = 6, per_user: int = 12) -> pd.DataFrame:
    rows = [(f"u{u}", f"i{i}", 1.0, 1000 * i) for u in range(n_users) for i in range(per_user + u)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "weight", "ts"])


def test_random_split_is_per_user_seeded_and_complete():
    pairs = pairs_of()
    train, holdout = data.random_split(pairs, 0.25, seed=1)
    assert len(train) + len(holdout) == len(pairs)
    assert not set(zip(train.user_id, train.item_id)) & set(zip(holdout.user_id, holdout.item_id))
    for user, group in pairs.groupby("user_id"):
        assert (train.user_id == user).sum() == round(len(group) * 0.75)
    again, _ = data.random_split(pairs, 0.25, seed=1)
    other, _ = data.random_split(pairs, 0.25, seed=2)
    pd.testing.assert_frame_equal(train, again)
    assert set(zip(train.user_id, train.item_id)) != set(zip(other.user_id, other.item_id))
    with pytest.raises(ValueError):
        data.random_split(pairs, 1.0)


def test_random_split_keeps_one_training_pair():
    pairs = pd.DataFrame({"user_id": ["a", "b", "b"], "item_id": ["x", "x", "y"], "weight": 1.0, "ts": [1, 2, 3]})
    train, holdout = data.random_split(pairs, 0.9, seed=0)
    assert sorted(train.user_id) == ["a", "b"]
    assert list(holdout.user_id) == ["b"]


def test_recent_histories_latest_first_capped_and_deduplicated():
    pairs = pd.DataFrame({"user_id": ["a", "a", "a", "a", "b"], "item_id": ["x", "y", "z", "x", "w"],
                          "ts": [1, 3, 2, 0, 5]})
    assert data.recent_histories(pairs, ["a", "b", "nobody"], 2) == [["y", "z"], ["w"], []]
    assert data.recent_histories(pairs, ["a"], 10) == [["y", "z", "x"]]
    assert data.recent_histories(pairs, ["a"], 0) == [[]]


# ------------------------------------------------------------------ ML-100K bench helpers
def write_ml100k(path):
    path.mkdir()
    genres = ["unknown", "Action", "Comedy", "Drama"]
    (path / "u.genre").write_text("".join(f"{g}|{n}\n" for n, g in enumerate(genres)) + "\n", encoding="latin-1")
    (path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n", encoding="latin-1")
    (path / "u.item").write_text(
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1|0\n"
        "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|0|1\n"
        "3|Café (1995)|01-Jan-1995||http://x|0|0|0|1\n", encoding="latin-1")
    (path / "u.data").write_text("1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t3\t4\t881250951\n"
                                 "2\t1\t2\t881250952\n", encoding="latin-1")


def test_bench_loads_ml100k_and_builds_segments_from_training_ratings(tmp_path):
    write_ml100k(tmp_path / "ml")
    ratings, users, items = quality.load(tmp_path / "ml")
    assert ratings.to_dict("records")[0] == {"user_id": "u1", "item_id": "i1", "rating": 5, "ts": 881250949000,
                                             "weight": 1.0}
    assert items.set_index("item_id")["genres"].to_dict() == {"i1": ["comedy"], "i2": ["action", "drama"],
                                                              "i3": ["drama"]}
    user_features, catalogue = quality.features(ratings, users, items)
    assert user_features.set_index("user_id")["segment"].to_dict() == {"u1": "M|18-24|comedy", "u2": "F|45-54|drama"}
    assert catalogue.set_index("item_id")["category"].to_dict() == {"i1": "comedy", "i2": "action|drama",
                                                                    "i3": "drama"}
    # only training ratings decide the top genre: without u1's comedy rating, action and drama tie at
    # 0 liked / 1 rated, and the name breaks the tie
    top = quality.top_genres(ratings[ratings.item_id != "i1"], items)
    assert top["u1"] == "action"


def test_bench_says_where_the_data_is_missing(tmp_path, capsys):
    assert quality.main(["--data", str(tmp_path / "absent"), "--no-als"]) == 2
    assert "MovieLens 100K not found" in capsys.readouterr().err


def test_coverage_and_popularity_bias():
    counts = np.array([100, 50, 10, 1])  # item 0 the most popular, item 3 the least
    popular_only = np.array([[0, 1], [0, 1], [0, 1]])
    spread = np.array([[2, 3], [0, 1], [3, 2]])
    pop = data.coverage_and_popularity_bias(popular_only, counts, k=2)
    wide = data.coverage_and_popularity_bias(spread, counts, k=2)
    assert pop == {"coverage2": 0.5, "popularity_bias2": pytest.approx((1.0 + 0.75) / 2)}
    assert wide["coverage2"] == 1.0
    assert wide["popularity_bias2"] < pop["popularity_bias2"]
    # only the top k count
    assert data.coverage_and_popularity_bias(np.array([[3, 0]]), counts, k=1) == {
        "coverage1": 0.25, "popularity_bias1": pytest.approx(0.25)}


def test_by_user_matches_pandas_groupby_in_row_order():
    rng = np.random.default_rng(3)
    pairs = pd.DataFrame({"user_id": rng.choice(["a", "b", "c", "d"], 200), "item_id": rng.integers(0, 50, 200)})
    wanted = ["c", "nobody", "a", "c", "b"]  # one unknown, one twice, "d" not asked for
    expected = pairs.groupby("user_id")["item_id"].agg(list).to_dict()
    got = data.by_user(pairs["user_id"], pairs["item_id"].to_numpy(), wanted)
    assert [g.tolist() for g in got] == [expected.get(u, []) for u in wanted]


def test_index_lists_leave_out_items_outside_the_catalogue():
    pairs = pd.DataFrame({"user_id": ["a", "a", "b", "a"], "item_id": ["x", "gone", "y", "y"]})
    got = data.index_lists(pairs, ["a", "b", "c"], {"x": 0, "y": 1})
    assert [g.tolist() for g in got] == [[0, 1], [1], []]
    assert all(g.dtype == np.int64 for g in got)


def test_recall_curve_comes_from_the_same_ranking_as_each_k_alone():
    rng = np.random.default_rng(5)
    users, items = [f"u{n}" for n in range(40)], [f"i{n}" for n in range(60)]
    train = pd.DataFrame({"user_id": rng.choice(users, 400), "item_id": rng.choice(items, 400)})
    holdout = pd.DataFrame({"user_id": rng.choice(users, 120), "item_id": rng.choice(items, 120)})
    scores = rng.random((len(users), len(items))).astype(np.float32)
    together = data.rank_holdout(scores, users, items, train, holdout, 10, (1, 5, 10, 20, 50))
    assert {k: v for k, v in together.items() if k not in ("recall1", "recall5", "recall20", "recall50")} == \
        data.rank_holdout(scores, users, items, train, holdout, 10)
    for c in (1, 5, 20, 50):
        assert together[f"recall{c}"] == pytest.approx(data.rank_holdout(scores, users, items, train, holdout, c)[
            f"recall{c}"])
    assert together["recall1"] <= together["recall5"] <= together["recall10"] <= together["recall50"]
