"""The API's reads from Redis: one round trip for a user's feed in the common case.

Keys come from :mod:`feature_store.online` (and :mod:`feature_store.catalogue`). A feed's
key holds its whole current body (replaced in one step by a publication), so a plain GET
never sees half a publication. Every script declares each key it touches in ``KEYS``, and
the keys of one call share a hash tag (docs/cluster.md): a user's keys, or the segment feeds.

A circuit breaker (:class:`serving.breaker.Breaker`) keeps a dead or hung Redis from
costing every request its own timeout: after a connection error or timeout, calls fail
at once for ``cooldown_s``, then the next call tries again, so the API recovers by itself.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import orjson
import redis.exceptions as rex

from feature_store import online
from feature_store.segments import ANY, fallbacks
from serving.breaker import Breaker
from serving.resp import AsyncRedis, Script, encode

COOLDOWN_S = 0.5
# Only the most recent history is excluded; older views may come back.
MAX_RECENT = 500

# KEYS: profile hash, recent-items zset, own feed (one hash tag: the user's); ARGV[1]: how
# many recent items. Returns {segment, recent items joined by NUL, feed or false}: one string
# for the recent items is parsed in C by str.split, where a list of them costs a Python step each.
_USER_VIEW = Script("""
return {
  redis.call('HGET', KEYS[1], 'segment'),
  table.concat(redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1), '\\0'),
  redis.call('GET', KEYS[3]) or false,
}
""")
SEPARATOR = "\0"
# The fallback chain of a segment too odd for key() to leave unescaped is not looked up for
# per-category feeds (as before: the caller then reads the chain's whole feeds itself).
_PLAIN_SEGMENT = re.compile(r"[\w.~+-]+\|[\w.~+-]+\|[\w.~+-]+", re.ASCII)
UNKNOWN_SEGMENT = "|".join((ANY, ANY, ANY))
# Users whose last segment is remembered for the filtered feeds' prefetch (FeedStore.filtered_view);
# the oldest is forgotten first. ~150 bytes each.
SEGMENT_MEMORY = 65_536
NOT_FETCHED = object()
# Segment and category feeds decoded, each worker's most recently used, keyed by their stored text
# (FeedStore.shared_feed); a 50-item feed is ~7 KB (its text and decoded), so ~28 MB at most: the
# simulator's ~260 segment feeds with 10 categories each are ~2,900 shared feeds.
SHARED_FEED_MEMORY = 4096


# Both cached: building a chain and its category feeds' keys (escaping each part) was ~15 µs of the
# ~85 µs that a category-filtered request costs more than an unfiltered one (cProfile under
# bench.serving's load). Segments come from the users' profiles and categories are known ones,
# so few distinct arguments; the caches are bounded all the same.
@lru_cache(maxsize=4096)
def fallback_chain(segment: str) -> tuple[str, ...]:
    """:func:`fallbacks` of ``segment`` (``any|any|any`` for none), as a tuple."""
    return tuple(fallbacks(segment or UNKNOWN_SEGMENT))


@lru_cache(maxsize=4096)
def category_feed_keys(segment: str, categories: tuple[str, ...]) -> tuple[str, ...]:
    """The keys of the category feeds of ``segment``'s chain, chain-major (``categories`` lower case)."""
    return tuple(online.feed_key(online.CATEGORY_FEED, online.category_feed_ident(s, c))
                 for s in fallback_chain(segment) for c in categories)


@lru_cache(maxsize=4096)
def category_feeds_mget(segment: str, categories: tuple[str, ...]) -> bytes:
    """The MGET of :func:`category_feed_keys`, encoded once (~1.5 µs a filtered request otherwise)."""
    return encode(("MGET", *category_feed_keys(segment, categories)))


class RedisUnavailable(rex.ConnectionError):
    """Redis failed less than the cooldown ago; not tried again yet."""


def _feed(raw: str | None) -> dict[str, Any] | None:
    """A stored feed (see :meth:`online.Feed.to_json`) as a dict, or None."""
    return orjson.loads(raw) if raw else None


