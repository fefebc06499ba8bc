from feature_store.feeds import EXPLORATION_POSITIONS, refresh_feed
from feature_store.online import Feed


def feed(items, version="2"):
    items = list(items)
    return Feed(items=items, model_version=version, scores=[1.0 / (n + 1) for n in range(len(items))])


def test_without_history_the_new_ranking_is_published():
    new = feed(f"n{i}" for i in range(10))
    assert refresh_feed(new, None, exploration_slots=0).items == new.items


def test_a_share_of_unseen_previous_items_is_kept_and_seen_ones_dropped():
    new = feed(f"n{i}" for i in range(10))
    previous = feed(["p0", "p1", "p2", "p3"], version="1")
    out = refresh_feed(new, previous, seen={"p0", "n0"}, keep_share=0.2, exploration_slots=0)
    assert len(out.items) == 10 and len(set(out.items)) == 10
    assert {"p1", "p2"} <= set(out.items) and "p0" not in out.items and "n0" not in out.items
    assert out.items[0] == "n1" and out.model_version == "2"


def test_exploration_slots_go_to_new_items_at_fixed_positions():
    new = feed(f"n{i}" for i in range(20))
    out = refresh_feed(new, None, new_items=["fresh1", "fresh2", "fresh3"], keep_share=0, exploration_slots=2)
    assert out.items[EXPLORATION_POSITIONS[0]] == "fresh1" and out.items[EXPLORATION_POSITIONS[1]] == "fresh2"
    assert "fresh3" not in out.items and len(out.items) == 20
