"""The item catalogue in Redis, for ``GET /v1/items`` (category, price range, text).

Layout (every key from :func:`feature_store.online.key`, so every part is escaped)::

    feedloop:catalogue                       the current version (ms); moves forward only
    feedloop:catalogue:<v>:items             hash  item_id -> JSON {item_id, title, category,
                                             price, keywords, created_at}
    feedloop:catalogue:<v>:text              hash  item_id -> lower-cased "title keyword ..."
    feedloop:catalogue:<v>:price             zset  item_id, scored by price (every item)
    feedloop:catalogue:<v>:category:<c>      zset  item_id, scored by price (category c, lower-cased)
    feedloop:catalogue:<v>:categories        set   the categories of version v

:func:`write_catalogue` writes a whole new version, then points ``feedloop:catalogue``
at it in one step, so a search never mixes two catalogues; the version it replaces
expires after :data:`GRACE_S` (pages already being read finish on it). The current
version has no TTL: a catalogue does not go stale the way a feed does.

Items are ordered by price, then item id (a sorted set's order); an item with no price
sorts last and matches no ``max_price``. Each API worker builds its search index from ``items`` (``serving/catalogues.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import orjson
import redis

from feature_store.online import key, raise_pointers

GRACE_S = 600
WRITE_CHUNK = 1000


def pointer_key() -> str:
    return key("catalogue")


def items_key(version: str) -> str:
    return key("catalogue", version, "items")


def text_key(version: str) -> str:
    return key("catalogue", version, "text")


def price_key(version: str) -> str:
    return key("catalogue", version, "price")


def category_key(version: str, category: str) -> str:
    return key("catalogue", version, "category", category.lower())


def categories_key(version: str) -> str:
    return key("catalogue", version, "categories")


def category_codes(categories: Iterable[str]) -> dict[str, int]:
    """Each category (lower case) of a catalogue version and its number: its place among them,
    sorted. Published feeds carry their items' numbers (``online.Feed.category_codes``), so a
    filtered feed tests a small number against a set of a few, not an item id against the
    category's whole set of items (docs/serving.md, "Filtered feeds: one round trip, category
    numbers")."""
    return {category: n for n, category in enumerate(sorted({c.lower() for c in categories}))}


def with_category_codes(feeds: Mapping, item_categories: Iterable[tuple[str, Any]], version: str,
                        categories: Iterable[str | bytes]) -> dict:
    """Each feed (``online.Feed``) with its items' category numbers in catalogue ``version``, whose
    categories as stored for it (``categories_key``) are ``categories``; ``item_categories``: the
    ``(item_id, category)`` of the catalogue's rows. A feed with an item outside that version
    keeps none. What ``models.publish`` publishes (and bench.serving seeds)."""
    codes = category_codes(c.decode() if isinstance(c, bytes) else str(c) for c in categories)
    code_of = {}
    for item, category in item_categories:
        code = codes.get(str(category or "any").lower())  # as item_doc stores it
        if code is not None:
            code_of[str(item)] = code
    out = {}
    for ref, feed in feeds.items():
        numbers = [code_of.get(item) for item in feed.items]
        known = bool(numbers) and None not in numbers
        out[ref] = replace(feed, category_codes=numbers, catalogue=version) if known else feed
    return out


def _keywords(value: Any) -> list[str]:
    if value is None or isinstance(value, float) and math.isnan(value):
        return []
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    return [str(k) for k in value]  # list, tuple, numpy array (from Parquet ARRAY<STRING>)


def _price(value: Any) -> float | None:
    if value is None:
        return None
    price = float(value)
    return None if math.isnan(price) else price


def item_doc(row: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of one catalogue row (as in the Hive ``items`` table)."""
    item_id = row.get("item_id")
    if item_id is None or str(item_id) == "":
        raise ValueError(f"catalogue row without item_id: {dict(row)!r}")
    created = row.get("created_at")
    return {
        "item_id": str(item_id),
        "title": str(row.get("title") or ""),
        "category": str(row.get("category") or "any"),
        "price": _price(row.get("price")),
        "keywords": _keywords(row.get("keywords")),
        "created_at": None if created is None or created != created else int(created),
    }


def _search_text(doc: Mapping[str, Any]) -> str:
    return " ".join([doc["title"], *doc["keywords"]]).lower()


def write_catalogue(client: redis.Redis, items: Iterable[Mapping[str, Any]], version: str | None = None,
                    before_flip: Callable[[str, list[dict[str, Any]]], Any] | None = None) -> str:
    """Write ``items`` (dicts with the Hive ``items`` columns) as a new catalogue version and
    make it current in one step. Returns the version now current: ``version`` (default: now,
    in ms), or the newer one already there when ``version`` is older (then nothing changes).
    ``before_flip(version, docs)`` runs once the version is written, before it becomes current
    (an external search index is filled there: :mod:`feature_store.search_engine`).
    """
    new = version or str(int(time.time() * 1000))
    current = client.get(pointer_key())
    if current is not None and int(current) >= int(new):
        return current if isinstance(current, str) else current.decode()
    docs = [item_doc(row) for row in items]
    categories = sorted({d["category"].lower() for d in docs})
    for start in range(0, len(docs), WRITE_CHUNK):
        pipe = client.pipeline(transaction=False)
        chunk = docs[start:start + WRITE_CHUNK]
        pipe.hset(items_key(new), mapping={d["item_id"]: orjson.dumps(d) for d in chunk})
        pipe.hset(text_key(new), mapping={d["item_id"]: _search_text(d) for d in chunk})
        scores = {d["item_id"]: d["price"] if d["price"] is not None else math.inf for d in chunk}
        pipe.zadd(price_key(new), scores)
        for category in {d["category"].lower() for d in chunk}:
            pipe.zadd(category_key(new, category),
                      {d["item_id"]: scores[d["item_id"]] for d in chunk if d["category"].lower() == category})
        pipe.execute()
    if categories:
        client.sadd(categories_key(new), *categories)
    if before_flip is not None:
        try:
            before_flip(new, docs)
        except BaseException:  # never current: nothing would ever expire its keys
            _expire_version(client, new, 0)
            raise
    (replaced,) = raise_pointers(client, [pointer_key()], new)
    replaced = replaced.decode() if isinstance(replaced, bytes) else replaced
    if replaced and int(replaced) >= int(new):  # another writer got there first
        if int(replaced) > int(new):  # (the same version is the same keys: keep them)
            _expire_version(client, new, 0)
        return replaced
    if replaced:
        _expire_version(client, replaced, GRACE_S)
    return new


def _expire_version(client: redis.Redis, version: str, after_s: int) -> None:
    categories = client.smembers(categories_key(version))
    keys = [items_key(version), text_key(version), price_key(version), categories_key(version)]
    keys += [category_key(version, c.decode() if isinstance(c, bytes) else c) for c in categories]
    pipe = client.pipeline(transaction=False)
    for k in keys:
        if after_s > 0:
            pipe.expire(k, after_s)
        else:
            pipe.delete(k)
    pipe.execute()
