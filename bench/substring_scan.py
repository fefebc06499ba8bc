"""The catalogue search of `GET /v1/items` before issue 17 (a substring scan in price order), kept as
the baseline of ``python -m bench.search``; the API now answers from :mod:`serving.search_index`.

Candidates are the category's (or the whole catalogue's) price index within the price
range, in price order; a text query keeps those whose title or keywords contain each
of its words. At most ``max_scan`` candidates are read per request, so a rare word
costs a bounded amount: such a page may hold fewer items than asked and still have a
``next_cursor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from feature_store import catalogue
from serving.store import FeedStore

SCAN_CHUNK = 250
MAX_SCAN = 2000


@dataclass
class SearchPage:
    version: str | None
    items: list[dict[str, Any]]
    next_offset: int | None
    scanned: int
    reset: bool


def _bound(value: float | None, low: bool) -> str:
    if value is None:
        return "-inf" if low else "+inf"
    return repr(float(value))


async def search(
    store: FeedStore,
    *,
    category: str | None = None,
    min_price: float | None = None,
    max_price: float | None = None,
    text: str | None = None,
    limit: int = 20,
    offset: int = 0,
    pinned: str | None = None,
    max_scan: int = MAX_SCAN,
) -> SearchPage:
    """One page of items matching every filter, cheapest first (then by item id).

    ``text`` matches when each of its words is a substring of the title or of a keyword,
    ignoring case. ``pinned`` is the catalogue version ``offset`` belongs to: when that
    version is no longer current the page starts again at 0 and says ``reset``.
    """
    version = await store.execute("GET", catalogue.pointer_key())
    if version is None:
        return SearchPage(None, [], None, 0, False)
    reset = pinned is not None and pinned != version
    start = 0 if reset else offset
    index = catalogue.category_key(version, category) if category else catalogue.price_key(version)
    low, high = _bound(min_price, True), _bound(max_price, False)
    words = text.lower().split() if text else []

    def candidates_from(pos: int, count: int) -> tuple[Any, ...]:
        return ("ZRANGE", index, low, high, "BYSCORE", "LIMIT", pos, count)

    first_count = min(SCAN_CHUNK, max_scan) if words else limit + 1
    total, candidates = await store.pipeline([("ZCOUNT", index, low, high), candidates_from(start, first_count)])
    if not words:
        chosen = candidates[:limit]
        scanned = len(chosen)
        next_offset = start + limit if len(candidates) > limit else None
    else:
        chosen, scanned = [], 0
        while candidates:
            texts = await store.execute("HMGET", catalogue.text_key(version), *candidates)
            for item, haystack in zip(candidates, texts):
                scanned += 1
                if haystack is not None and all(w in haystack for w in words):
                    chosen.append(item)
                    if len(chosen) == limit:
                        break
            if len(chosen) == limit or scanned >= max_scan or len(candidates) < SCAN_CHUNK:
                break
            candidates = await store.execute(*candidates_from(start + scanned, min(SCAN_CHUNK, max_scan - scanned)))
        next_offset = start + scanned if start + scanned < total else None
    docs = await store.execute("HMGET", catalogue.items_key(version), *chosen) if chosen else []
    return SearchPage(version, [orjson.loads(d) for d in docs if d is not None], next_offset, scanned, reset)
