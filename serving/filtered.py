"""Category-filtered feeds: ``GET /v1/feeds/users/{id}?category=a,b`` (and on segment feeds).

A filtered page is a slice of one merged list of candidates, each item once, in this order:

1. the user's own feed, restricted to the categories (user endpoint only);
2. for each segment of the user's fallback chain (on the segment endpoint: that segment
   only), its per-category feeds (published beside the segment feed by
   ``models.publish``; several categories merged by score), or, where none were
   published, its segment feed restricted to the categories;
3. trending (1m, then 10m), then popular, restricted to the categories (the top
   :data:`LIVE_SCAN` of each ranking).

Items the user saw recently and the client's ``exclude`` ids never enter the list. Each
item says its ``source``; the page's ``sources`` lists them in order. Item categories come
from the worker's copy of the current catalogue (:mod:`serving.catalogues`), as the set of
the wanted categories' item ids.

The page's ``feed_id`` is the first published feed's (``user:<id>@<pub>``, else the
segment's) with ``?category=...`` appended: the cursor pins it, so a new publication of
that feed, or other categories, start the pages again (``cursor_reset``).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from itertools import compress
from typing import Any

from feature_store import online
from serving.pages import encode_cursor, feed_id_of, iso, now_ms
from serving.store import NOT_FETCHED, UNKNOWN_SEGMENT, FeedStore, fallback_chain

LIVE_SCAN = 500
LIVE = (("trending", "1m"), ("trending", "10m"), ("popular", None))


def feed_rows(feed: Mapping[str, Any]) -> Iterable[tuple[str, float | None]]:
    items, scores = feed["items"], feed.get("scores") or []
    if len(scores) >= len(items):
        return zip(items, scores)
    return zip(items, [*scores, *[None] * (len(items) - len(scores))])


def merged_by_score(feeds: list[Mapping[str, Any]]) -> list[tuple[str, float | None]]:
    """The rows of several feeds of one publication, best score first (a single feed keeps its order)."""
    if len(feeds) == 1:
        return list(feed_rows(feeds[0]))
    rows = [row for feed in feeds for row in feed_rows(feed)]
    return sorted(rows, key=lambda r: -r[1] if r[1] is not None else float("inf"))


class Candidates:
    """The merged list: items in ``allowed`` (the item ids of the wanted categories), each once,
    none skipped; it stops growing at ``need`` entries (a page and one more).

    ``codes``: the wanted categories' numbers in catalogue ``catalogue``. A feed published with
    its items' numbers in that same catalogue is filtered by them (:meth:`add_feed`).

    ``entries`` are the page's items as served (``item_id``, ``score``, ``position`` in the merged
    list, ``source``), built once as they are taken; ``blocks`` the ``(first position, source)``
    of each run of entries from one source, so a page names its sources without a pass over
    its items (measured: docs/serving.md, "Filtered feeds: items built once")."""

    def __init__(self, allowed: Container[str], skip: frozenset[str], need: int = 1 << 30,
                 codes: frozenset[int] | None = None, catalogue: str | None = None) -> None:
        self.allowed = allowed
        self.taken = set(skip)
        self.entries: list[dict[str, Any]] = []
        self.blocks: list[tuple[int, str]] = []
        self.need = need
        self.codes, self.catalogue = codes, catalogue

    def add(self, rows: Iterable[tuple[str, float | None]], source: str) -> None:
        allowed = self.allowed
        self._take((row for row in rows if row[0] in allowed), source)

    def add_feed(self, feed: Mapping[str, Any], source: str) -> None:
        """:meth:`add` of a published feed's rows, in its order. Measured reason for a second
        path (docs/serving.md, "Filtered feeds: one round trip, category numbers"): testing each
        item id against the categories' item set (10,000 ids on the bench's catalogue, so a
        cache miss or two each) was ~25 µs of a filtered request, ~9–12 µs with the feed's
        category numbers tested against a set of a few, in C (compress over map and zip): only
        the items that pass reach Python."""
        items, scores = feed["items"], feed.get("scores") or ()
        if len(scores) < len(items):
            scores = [*scores, *[None] * (len(items) - len(scores))]
        numbers = feed.get("category_codes")
        if (self.codes is not None and numbers and feed.get("catalogue") == self.catalogue
                and len(numbers) == len(items)):
            keep = map(self.codes.__contains__, numbers)
        else:  # no numbers, or those of another catalogue version than the worker's
            keep = map(self.allowed.__contains__, items)
        self._take(compress(zip(items, scores), keep), source)

    def _take(self, rows: Iterable[tuple[str, float | None]], source: str) -> None:
        """Appends the rows (in the categories already) not taken yet, until ``need``; reads no
        row past that (``rows`` is lazy)."""
        entries = self.entries
        position, need = len(entries), self.need
        if position >= need:
            return
        first, taken, append = position, self.taken, entries.append
        for item, score in rows:
            if item not in taken:
                taken.add(item)
                append({"item_id": item, "score": score, "position": position, "source": source})
                position += 1
                if position >= need:
                    break
        if position > first and (not self.blocks or self.blocks[-1][1] != source):
            self.blocks.append((first, source))

    def sources(self, start: int, stop: int) -> list[str]:
        """The sources of the entries at positions ``start`` to ``stop`` (excluded), in order, each once."""
        if start >= stop:
            return []
        blocks = self.blocks
        ends = [first for first, _ in blocks[1:]] + [len(self.entries)]
        return list(dict.fromkeys(source for (first, source), end in zip(blocks, ends) if first < stop and end > start))

    @property
    def full(self) -> bool:
        return len(self.entries) >= self.need

    def __len__(self) -> int:
        return len(self.entries)


def _meta(source: str, ident: str | None, feed: Mapping[str, Any] | None) -> dict[str, Any]:
    if feed is None:
        now = now_ms()
        return {"source": source, "feed_id": "popular:all", "model_version": None, "generated_at_ms": now,
                "publication": None}
    publication = str(feed.get("publication") or "") or None
    version = feed.get("model_version")
    return {"source": source, "feed_id": feed_id_of("user" if source == "user" else "seg", ident, publication),
            "model_version": None if version is None else str(version),
            "generated_at_ms": int(feed["generated_at_ms"]), "publication": publication}


def filtered_page(candidates: Candidates, meta: dict[str, Any], categories: list[str], pinned: str | None,
                  offset: int, limit: int, segment: str | None) -> dict[str, Any]:
    """The page at ``offset`` of the merged list (pure)."""
    feed_id = f"{meta['feed_id']}?category={','.join(categories)}"
    reset = pinned is not None and pinned != feed_id
    start = 0 if reset else offset
    rows = candidates.entries[start:start + limit]
    sources = candidates.sources(start, start + len(rows))
    nxt = start + limit if len(candidates) > start + limit else None
    return {
        "source": sources[0] if sources else meta["source"],
        "segment": segment,
        "window": None,
        "feed_id": feed_id,
        "model_version": meta["model_version"],
        "generated_at": iso(meta["generated_at_ms"]),
        "generated_at_ms": meta["generated_at_ms"],
        "publication": meta["publication"],
        "items": rows,
        "next_cursor": encode_cursor(feed_id, nxt) if nxt is not None else None,
        "cursor_reset": reset,
        "categories": categories,
        "sources": sources,
    }


async def _add_segments(store: FeedStore, candidates: Candidates, chain: list[str],
                        categories: list[str]) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """Adds the chain's segment candidates; returns (first feed found, its segment, first segment used)."""
    refs = []
    for segment in chain:
        refs.append(("seg", segment))
        refs += [(online.CATEGORY_FEED, online.category_feed_ident(segment, c)) for c in categories]
    feeds = iter(await store.feeds(refs))
    first, first_segment, used = None, None, None
    for segment in chain:
        if candidates.full:
            break
        whole = next(feeds)
        by_category = [f for f in (next(feeds) for _ in categories) if f is not None]
        if whole is None and not by_category:
            continue
        if first is None:
            first, first_segment = whole or by_category[0], segment
        before = len(candidates)
        if len(by_category) > 1:
            candidates.add(merged_by_score(by_category), "segment")
        else:
            candidates.add_feed(by_category[0] if by_category else whole, "segment")
        if used is None and len(candidates) > before:
            used = segment
    return first, first_segment, used


