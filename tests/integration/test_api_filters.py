"""Feeds and search users can shape (issue 17), against a real redis-server and the real app: no mocks.

Category-filtered feeds, client exclusions, the search index (typos, relevance, facets),
catalogue publications during a burst of searches, and the 4xx answers. Each test module
gets a redis-server of its own (bench.private), because the catalogue pointer and the live
rankings are shared state that other tests and the running stream rewrite.
"""

from __future__ import annotations

import threading
import time

import pytest

from feature_store import catalogue as catalogue_store
from feature_store import online
from tests.integration.conftest import api_over_private_redis

pytestmark = pytest.mark.integration

SEGMENT = "F|25-34|comedy"
PARENT = "F|25-34|any"


@pytest.fixture(scope="module")
def private(settings, tmp_path_factory):
    """(redis client, API TestClient) over a redis-server of this module's own."""
    with api_over_private_redis(settings, tmp_path_factory.mktemp("redis")) as pair:
        yield pair


def wait_served(api, version: str, timeout_s: float = 30.0) -> None:
    """Wait until the API answers from catalogue ``version`` (its index is built in the background)."""
    deadline = time.monotonic() + timeout_s
    while (body := api.get("/v1/items", params={"limit": 1}).json())["catalogue_version"] != version:
        assert time.monotonic() < deadline, f"catalogue {version} not served after {timeout_s}s: {body}"
        time.sleep(0.05)


def _row(item_id: str, category: str, title: str = "", keywords=(), price: float = 10.0) -> dict:
    return {"item_id": item_id, "title": title or f"Item {item_id}", "category": category, "price": price,
            "keywords": list(keywords), "created_at": 1767225600000}


def _feed(items, version="v7"):
    return online.Feed(items=list(items), model_version=version, scores=[1.0 - n / 100 for n in range(len(items))])


@pytest.fixture(scope="module")
def shop(private):
    """A catalogue of comedy, drama and music, a user with a feed, segment feeds and live rankings."""
    client, api = private
    rows = ([_row(f"c{n}", "Comedy") for n in range(30)] + [_row(f"d{n}", "drama") for n in range(30)]
            + [_row(f"m{n}", "music") for n in range(10)])
    version = catalogue_store.write_catalogue(client, rows)
    client.hset(online.user_profile_key("u1"), mapping={"segment": SEGMENT})
    client.zadd(online.user_recent_key("u1"), {"c1": 1})  # seen
    cat = online.CATEGORY_FEED
    online.publish_feeds(client, {
        ("user", "u1"): _feed(["c0", "d0", "c1", "c2", "d1"], "v7"),
        ("seg", SEGMENT): _feed(["d2", "c6", "c2"], "v6"),
        (cat, online.category_feed_ident(SEGMENT, "comedy")): _feed(["c2", "c3", "c4", "c5"], "v6"),
        (cat, online.category_feed_ident(SEGMENT, "drama")): _feed(["d3", "d4"], "v6"),
        (cat, online.category_feed_ident(PARENT, "comedy")): _feed(["c7", "c4"], "v6"),
        ("seg", "M|any|any"): _feed(["d5", "c10", "m1", "c11"], "v5"),  # no per-category feeds
        ("user", "u2"): _feed([f"c{n}" for n in range(12, 30)], "v7"),
    }, ttl_s=300)
    client.zadd(online.trending_key("1m"), {"c8": 5, "d6": 4, "m2": 3})
    client.zadd(online.popular_key(), {f"c{n}": 100 - n for n in range(9, 21)} | {"d7": 200})
    wait_served(api, version)
    return version


def _ids(body):
    return [row["item_id"] for row in body["items"]]


