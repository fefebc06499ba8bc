"""The feed API against the real Redis (and Kafka for events and served feeds): no mocks.

Feeds are published with :func:`feature_store.online.publish_feeds`, as the batch and
streaming jobs do, then read through the app. Every test uses its own uuid-named
users, segments and items; the current catalogue, shared, is restored afterwards.
Trending and popular rankings and the catch-all segment feed, which the running stream
and jobs rewrite, are read from a private redis-server that nothing else writes.
"""

from __future__ import annotations

import time
import uuid
import warnings

import orjson
import pytest

from feature_store import catalogue as catalogue_store
from feature_store import online
from feedloop.events import new_event
from serving.app import create_app
from tests.integration.conftest import api_over_private_redis

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette asks for httpx2; httpx works
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def api(settings):
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def uid():
    return uuid.uuid4().hex[:12]


@pytest.fixture
def cleanup(redis_client):
    keys: list[str] = []
    members: list[tuple[str, list[str]]] = []
    yield keys, members
    if keys:
        redis_client.delete(*keys)
    for key, items in members:
        redis_client.zrem(key, *items)


def _publish(redis_client, feeds, publication=None):
    return online.publish_feeds(redis_client, feeds, ttl_s=300, publication=publication)


def _items(body):
    return [row["item_id"] for row in body["items"]]


@pytest.fixture
def private_api(settings, tmp_path):
    """The API over a redis-server of its own (client, TestClient): for the trending and popular
    rankings and the catch-all feed, which the stack's running stream and jobs rewrite."""
    with api_over_private_redis(settings, tmp_path) as pair:
        yield pair


def test_user_feed_with_its_model_version(api, redis_client, uid, cleanup):
    items = [f"i-{uid}-{n}" for n in range(5)]
    feed = online.Feed(items=items, model_version="v7", scores=[0.9, 0.8, 0.7, 0.6, 0.5])
    pub = _publish(redis_client, {("user", f"u-{uid}"): feed})
    body = api.get(f"/v1/feeds/users/u-{uid}").json()
    assert body["source"] == "user" and body["user_id"] == f"u-{uid}"
    assert body["model_version"] == "v7"
    assert body["publication"] == pub
    assert body["feed_id"] == f"user:u-{uid}@{pub}"
    assert _items(body) == items
    assert [row["position"] for row in body["items"]] == [0, 1, 2, 3, 4]
    assert body["items"][0]["score"] == pytest.approx(0.9)
    assert body["generated_at_ms"] > 0 and body["generated_at"].endswith("Z")
    assert body["next_cursor"] is None and body["cursor_reset"] is False


def test_falls_back_to_the_nearest_published_segment(api, redis_client, uid, cleanup):
    keys, _ = cleanup
    exact, coarser = f"G{uid}|B{uid}|I{uid}", f"G{uid}|B{uid}|any"
    profile = online.user_profile_key(f"u-{uid}")
    redis_client.hset(profile, mapping={"segment": exact})
    keys.append(profile)
    _publish(redis_client, {("seg", coarser): online.Feed(items=[f"c-{uid}"], model_version="v3")})
    body = api.get(f"/v1/feeds/users/u-{uid}").json()
    assert (body["source"], body["segment"], body["model_version"]) == ("segment", coarser, "v3")
    assert _items(body) == [f"c-{uid}"]

    _publish(redis_client, {("seg", exact): online.Feed(items=[f"e-{uid}"], model_version="v4")})
    body = api.get(f"/v1/feeds/users/u-{uid}").json()
    assert (body["source"], body["segment"], _items(body)) == ("segment", exact, [f"e-{uid}"])

    _publish(redis_client, {("user", f"u-{uid}"): online.Feed(items=[f"p-{uid}"], model_version="v5")})
    body = api.get(f"/v1/feeds/users/u-{uid}").json()
    assert (body["source"], body["segment"], _items(body)) == ("user", None, [f"p-{uid}"])