async def _user_start(store: FeedStore, user_id: str, categories: list[str], exclude: frozenset[str],
                      allowed: Container[str], need: int, codes: frozenset[int] | None, catalogue: str | None):
    """(candidates from the user's own feed and the category feeds of the first segment of their
    chain that has any, meta, segments still to read, segment used). On one Redis node, one round
    trip when the user's segment is the one of their last filtered request (the usual case:
    :meth:`FeedStore.filtered_view`); else, and always on a Redis Cluster (two hash tags, which no
    one script may read together: docs/cluster.md), one more for the chain's category feeds
    unless the own feed filled the page."""
    if all(online.is_plain(c) for c in categories):
        segment, recent, own, by_category = await store.filtered_view(user_id, categories)
    else:
        (segment, recent, own), by_category = await store.user_view(user_id), None
    chain = fallback_chain(segment or UNKNOWN_SEGMENT)
    candidates = Candidates(allowed, recent | exclude if exclude else recent, need, codes, catalogue)
    meta, used = None, None
    if own is not None:
        candidates.add_feed(own, "user")
        meta = _meta("user", user_id, own)
    if candidates.full:
        by_category = None
    elif by_category is NOT_FETCHED:
        by_category = await store.category_feeds(segment, categories)
    if by_category is not None and by_category[0] in chain:
        found_segment, feeds = by_category[0], [f for f in by_category[1] if f is not None]
        before = len(candidates)
        if len(feeds) > 1:
            candidates.add(merged_by_score(feeds), "segment")
        else:
            candidates.add_feed(feeds[0], "segment")
        meta = meta or _meta("segment", found_segment, feeds[0])
        used = found_segment if len(candidates) > before else None
        # the segments before it have no category feeds (their whole feeds are read only if still short)
    return candidates, meta, chain, used