def test_category_feed_holds_only_the_category_never_seen_or_excluded_and_falls_back(private, shop):
    _, api = private
    body = api.get("/v1/feeds/users/u1", params={"category": "COMEDY", "exclude": "c3,c9", "limit": 8}).json()
    # own feed (c0, c2; c1 seen), segment's comedy feed (c4, c5; c3 excluded, c2 taken), the parent's (c7),
    # trending (c8), popular (c10, ...; c9 excluded)
    assert _ids(body) == ["c0", "c2", "c4", "c5", "c7", "c8", "c10", "c11"]
    assert [r["source"] for r in body["items"]] == ["user"] * 2 + ["segment"] * 3 + ["trending"] + ["popular"] * 2
    assert body["sources"] == ["user", "segment", "trending", "popular"] and body["source"] == "user"
    assert body["model_version"] == "v7" and body["categories"] == ["comedy"]
    assert body["feed_id"].startswith("user:u1@") and body["feed_id"].endswith("?category=comedy")
    rest = api.get("/v1/feeds/users/u1", params={"category": "comedy", "exclude": "c3,c9", "limit": 8,
                                                 "cursor": body["next_cursor"]}).json()
    assert rest["cursor_reset"] is False and _ids(rest) == [f"c{n}" for n in range(12, 21)][:8]
    assert [r["position"] for r in rest["items"]] == list(range(8, 16))
    assert not set(_ids(rest)) & set(_ids(body))


def test_a_new_publication_restarts_the_filtered_pages_and_says_so(private, shop):
    client, api = private
    online.publish_feeds(client, {("user", "u3"): _feed([f"c{n}" for n in range(12, 20)], "v8")}, ttl_s=300)
    first = api.get("/v1/feeds/users/u3", params={"category": "comedy", "limit": 3}).json()
    assert first["model_version"] == "v8" and _ids(first) == ["c12", "c13", "c14"]
    again = api.get("/v1/feeds/users/u3", params={"category": "comedy", "limit": 3,
                                                  "cursor": first["next_cursor"]}).json()
    assert again["cursor_reset"] is False and _ids(again) == ["c15", "c16", "c17"]
    later = str(int(first["publication"]) + 1)
    online.publish_feeds(client, {("user", "u3"): _feed(["c25", "c26", "c27", "c28"], "v9")}, ttl_s=300,
                         publication=later)
    after = api.get("/v1/feeds/users/u3", params={"category": "comedy", "limit": 3,
                                                  "cursor": again["next_cursor"]}).json()
    assert after["cursor_reset"] is True and after["model_version"] == "v9" and after["publication"] == later
    assert _ids(after) == ["c25", "c26", "c27"]


def test_a_changed_segment_is_followed_between_filtered_requests(private, shop):
    """On one Redis node the category feeds come with the user's keys, for the segment of the
    user's last filtered request (FeedStore.filtered_view): a changed segment, or a Redis that
    forgot the user's script, still gets the current segment's category feeds."""
    client, api = private
    store = api.app.state.services.store
    assert store.prefetch  # one node: the one-round-trip path is the one under test
    client.hset(online.user_profile_key("u4"), mapping={"segment": SEGMENT})  # no own feed
    page = {"category": "comedy", "limit": 2}
    assert _ids(api.get("/v1/feeds/users/u4", params=page).json()) == ["c2", "c3"]
    assert store.last_segment["u4"] == SEGMENT
    assert _ids(api.get("/v1/feeds/users/u4", params=page).json()) == ["c2", "c3"]  # guessed right
    client.hset(online.user_profile_key("u4"), mapping={"segment": PARENT})
    moved = api.get("/v1/feeds/users/u4", params=page).json()  # guessed the old segment: read again
    assert _ids(moved) == ["c7", "c4"] and moved["segment"] == PARENT
    assert store.last_segment["u4"] == PARENT
    client.script_flush()
    assert _ids(api.get("/v1/feeds/users/u4", params=page).json()) == ["c7", "c4"]
    assert _ids(api.get("/v1/feeds/users/u4", params=page).json()) == ["c7", "c4"]


def test_segment_feed_by_two_categories(private, shop):
    _, api = private
    body = api.get(f"/v1/feeds/segments/{SEGMENT}", params={"category": "drama,comedy", "limit": 7}).json()
    # the two category feeds merged by score, then live rankings in the categories (never music)
    assert _ids(body) == ["c2", "d3", "c3", "d4", "c4", "c5", "c8"]
    assert body["sources"] == ["segment", "trending"] and body["model_version"] == "v6"
    assert body["segment"] == SEGMENT
    # without per-category feeds the segment's own feed is filtered
    other = api.get("/v1/feeds/segments/M|any|any", params={"category": "comedy", "limit": 3}).json()
    assert _ids(other) == ["c10", "c11", "c8"]
    assert api.get("/v1/feeds/segments/X|none|none", params={"category": "comedy"}).status_code == 404