def test_falls_back_to_trending_without_any_segment_feed(private_api, uid):
    client, api = private_api  # no segment feed at all, the catch-all included
    hot = [f"t-{uid}-{n}" for n in range(3)]
    client.zadd(online.trending_key("1m"), {item: 3 - n for n, item in enumerate(hot)})
    client.zadd(online.trending_key("1m"), {f"cold-{uid}": 0.5})
    body = api.get(f"/v1/feeds/users/u-{uid}?limit=3").json()
    assert (body["source"], body["window"], body["model_version"]) == ("trending", "1m", None)
    assert _items(body) == hot
    assert "trending" in api.get("/metrics").text


def test_recently_seen_items_are_left_out(api, redis_client, uid, cleanup):
    keys, _ = cleanup
    items = [f"i-{uid}-{n}" for n in range(6)]
    _publish(redis_client, {("user", f"u-{uid}"): online.Feed(items=items, model_version="v1")})
    recent = online.user_recent_key(f"u-{uid}")
    redis_client.zadd(recent, {items[0]: time.time() * 1000, items[3]: time.time() * 1000})
    keys.append(recent)
    body = api.get(f"/v1/feeds/users/u-{uid}").json()
    assert _items(body) == [items[1], items[2], items[4], items[5]]
    assert [row["position"] for row in body["items"]] == [1, 2, 4, 5]


def test_fully_seen_user_feed_gives_way_to_the_segment_feed(api, redis_client, uid, cleanup):
    keys, _ = cleanup
    segment = f"G{uid}|B{uid}|I{uid}"
    profile, recent = online.user_profile_key(f"u-{uid}"), online.user_recent_key(f"u-{uid}")
    redis_client.hset(profile, "segment", segment)
    redis_client.zadd(recent, {f"seen-{uid}": 1})
    keys += [profile, recent]
    _publish(redis_client, {
        ("user", f"u-{uid}"): online.Feed(items=[f"seen-{uid}"], model_version="v1"),
        ("seg", segment): online.Feed(items=[f"fresh-{uid}"], model_version="v1"),
    })
    body = api.get(f"/v1/feeds/users/u-{uid}").json()
    assert (body["source"], _items(body)) == ("segment", [f"fresh-{uid}"])


def test_pages_walk_one_publication_to_the_end(api, redis_client, uid, cleanup):
    keys, _ = cleanup
    items = [f"i-{uid}-{n:02d}" for n in range(11)]
    _publish(redis_client, {("user", f"u-{uid}"): online.Feed(items=items, model_version="v1")})
    recent = online.user_recent_key(f"u-{uid}")
    redis_client.zadd(recent, {items[4]: 1})
    keys.append(recent)

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        body = api.get(f"/v1/feeds/users/u-{uid}", params=params).json()
        assert body["cursor_reset"] is False
        seen += _items(body)
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # another feed's publication does not disturb this one's pages
        _publish(redis_client, {("user", f"other-{uid}"): online.Feed(items=["x"], model_version="v9")})
    keys.append(online.feed_key("user", f"other-{uid}"))
    assert seen == [item for item in items if item != items[4]]
    assert pages == 4


