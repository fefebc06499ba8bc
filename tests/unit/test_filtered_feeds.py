"""Category-filtered pages (serving.filtered) and the worker's catalogue copy (serving.catalogues): pure parts,
with a stand-in for the Redis reads (the real reads are in tests/integration/test_api_filters.py)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from feature_store import catalogue
from serving.catalogues import Catalogues
from serving.filtered import Candidates, filtered_page, merged_by_score
from serving.pages import decode_cursor
from serving.resp import AsyncRedis
from serving.store import SHARED_FEED_MEMORY, FeedStore, category_feed_keys, category_feeds_mget

CATEGORY_A = frozenset({"a1", "a2", "a3"})
CATEGORIES_AB = CATEGORY_A | {"b1", "b2"}


def rows(found: Candidates) -> list[tuple]:
    return [(e["item_id"], e["score"], e["source"]) for e in found.entries]


META = {"source": "user", "feed_id": "user:u1@5", "model_version": "7", "generated_at_ms": 1767225600000,
        "publication": "5"}


def test_candidates_keep_the_categories_once_and_skip_excluded_items():
    found = Candidates(CATEGORY_A, frozenset({"a2"}))
    found.add([("a1", 0.9), ("b1", 0.8), ("a2", 0.7), ("zz", 0.6)], "user")
    found.add([("a1", 0.5), ("a3", 0.4)], "segment")
    assert rows(found) == [("a1", 0.9, "user"), ("a3", 0.4, "segment")]
    assert [e["position"] for e in found.entries] == [0, 1]


def test_a_feed_with_category_numbers_of_the_workers_catalogue_is_filtered_by_them():
    feed = {"items": ["a1", "x1", "a2", "a3"], "scores": [0.9, 0.8, 0.7], "category_codes": [0, 1, 0, 0],
            "catalogue": "v2"}
    by_numbers = Candidates(frozenset(), frozenset({"a2"}), codes=frozenset({0}), catalogue="v2")
    by_numbers.add_feed(feed, "user")  # the numbers decide (the item set is not read: it is empty here)
    assert rows(by_numbers) == [("a1", 0.9, "user"), ("a3", None, "user")]
    stale = Candidates(CATEGORY_A, frozenset(), codes=frozenset({1}), catalogue="v3")
    stale.add_feed(feed, "user")  # numbers of another catalogue version: the item set decides
    assert [item for item, _, _ in rows(stale)] == ["a1", "a2", "a3"]
    short = Candidates(CATEGORY_A, frozenset(), need=2, codes=frozenset({1}), catalogue="v2")
    short.add_feed({"items": ["a1", "a2", "a3"], "category_codes": [1]}, "user")  # not one per item: ignored
    assert [item for item, _, _ in rows(short)] == ["a1", "a2"] and short.full


def test_the_sources_of_a_slice_are_those_of_its_entries_in_order():
    found = Candidates(CATEGORIES_AB, frozenset())
    found.add([("a1", 0.9), ("a2", 0.8)], "user")
    found.add([("a1", 0.5)], "segment")  # nothing new: no run of segment entries
    found.add([("b1", 0.5)], "segment")
    found.add([("a3", 0.4)], "segment")  # the same run as b1
    found.add([("b2", 3.0)], "popular")
    assert found.blocks == [(0, "user"), (2, "segment"), (4, "popular")]
    assert found.sources(0, 5) == ["user", "segment", "popular"]
    assert found.sources(1, 3) == ["user", "segment"]
    assert found.sources(2, 4) == ["segment"]
    assert found.sources(3, 5) == ["segment", "popular"]
    assert found.sources(4, 5) == ["popular"]
    assert found.sources(5, 5) == [] and found.sources(3, 3) == []  # an empty page names none


def test_category_feeds_merge_by_score():
    feeds = [{"items": ["a1", "a2"], "scores": [0.9, 0.1]}, {"items": ["b1"], "scores": [0.5]}]
    assert merged_by_score(feeds) == [("a1", 0.9), ("b1", 0.5), ("a2", 0.1)]
    assert merged_by_score([{"items": ["a2", "a1"]}]) == [("a2", None), ("a1", None)]


def test_pages_say_their_sources_and_pin_the_feed_and_categories():
    found = Candidates(CATEGORIES_AB, frozenset())
    found.add([("a1", 0.9)], "user")
    found.add([("b1", 0.5), ("a2", 0.4)], "segment")
    found.add([("b2", 3.0)], "popular")
    first = filtered_page(found, META, ["a", "b"], None, 0, 2, "F|any|any")
    assert [i["item_id"] for i in first["items"]] == ["a1", "b1"]
    assert first["sources"] == ["user", "segment"] and first["source"] == "user"
    assert first["feed_id"] == "user:u1@5?category=a,b" and first["model_version"] == "7"
    pinned, offset = decode_cursor(first["next_cursor"])
    second = filtered_page(found, META, ["a", "b"], pinned, offset, 2, None)
    assert [(i["item_id"], i["position"], i["source"]) for i in second["items"]] == [("a2", 2, "segment"),
                                                                                      ("b2", 3, "popular")]
    assert second["next_cursor"] is None and second["cursor_reset"] is False
    other = filtered_page(found, META, ["a"], pinned, offset, 2, None)  # other categories: start again
    assert other["cursor_reset"] is True and other["items"][0]["position"] == 0


class FakeStore:
    """GET of the catalogue pointer and HSCAN of a version's items, from dicts."""

    def __init__(self):
        self.pointer = None
        self.versions: dict[str, list[bytes]] = {}
        self.scans = 0

    async def execute(self, *command):
        if command[0] == "GET":
            return self.pointer
        self.scans += 1
        docs = self.versions[command[1].split(":")[2]]
        return ["0", [x for d in docs for x in (orjson.loads(d)["item_id"], d)]]