async def resolve_filtered(store: FeedStore, allowed: Container[str], categories: list[str], *,
                           user_id: str | None = None, segment: str | None = None, pinned: str | None = None,
                           offset: int = 0, limit: int = 20,
                           exclude: frozenset[str] = frozenset(), codes: frozenset[int] | None = None,
                           catalogue: str | None = None) -> dict[str, Any] | None:
    """A filtered page for ``user_id`` (own feed, segment chain, live rankings) or for ``segment``
    (that segment's feeds, live rankings); None when ``segment`` has no feed published.
    ``allowed``: the item ids of ``categories`` (:meth:`SearchIndex.members_of`)."""
    need = offset + limit + 1  # one more tells whether there is a next page
    if user_id is not None:
        candidates, meta, chain, used = await _user_start(store, user_id, categories, exclude, allowed, need,
                                                          codes, catalogue)
    else:
        candidates, meta, chain, used = Candidates(allowed, exclude, need, codes, catalogue), None, [segment], None
    if not candidates.full and chain:
        first, first_segment, used_later = await _add_segments(store, candidates, chain, categories)
        if user_id is None and first is None:
            return None
        if meta is None and first is not None:
            meta = _meta("segment", first_segment, first)
        used = used or used_later
    if not candidates.full:
        keys = [online.trending_key(w) if w else online.popular_key() for _, w in LIVE]
        for (source, _), (_, rows) in zip(LIVE, await store.zset_pages(keys, 0, LIVE_SCAN)):
            candidates.add(rows, source)
    return filtered_page(candidates, meta or _meta("popular", None, None), categories, pinned, offset, limit, used)