def test_republication_restarts_the_pages_and_says_so(api, redis_client, uid):
    user = f"u-{uid}"
    first = [f"a-{uid}-{n}" for n in range(6)]
    second = [f"b-{uid}-{n}" for n in range(6)]
    now = int(time.time() * 1000)
    old = _publish(redis_client, {("user", user): online.Feed(items=first, model_version="v1")}, str(now))
    page1 = api.get(f"/v1/feeds/users/{user}", params={"limit": 2}).json()
    assert _items(page1) == first[:2] and page1["publication"] == old

    new = _publish(redis_client, {("user", user): online.Feed(items=second, model_version="v2")}, str(now + 1))
    page2 = api.get(f"/v1/feeds/users/{user}", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    assert page2["cursor_reset"] is True
    assert (page2["publication"], page2["model_version"]) == (new, "v2")
    assert _items(page2) == second[:2] and page2["items"][0]["position"] == 0
    page3 = api.get(f"/v1/feeds/users/{user}", params={"limit": 2, "cursor": page2["next_cursor"]}).json()
    assert page3["cursor_reset"] is False and _items(page3) == second[2:4]

    # a stale backfill is refused by the store, so the pages go on undisturbed
    _publish(redis_client, {("user", user): online.Feed(items=first, model_version="v0")}, str(now - 1000))
    page4 = api.get(f"/v1/feeds/users/{user}", params={"limit": 2, "cursor": page3["next_cursor"]}).json()
    assert page4["cursor_reset"] is False and _items(page4) == second[4:6] and page4["next_cursor"] is None


def test_segment_endpoint(api, redis_client, uid):
    segment = f"F|25-34|{uid}"
    pub = _publish(redis_client, {("seg", segment): online.Feed(items=["s1", "s2", "s3"], model_version="v8")})
    body = api.get(f"/v1/feeds/segments/{segment}", params={"limit": 2}).json()
    assert (body["source"], body["segment"], body["publication"]) == ("segment", segment, pub)
    assert body["model_version"] == "v8"
    assert _items(body) == ["s1", "s2"]
    rest = api.get(f"/v1/feeds/segments/{segment}", params={"cursor": body["next_cursor"]}).json()
    assert _items(rest) == ["s3"] and rest["next_cursor"] is None


def test_unknown_segment_is_a_404_naming_it(api, uid):
    segment = f"M|35-44|{uid}"
    response = api.get(f"/v1/feeds/segments/{segment}")
    assert response.status_code == 404
    assert response.json()["segment"] == segment and segment in response.json()["error"]


def test_trending_and_popular_endpoints(private_api, uid):
    client, api = private_api
    ten, one, pop = [f"t10-{uid}", f"t10b-{uid}"], [f"t1-{uid}"], [f"pop-{uid}"]
    client.zadd(online.trending_key("10m"), {ten[0]: 2.0, ten[1]: 1.0})
    client.zadd(online.trending_key("1m"), {one[0]: 5.0})
    client.zadd(online.popular_key(), {pop[0]: 7.0})
    body = api.get("/v1/trending", params={"window": "10m", "limit": 5}).json()
    assert (body["window"], _items(body), [row["score"] for row in body["items"]]) == ("10m", ten, [2.0, 1.0])
    body = api.get("/v1/trending", params={"window": "1m", "limit": 5}).json()
    assert (body["window"], _items(body)) == ("1m", one)
    body = api.get("/v1/popular", params={"limit": 5}).json()
    assert (body["source"], _items(body)) == ("popular", pop)


def test_user_stats(api, redis_client, uid, cleanup):
    keys, _ = cleanup
    stats = online.user_stats_key(f"u-{uid}")
    redis_client.hset(stats, mapping={"click": 3, "view": 12})
    keys.append(stats)
    assert api.get(f"/v1/users/u-{uid}/stats").json() == {"user_id": f"u-{uid}", "stats": {"click": 3, "view": 12}}
    assert api.get(f"/v1/users/nobody-{uid}/stats").json()["stats"] == {}


def test_ready_when_redis_answers(api):
    response = api.get("/readyz")
    assert response.status_code == 200 and response.json()["redis"] == "ok"


def test_events_reach_kafka_keyed_by_user(api, settings, uid):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # kafka-python's own importlib.resources use
        from kafka import KafkaConsumer, TopicPartition

    topic = settings.kafka.events_topic
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert partitions, f"topic {topic} does not exist"
        consumer.assign(partitions)
        consumer.seek_to_end(*partitions)
        for tp in partitions:
            consumer.position(tp)  # resolve the end offsets before posting

        events = [new_event("click", f"u-{uid}", f"i-{uid}", feed_id="seg:x@1", position=0),
                  new_event("search", f"u-{uid}", None, query="boots")]
        response = api.post("/v1/events", json={"events": events}, headers={"X-API-Key": settings.api.api_key})
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 2}

        wanted = {e["event_id"] for e in events}
        got = {}
        deadline = time.monotonic() + 20
        while wanted - got.keys() and time.monotonic() < deadline:
            for record in consumer:
                value = orjson.loads(record.value)
                if value.get("event_id") in wanted:
                    got[value["event_id"]] = (record.key, value)
        assert got.keys() == wanted
        assert {key for key, _ in got.values()} == {f"u-{uid}".encode()}
        assert {value["event_type"] for _, value in got.values()} == {"click", "search"}
    finally:
        consumer.close()


