"""The simulator's statistics: event mix, diurnal curve, promotions, preference-driven clicks."""

import json
from collections import Counter
from datetime import datetime, timezone

import pytest

from feedloop.events import EVENT_TYPES, Rejection, validate
from sources.simulator import EVENT_MIX, FeedStats, INTEREST_WEIGHTS, Item, PROMO_BOOST, Promotion, Simulator, USER_COLUMNS, click_probability, diurnal_multiplier, make_catalogue, typed_values

DS = "2026-11-18"  # a Wednesday
NOW_MS = 1_795_000_000_000
MAIN_TYPES = {kind for kind, _ in EVENT_MIX}


def at(hour: int, day: int = 18, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def catalogue():
    return make_catalogue(200, 300, seed=3, now_ms=NOW_MS)


@pytest.fixture(scope="module")
def day_events(catalogue):
    users, items = catalogue
    sim = Simulator(users, items, seed=3, ds=DS)
    events = []
    for _ in range(20_000):
        events += sim.events_for_action()
    return events


def test_event_mix_matches_the_seed_system(day_events):
    main = Counter(e["event_type"] for e in day_events if e["event_type"] in MAIN_TYPES)
    total = sum(main.values())
    for kind, share in EVENT_MIX:
        assert main[kind] / total == pytest.approx(share, abs=0.015), kind
    assert {"impression", "click", "dwell"} <= {e["event_type"] for e in day_events}


def test_every_generated_event_passes_the_validator(catalogue, day_events):
    users, items = catalogue
    sim = Simulator(users, items, seed=4, promo_every_s=60, promo_duration_s=30, now_ms=NOW_MS)
    page = {"feed_id": "seg:F|25-34|comedy@1", "model_version": "3", "source": "segment",
            "items": [{"item_id": i.item_id, "score": 0.5, "position": n} for n, i in enumerate(items[:20])]}
    events = day_events + sim.feed_visit(users[0], page)
    for n in range(2000):
        events += sim.events_for_action(ts=NOW_MS + n * 1000)
    for event in events:
        result = validate(json.dumps(event).encode())
        assert not isinstance(result, Rejection), (event, result)
    assert {e["event_type"] for e in events} == set(EVENT_TYPES)
    assert len({e["event_id"] for e in events}) == len(events)


def test_diurnal_curve_from_a_tenth_at_3_to_ten_times_at_20():
    assert diurnal_multiplier(at(3)) == pytest.approx(0.1)
    assert diurnal_multiplier(at(20)) == pytest.approx(10.0)
    hourly = [diurnal_multiplier(at(h)) for h in range(24)]
    assert min(hourly) == hourly[3] and max(hourly) == hourly[20]
    assert hourly[3:21] == sorted(hourly[3:21])  # rises all day
    assert hourly[20:] + hourly[:4] == sorted(hourly[20:] + hourly[:4], reverse=True)  # falls at night


def test_weekends_carry_more_volume():
    saturday = at(20, day=21)
    assert saturday.weekday() == 5
    assert diurnal_multiplier(saturday) == pytest.approx(1.3 * diurnal_multiplier(at(20)))


def test_event_times_follow_the_day_curve(day_events):
    hours = Counter(datetime.fromtimestamp(e["ts"] / 1000, tz=timezone.utc).hour for e in day_events)
    assert all(e["ts"] // 86_400_000 == day_events[0]["ts"] // 86_400_000 for e in day_events[:1000])
    assert hours[20] > 30 * hours[3]
    assert hours[20] > hours[13] > hours[3]


def test_users_act_on_their_top_interest_most(catalogue, day_events):
    users, items = catalogue
    by_user = {u.user_id: u for u in users}
    category = {i.item_id: i.category for i in items}
    rank_counts = Counter()
    for e in day_events:
        if e["event_type"] == "purchase":
            interests = by_user[e["user_id"]].interests
            c = category[e["item_id"]]
            rank_counts[interests.index(c) if c in interests else "other"] += 1
    assert rank_counts[0] > rank_counts[1] > rank_counts[2] > rank_counts["other"] / 7 * 0.5


def test_feed_clicks_and_dwell_follow_hidden_preferences(catalogue):
    users, items = catalogue
    sim = Simulator(users, items, seed=5)
    shown, clicked, dwell = Counter(), Counter(), {True: [], False: []}
    category = {i.item_id: i.category for i in items}
    for user in users:
        page = {"feed_id": f"user:{user.user_id}@1", "model_version": "1",
                "items": [{"item_id": i.item_id, "position": 0} for i in items[:60]]}
        for event in sim.feed_visit(user, page):
            if category[event["item_id"]] in user.interests[1:]:
                continue  # compare the top interest with categories outside the interests
            liked = category[event["item_id"]] == user.interests[0]
            if event["event_type"] == "impression":
                shown[liked] += 1
            elif event["event_type"] == "click":
                clicked[liked] += 1
            elif event["event_type"] == "dwell":
                dwell[liked].append(event["dwell_ms"])
    ctr_liked, ctr_other = clicked[True] / shown[True], clicked[False] / shown[False]
    assert ctr_liked == pytest.approx(0.5, abs=0.06)
    assert ctr_liked > 20 * ctr_other
    assert sum(dwell[True]) / len(dwell[True]) > 20 * sum(dwell[False]) / len(dwell[False])


def test_feed_events_are_attributed_to_the_served_feed(catalogue):
    users, items = catalogue
    sim = Simulator(users, items, seed=6)
    page = {"feed_id": "seg:M|18-24|drama@17", "model_version": "12", "source": "segment",
            "items": [{"item_id": items[0].item_id, "position": 4}, {"item_id": "not-in-catalogue", "position": 5}]}
    events = sim.feed_visit(users[1], page, ts=NOW_MS)
    impressions = [e for e in events if e["event_type"] == "impression"]
    assert [(e["item_id"], e["position"]) for e in impressions] == [(items[0].item_id, 4), ("not-in-catalogue", 5)]
    assert all(e["feed_id"] == "seg:M|18-24|drama@17" and e["model_version"] == "12" for e in events)


def test_click_probability_falls_with_position_and_preference(catalogue):
    user = catalogue[0][0]
    top, other = user.interests[0], next(c for c in user.preference if c not in user.interests)
    assert click_probability(user, top, 0) == pytest.approx(0.5)
    assert click_probability(user, top, 5) == pytest.approx(0.25)
    third = user.interests[2]
    assert click_probability(user, other, 0) < click_probability(user, third, 0) < click_probability(user, top, 0)
    assert INTEREST_WEIGHTS[0] == max(user.preference.values())


def test_ctr_of_preferred_feeds_beats_random_feeds(catalogue):
    users, items = catalogue
    sim = Simulator(users, items, seed=7)
    good, random_feed = FeedStats(), FeedStats()
    for n, user in enumerate(users):
        liked = [i for i in items if i.category == user.interests[0]][:10]
        page = {"feed_id": "f", "items": [{"item_id": i.item_id, "position": p} for p, i in enumerate(liked)]}
        events = sim.feed_visit(user, page)
        good.add("user", events, sim.random_feed_ctr(user, list(range(len(liked)))))
        sample = items[n % 30 * 10: n % 30 * 10 + 10]
        page = {"feed_id": "f", "items": [{"item_id": i.item_id, "position": p} for p, i in enumerate(sample)]}
        random_feed.add("popular", sim.feed_visit(user, page), sim.random_feed_ctr(user, list(range(10))))
    assert good.ctr > 2.5 * good.random_ctr
    assert random_feed.ctr == pytest.approx(random_feed.random_ctr, rel=0.35)
    assert "feed CTR" in good.summary() and "random feeds would get" in good.summary()


@pytest.mark.parametrize("kind", ["item", "category"])
def test_promotion_runs_its_target_at_twenty_times(kind):
    users, items = make_catalogue(100, 20, seed=8, now_ms=NOW_MS)
    sim = Simulator(users, items, seed=8, now_ms=NOW_MS)
    target = items[0].item_id if kind == "item" else items[0].category
    promo = Promotion(kind, target, NOW_MS + 60_000, NOW_MS + 120_000)
    sim.promotions, sim._promo_starts = [promo], [promo.start_ms]
    covered = {i.item_id for i in items if promo.covers(i)}

    def per_unit_rate(ts: int, n: int = 30_000) -> tuple[float, float]:
        target_events = other_events = 0
        for _ in range(n):
            for e in sim.events_for_action(ts=ts):
                if e["event_type"] in MAIN_TYPES - {"search"}:
                    if e["item_id"] in covered:
                        target_events += 1
                    else:
                        other_events += 1
        factor = sim.promotion_factor(sim.promotion_at(ts))
        return target_events * factor / n, other_events * factor / n

    before_target, before_other = per_unit_rate(NOW_MS)
    during_target, during_other = per_unit_rate(NOW_MS + 90_000)
    assert sim.promotion_at(NOW_MS + 90_000) == promo and sim.promotion_at(NOW_MS + 130_000) is None
    assert during_target / before_target == pytest.approx(PROMO_BOOST, rel=0.15)
    assert during_other / before_other == pytest.approx(1.0, rel=0.05)


def test_promotions_are_scheduled_over_a_simulated_day(catalogue):
    users, items = catalogue
    sim = Simulator(users, items, seed=9, ds=DS, promo_every_s=3600, promo_duration_s=600)
    day = datetime(2026, 11, 18, tzinfo=timezone.utc).timestamp() * 1000
    assert 8 <= len(sim.promotions) <= 40
    assert all(day <= p.start_ms < day + 86_400_000 for p in sim.promotions)
    assert all(a.end_ms <= b.start_ms for a, b in zip(sim.promotions, sim.promotions[1:]))
    busy = sim.promotions[0]
    assert sim.rate_factor(busy.start_ms + 1) > diurnal_multiplier(Simulator._dt(busy.start_ms + 1))


def test_catalogue_values_reach_spark_unchanged_as_parameters():
    from pyhive.hive import _escaper
    from pyspark.sql import SparkSession

    rows = [
        ("O'Brien \\ x", None, 30, "50% off", ["a", "b'c", "\\", "%s"], 1),
        ("line\nbreak\ttab é", "F", None, "'; DROP TABLE users; --", [], 2),
    ]
    select, params = typed_values(rows, USER_COLUMNS)
    assert "O'Brien" not in select and "DROP" not in select  # values travel as parameters only
    sql = select % _escaper.escape_args(params)  # what PyHive's cursor.execute(select, params) sends
    spark = (SparkSession.builder.master("local[1]").appName("test-simulator-sql")
             .config("spark.ui.enabled", "false").getOrCreate())
    assert [tuple(row) for row in spark.sql(sql).collect()] == rows


def test_drift_moves_users_to_a_released_trend_and_leaves_the_rest():
    users, items = make_catalogue(300, 200, seed=9, now_ms=NOW_MS)
    sim = Simulator(users, items, seed=9, now_ms=NOW_MS)
    adopters = [u for u in users if u.interests[0] == "comedy"]
    others = [u for u in users if u.interests[0] != "comedy"]
    trend = [Item(f"t{j}", f"Viral #{j}", "viral", ["new"], 9.99, NOW_MS) for j in range(5)]
    assert all(sim.pick_item(u).item_id not in {i.item_id for i in trend} for u in users for _ in range(3))
    sim.release(trend)
    sim.drift(adopters, {"viral": 4.0, "comedy": 0.7})
    assert "viral" in sim.categories and sim.item_by_id["t0"].category == "viral"

    def share(group, category):
        picks = [sim.pick_item(u).category for u in group for _ in range(30)]
        return picks.count(category) / len(picks)

    assert share(adopters, "viral") > 0.4 and share(others, "viral") < 0.05  # what they now seek
    assert share(adopters, "comedy") < 0.15
    assert click_probability(adopters[0], "viral", 0) > click_probability(adopters[0], "comedy", 0) * 4
    assert adopters[0].interests[0] == "comedy"  # what they declared (their segment) stays