def test_exclusions_keep_an_unfiltered_page_full(private, shop):
    _, api = private
    body = api.get("/v1/feeds/users/u2", params={"limit": 10, "exclude": "c12,c14,c15"}).json()
    assert body["source"] == "user" and len(body["items"]) == 10
    assert _ids(body) == ["c13"] + [f"c{n}" for n in range(16, 25)]
    live = api.get("/v1/feeds/users/nobody", params={"limit": 3, "exclude": "d7,c9"}).json()
    assert len(live["items"]) == 3 and not {"d7", "c9"} & set(_ids(live))


def test_search_finds_a_misspelt_title_and_ranks_the_title_match_first(private, shop):
    client, api = private
    rows = [_row("k1", "comedy", "Late Show", ["comedy", "live"], 5.0),
            _row("t1", "comedy", "Midnight Comedy Club", ["live"], 30.0),
            _row("x1", "drama", "Quiet River", ["slow"], 12.0)]
    version = catalogue_store.write_catalogue(client, rows + [_row(f"c{n}", "comedy") for n in range(30)]
                                              + [_row(f"d{n}", "drama") for n in range(30)])
    wait_served(api, version)
    body = api.get("/v1/items", params={"q": "midnigt comdy"}).json()
    assert _ids(body) == ["t1"] and body["catalogue_version"] == version
    body = api.get("/v1/items", params={"q": "comedy"}).json()
    assert _ids(body) == ["t1", "k1"]  # the title match first, although dearer
    assert _ids(api.get("/v1/items", params={"q": "comedy", "sort": "price"}).json()) == ["k1", "t1"]
    assert _ids(api.get("/v1/items", params={"q": "quiet riv"}).json()) == ["x1"]  # prefix of the last word
    body = api.get("/v1/items", params={"q": "live", "category": "drama", "facets": "category"}).json()
    assert body["items"] == [] and body["facets"] == {"category": {"comedy": 2}}


def test_a_catalogue_publication_during_a_search_burst_never_yields_a_mixed_page(private, shop):
    client, api = private
    versions = [str(int(time.time() * 1000) + 10_000 * n) for n in range(1, 7)]

    def publish():
        for v in versions:  # each version's items are named after it
            catalogue_store.write_catalogue(client, [_row(f"{v}-{n}", "comedy", f"Widget {n}", ["gadget"])
                                                     for n in range(3000)], version=v)
            time.sleep(0.4)

    writer = threading.Thread(target=publish)
    writer.start()
    seen, pages = set(), 0
    deadline = time.monotonic() + 60
    while writer.is_alive() or versions[-1] not in seen:
        assert time.monotonic() < deadline, f"the last catalogue was not served in time; served: {sorted(seen)}"
        body = api.get("/v1/items", params={"q": "widget gadget", "limit": 50}).json()
        pages += 1
        version = body["catalogue_version"]
        if version in versions:
            seen.add(version)
            assert len(body["items"]) == 50 and body["total"] == 3000
            assert all(i.startswith(f"{version}-") for i in _ids(body)), (version, _ids(body)[:5])
        else:
            assert body["items"] == [] or all(not i.startswith(tuple(versions)) for i in _ids(body))
    writer.join()
    assert len(seen) >= 2, f"only {seen} seen over {pages} pages: the test did not see a publication"


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/v1/feeds/users/u1", {"category": "comedy,nosuch"}, "category"),
    ("/v1/feeds/segments/F|25-34|comedy", {"category": "nosuch"}, "category"),
    ("/v1/items", {"category": "nosuch"}, "category"),
    ("/v1/feeds/users/u1", {"exclude": ",".join(f"i{n}" for n in range(101))}, "exclude"),
    ("/v1/items", {"q": ""}, "q"),
    ("/v1/items", {"q": " ?! "}, "q"),
    ("/v1/items", {"min_price": 20, "max_price": 10}, "max_price"),
])
def test_bad_parameters_get_a_4xx_naming_the_field(private, shop, path, params, field):
    _, api = private
    response = api.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