# -- served-feed log -------------------------------------------------------------------


def test_served_feeds_reach_kafka(api, settings, redis_client, uid):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaConsumer, TopicPartition

    topic = settings.kafka.served_topic
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert partitions, f"topic {topic} does not exist"
        consumer.assign(partitions)
        consumer.seek_to_end(*partitions)
        for tp in partitions:
            consumer.position(tp)

        user, segment = f"u-{uid}", f"S|{uid}|x"
        pub = _publish(redis_client, {("user", user): online.Feed(items=["a", "b", "c"], model_version="v3"),
                                      ("seg", segment): online.Feed(items=["s1", "s2"], model_version="v4")})
        before = int(time.time() * 1000)
        assert api.get(f"/v1/feeds/users/{user}", params={"limit": 2}).status_code == 200
        assert api.get(f"/v1/feeds/segments/{segment}").status_code == 200

        wanted = {f"user:{user}@{pub}", f"seg:{segment}@{pub}"}
        got = {}
        deadline = time.monotonic() + 30
        while wanted - got.keys() and time.monotonic() < deadline:
            for record in consumer:
                value = orjson.loads(record.value)
                if value.get("feed_id") in wanted:
                    got[value["feed_id"]] = (record.key, value)
        assert got.keys() == wanted
        key, served = got[f"user:{user}@{pub}"]
        assert key == user.encode()
        assert served["served_at"] >= before
        assert {k: v for k, v in served.items() if k != "served_at"} == {
            "feed_id": f"user:{user}@{pub}", "user_id": user, "segment": None, "source": "user",
            "model_version": "v3", "items": ["a", "b"]}
        _, served = got[f"seg:{segment}@{pub}"]
        assert (served["user_id"], served["segment"], served["source"], served["items"]) == (
            None, segment, "segment", ["s1", "s2"])
    finally:
        consumer.close()


# -- catalogue search --------------------------------------------------------------------


@pytest.fixture
def catalogue(redis_client, uid):
    """A small catalogue made current for one test; the previous one is put back afterwards."""
    pointer = catalogue_store.pointer_key()
    previous = redis_client.get(pointer)
    rows = [
        {"item_id": f"b-{uid}-{n:02d}", "title": f"Red Boots {n}", "category": "Shoes", "price": 10.0 + n,
         "keywords": ["leather", "winter"], "created_at": 1767225600000 + n}
        for n in range(10)
    ] + [
        {"item_id": f"s-{uid}-{n:02d}", "title": f"Blue Sandals {n}", "category": "shoes", "price": 5.0 * n,
         "keywords": ["summer"], "created_at": 1767225600000} for n in range(6)
    ] + [
        {"item_id": f"h-{uid}-{n:02d}", "title": f"Wool hat {n}", "category": "hats", "price": None,
         "keywords": ["winter", "red"], "created_at": None} for n in range(3)
    ]
    version = catalogue_store.write_catalogue(redis_client, rows)
    yield version, rows
    current = redis_client.get(pointer)
    if current == version:
        if previous is None:
            redis_client.delete(pointer)
        else:
            redis_client.set(pointer, previous)
    catalogue_store._expire_version(redis_client, version, 0)