def _docs(prefix: str, n: int) -> list[bytes]:
    return [orjson.dumps({"item_id": f"{prefix}{k}", "title": f"{prefix} title {k}", "category": prefix})
            for k in range(n)]


def test_a_new_catalogue_is_built_in_the_background_and_swapped_whole():
    async def run():
        store = FakeStore()
        copies = Catalogues(check_every_s=0.0)
        assert await copies.get(store) is None  # nothing published
        store.pointer, store.versions["1"] = "1", _docs("old", 3)
        first = await copies.get(store)  # the first build is awaited
        assert first.version == "1" and len(first) == 3
        store.pointer, store.versions["2"] = "2", _docs("new", 4)
        still = await copies.get(store)  # a newer one is built in the background meanwhile
        assert still is first
        await copies.building[1]
        newer = await copies.get(store)
        assert newer.version == "2" and newer.categories == {"new"}
        assert newer.members_of(["new"]) == {"new0", "new1", "new2", "new3"} and first.members_of(["new"]) == set()
        assert catalogue.items_key("2").split(":")[2] == "2"
        return store.scans

    assert asyncio.run(run()) == 2


def test_a_failed_build_keeps_the_old_index_and_is_tried_again():
    class Failing(FakeStore):
        fail = True

        async def execute(self, *command):
            if command[0] == "HSCAN" and self.fail:
                raise ConnectionError("redis went away")
            return await super().execute(*command)

    async def run():
        store = Failing()
        copies = Catalogues(check_every_s=0.0)
        store.pointer, store.versions["1"] = "1", _docs("old", 2)
        store.fail = False
        first = await copies.get(store)
        store.fail, store.pointer, store.versions["2"] = True, "2", _docs("new", 2)
        assert await copies.get(store) is first
        with pytest.raises(ConnectionError):
            await copies.building[1]
        store.fail = False
        assert await copies.get(store) is first  # tried again, in the background
        await copies.building[1]
        return (await copies.get(store)).version

    assert asyncio.run(run()) == "2"


def test_shared_feeds_are_decoded_once_per_text_and_a_new_publication_is_read_anew():
    store = FeedStore(AsyncRedis("127.0.0.1", 1))  # never connects: only the decoding is used
    first = orjson.dumps({"items": ["a1", "a2"], "publication": "5", "generated_at_ms": 1}).decode()
    newer = orjson.dumps({"items": ["a3"], "publication": "6", "generated_at_ms": 2}).decode()
    feed = store.shared_feed(first)
    assert feed["items"] == ["a1", "a2"] and store.shared_feed(first) is feed
    assert store.shared_feed(newer)["items"] == ["a3"] and store.shared_feed(None) is None
    for n in range(SHARED_FEED_MEMORY):  # bounded: the oldest text is forgotten first
        store.shared_feed(orjson.dumps({"items": [f"x{n}"]}).decode())
    assert len(store.decoded) == SHARED_FEED_MEMORY and first not in store.decoded


def test_only_plain_segments_are_remembered_for_the_prefetch_and_the_oldest_user_is_forgotten(monkeypatch):
    store = FeedStore(AsyncRedis("127.0.0.1", 1))
    store._remember("u1", "F|25-34|comedy")
    assert store.last_segment == {"u1": "F|25-34|comedy"}
    store._remember("u1", "F|25-34|com edy")  # its category feeds are not looked up by key: forgotten
    assert store.last_segment == {}
    monkeypatch.setattr("serving.store.SEGMENT_MEMORY", 2)
    for user in ("u1", "u2", "u3"):
        store._remember(user, "M|any|drama")
    assert list(store.last_segment) == ["u2", "u3"]


def test_the_category_feeds_mget_is_encoded_with_the_chains_keys():
    assert category_feeds_mget("F|25-34|comedy", ("drama",)).split(b"\r\n")[2::2] == [
        b"MGET", *(k.encode() for k in category_feed_keys("F|25-34|comedy", ("drama",)))]