class FeedStore:
    """Every Redis read of the API, behind one circuit breaker."""

    def __init__(self, client: AsyncRedis, cooldown_s: float = COOLDOWN_S) -> None:
        self.client = client
        self.breaker = Breaker(cooldown_s)
        # one node: a pipeline may hold the user's script and the segment feeds' MGET (two hash tags)
        self.prefetch = isinstance(client, AsyncRedis)
        self.last_segment: OrderedDict[str, str] = OrderedDict()
        self.decoded: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def shared_feed(self, raw: str | None) -> dict[str, Any] | None:
        """:func:`_feed` of a segment or category feed, which many users' requests read: the
        :data:`SHARED_FEED_MEMORY` most recently used are kept decoded, keyed by their text, so a
        new publication is a new key and none is ever stale. Callers only read them. Measured
        reason (docs/serving.md, "Filtered feeds: shared feeds decoded once"): decoding a 50-item
        feed costs ~3.4 µs, on every filtered request, where the lookup costs ~0.6 µs (hashing
        the text). An ``OrderedDict``: a plain dict's first key after many deletions at its front
        is found by a scan, which made the lookup cost more than the decoding."""
        if not raw:
            return None
        memory = self.decoded
        feed = memory.get(raw)
        if feed is None:
            feed = memory[raw] = orjson.loads(raw)
            if len(memory) > SHARED_FEED_MEMORY:
                memory.popitem(last=False)
        else:
            memory.move_to_end(raw)
        return feed

    async def _call(self, fn, *args):
        if self.breaker.is_open():
            raise RedisUnavailable(f"Redis failed less than {self.breaker.cooldown_s:g}s ago; retrying after that")
        try:
            return await fn(*args)
        except (rex.ConnectionError, rex.TimeoutError):
            self.breaker.trip()
            raise

    async def user_view(self, user_id: str) -> tuple[str | None, frozenset[str], dict[str, Any] | None]:
        """The user's segment, recently seen items and own current feed, in one round trip."""
        keys = online.user_view_keys(user_id)
        segment, recent, raw = await self._call(self.client.evalsha, _USER_VIEW, keys, (MAX_RECENT,))
        return segment, frozenset(recent.split(SEPARATOR)) if recent else frozenset(), _feed(raw)

    async def filtered_view(self, user_id: str, categories: Sequence[str]):
        """:meth:`user_view`, plus :meth:`category_feeds` of the segment the user had at their last
        filtered request, in the same round trip: ``(segment, recent, own feed, category feeds)``,
        the last :data:`NOT_FETCHED` when the segment was not known or has changed since (then the
        caller reads them itself, from the segment just read).

        Measured reason (docs/serving.md, "Filtered feeds: one round trip, category numbers"): the
        second round trip was ~1/4 of what a filtered request costs more than an unfiltered one. On one Redis
        node only: a Redis Cluster serves the two hash tags from different nodes, and
        :class:`serving.resp_cluster.ClusterRedis` keeps the two round trips."""
        guess = self.last_segment.get(user_id)  # only plain segments are remembered
        if guess is None or not self.prefetch:
            segment, recent, own = await self.user_view(user_id)
            self._remember(user_id, segment or UNKNOWN_SEGMENT)
            return segment, recent, own, NOT_FETCHED
        view = ("EVALSHA", _USER_VIEW.sha, 3, *online.user_view_keys(user_id), MAX_RECENT)
        try:
            (segment, recent, raw), bodies = await self._call(
                self.client.pipeline, (view, category_feeds_mget(guess, tuple(categories))))
        except rex.NoScriptError:  # a restarted Redis: user_view loads the script
            segment, recent, own = await self.user_view(user_id)
            return segment, recent, own, NOT_FETCHED
        seen = frozenset(recent.split(SEPARATOR)) if recent else frozenset()
        if (segment or UNKNOWN_SEGMENT) != guess:
            self._remember(user_id, segment or UNKNOWN_SEGMENT)
            return segment, seen, _feed(raw), NOT_FETCHED
        return segment, seen, _feed(raw), self._first_with_any(guess, categories, bodies)

    def _remember(self, user_id: str, segment: str) -> None:
        memory = self.last_segment
        if not _PLAIN_SEGMENT.fullmatch(segment):  # its category feeds are not looked up by key
            memory.pop(user_id, None)
            return
        memory[user_id] = segment
        if len(memory) > SEGMENT_MEMORY:
            memory.popitem(last=False)  # the oldest (a plain dict's first key is found by a scan)

    async def category_feeds(self, segment: str | None, categories: Sequence[str]) -> tuple[str, list] | None:
        """``(segment, its per-category feeds)`` for the first segment of ``segment``'s fallback chain
        that has any (``("", [])`` when none has), in one MGET; None when they could not be looked up
        there (then the caller reads the chain's whole feeds itself). Not in :meth:`user_view`'s
        script: the user's keys and the segment feeds have different hash tags (docs/cluster.md)."""
        chain_of = segment or UNKNOWN_SEGMENT
        if not _PLAIN_SEGMENT.fullmatch(chain_of):
            return None
        bodies = await self._call(self.client.execute, "MGET", *category_feed_keys(chain_of, tuple(categories)))
        return self._first_with_any(chain_of, categories, bodies)

    def _first_with_any(self, segment: str, categories: Sequence[str], bodies: list) -> tuple[str, list]:
        """From the MGET of :func:`category_feed_keys`: the first segment of the chain with any category
        feed, and its feeds (None where a category has none); ``("", [])`` when no segment has any."""
        width = len(categories)
        for n, found in enumerate(fallback_chain(segment)):
            raw = bodies[n * width:(n + 1) * width]
            if any(raw):
                return found, [self.shared_feed(r) for r in raw]
        return "", []

    async def feeds(self, refs: Sequence[tuple[str, str]]) -> Iterator[dict[str, Any] | None]:
        """The current segment feeds ``(kind, id)`` (kind ``seg`` or :data:`online.CATEGORY_FEED`: one
        hash tag; None where none is published), in one MGET; each is decoded only when the iterator
        reaches it, through :meth:`shared_feed` (read them only)."""
        if not refs:
            return iter(())
        keys = [online.feed_key(kind, ident) for kind, ident in refs]
        return map(self.shared_feed, await self._call(self.client.execute, "MGET", *keys))

    async def zset_pages(self, keys: Sequence[str], offset: int, count: int) -> list[tuple[int, list]]:
        """For each sorted set: its size and ``count`` rows ``(member, score)`` from ``offset``, best first."""
        commands = []
        for k in keys:
            commands.append(("ZCARD", k))
            commands.append(("ZREVRANGE", k, offset, offset + count - 1, "WITHSCORES"))
        out = await self._call(self.client.pipeline, commands)
        return [(out[i], _pairs(out[i + 1])) for i in range(0, len(out), 2)]

    async def zrevrange(self, key: str, start: int, count: int) -> list[tuple[str, float]]:
        return _pairs(await self._call(self.client.execute, "ZREVRANGE", key, start, start + count - 1, "WITHSCORES"))

    async def execute(self, *command: Any) -> Any:
        return await self._call(self.client.execute, *command)

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        return await self._call(self.client.pipeline, commands)

    async def close(self) -> None:
        await self.client.close()


def _pairs(flat: list[str]) -> list[tuple[str, float]]:
    return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]