def _ids(body):
    return [row["item_id"] for row in body["items"]]


def served_catalogue(api, version, timeout_s=30.0):
    """Wait until the API's search index is catalogue ``version`` (each worker builds it in the
    background after it notices the new pointer); returns a page of it."""
    deadline = time.monotonic() + timeout_s
    while (body := api.get("/v1/items", params={"limit": 1}).json())["catalogue_version"] != version:
        assert time.monotonic() < deadline, f"catalogue {version} not served after {timeout_s}s: {body}"
        time.sleep(0.05)
    return body


def test_items_by_category_are_cheapest_first(api, catalogue):
    version, rows = catalogue
    served_catalogue(api, version)
    body = api.get("/v1/items", params={"category": "SHOES", "limit": 100}).json()
    shoes = sorted((r for r in rows if r["category"].lower() == "shoes"), key=lambda r: (r["price"], r["item_id"]))
    assert _ids(body) == [r["item_id"] for r in shoes]
    assert body["catalogue_version"] == version and body["next_cursor"] is None and body["total"] == len(shoes)
    first = body["items"][0]
    assert first == {"item_id": shoes[0]["item_id"], "title": "Blue Sandals 0", "category": "shoes", "price": 0.0,
                     "keywords": ["summer"], "created_at": 1767225600000}


def test_items_by_price_range_and_text(api, catalogue, uid):
    served_catalogue(api, catalogue[0])
    body = api.get("/v1/items", params={"min_price": 12, "max_price": 15, "limit": 100}).json()
    assert _ids(body) == [f"b-{uid}-02", f"b-{uid}-03", f"b-{uid}-04", f"b-{uid}-05", f"s-{uid}-03"]  # ties by id
    body = api.get("/v1/items", params={"q": "RED winter", "limit": 100, "sort": "price", "facets": "category"}).json()
    # boots by title and keyword; hats by keywords only (no price: last)
    assert _ids(body) == [f"b-{uid}-{n:02d}" for n in range(10)] + [f"h-{uid}-{n:02d}" for n in range(3)]
    assert body["facets"] == {"category": {"shoes": 10, "hats": 3}}
    body = api.get("/v1/items", params={"q": "red", "max_price": 11}).json()
    assert _ids(body) == [f"b-{uid}-00", f"b-{uid}-01"]
    assert api.get("/v1/items", params={"q": "nothing-like-this"}).json()["items"] == []


def test_item_pages_walk_the_catalogue_then_reset_on_a_new_one(api, redis_client, catalogue, uid):
    version, rows = catalogue
    served_catalogue(api, version)
    seen, cursor = [], None
    while True:
        body = api.get("/v1/items", params={"q": "boots", "limit": 4} | ({"cursor": cursor} if cursor else {})).json()
        assert body["cursor_reset"] is False
        seen += _ids(body)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"b-{uid}-{n:02d}" for n in range(10)]

    page1 = api.get("/v1/items", params={"category": "shoes", "limit": 3}).json()
    newer = catalogue_store.write_catalogue(redis_client, rows[:2], version=str(int(version) + 1))
    try:
        served_catalogue(api, newer)
        page2 = api.get("/v1/items", params={"category": "shoes", "limit": 3, "cursor": page1["next_cursor"]}).json()
        assert page2["cursor_reset"] is True and page2["catalogue_version"] == newer
        assert _ids(page2) == [f"b-{uid}-00", f"b-{uid}-01"]
    finally:
        redis_client.set(catalogue_store.pointer_key(), version)
        catalogue_store._expire_version(redis_client, newer, 0)


def test_an_older_catalogue_never_replaces_a_newer_one(redis_client, catalogue):
    version, _ = catalogue
    assert catalogue_store.write_catalogue(redis_client, [{"item_id": "old"}], version=str(int(version) - 1)) == version
    assert redis_client.get(catalogue_store.pointer_key()) == version
