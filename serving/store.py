"""The API's reads from Redis: one round trip for a user's feed in the common case.

Keys come from :mod:`feature_store.online` (and :mod:`feature_store.catalogue`). The
scripts follow a feed pointer the way :func:`online.read_feed` does
(``<pointer>@<publication>`` in the same script call), so a reader never sees half a
publication.

A circuit breaker (:class:`serving.breaker.Breaker`) keeps a dead or hung Redis from
costing every request its own timeout: after a connection error or timeout, calls fail
at once for ``cooldown_s``, then the next call tries again, so the API recovers by itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import redis.exceptions as rex

from feature_store import online
from serving.breaker import Breaker
from serving.resp import AsyncRedis, Script

COOLDOWN_S = 0.5
# Only the most recent history is excluded; older views may come back.
MAX_RECENT = 500

# KEYS: profile hash, recent-items zset, feed pointer; ARGV[1]: how many recent items.
# Returns {segment, recent items joined by NUL, feed or false}: one string for the recent
# items is parsed in C by str.split, where a list of them costs a Python step each.
_USER_VIEW = Script("""
local pub = redis.call('GET', KEYS[3])
return {
  redis.call('HGET', KEYS[1], 'segment'),
  table.concat(redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1), '\\0'),
  pub and redis.call('GET', KEYS[3] .. '@' .. pub) or false,
}
""")
SEPARATOR = "\0"

# The same, plus the per-category feeds (feature_store.online.CATEGORY_FEED) of the first
# segment of the user's fallback chain (feature_store.segments.fallbacks, walked here the same
# way) that has any: ARGV[2] their key prefix, ARGV[3..] the categories. Returns
# {segment, recent, own feed, that segment ('' when none has any), its feeds...}; with a
# segment not of three parts made of characters key() leaves unescaped, only the first three.
_USER_VIEW_CATEGORIES = Script("""
local segment = redis.call('HGET', KEYS[1], 'segment')
local pub = redis.call('GET', KEYS[3])
local out = {
  segment,
  table.concat(redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1), '\\0'),
  pub and redis.call('GET', KEYS[3] .. '@' .. pub) or false,
}
local g, b, i = string.match(segment or 'any|any|any', '^([%w_.~+-]+)|([%w_.~+-]+)|([%w_.~+-]+)$')
if not g then return out end
local chain = {g .. '|' .. b .. '|' .. i, g .. '|' .. b .. '|any', g .. '|any|any', 'any|any|any'}
for n = 1, #chain do
  local bodies, found = {}, false
  for a = 3, #ARGV do
    local key = ARGV[2] .. chain[n] .. '~' .. ARGV[a]
    local p = redis.call('GET', key)
    bodies[#bodies + 1] = p and redis.call('GET', key .. '@' .. p) or false
    found = found or (bodies[#bodies] ~= false)
  end
  if found then
    out[4] = chain[n]
    for a = 1, #bodies do out[4 + a] = bodies[a] end
    return out
  end
end
out[4] = ''
return out
""")

# KEYS: feed pointers. Returns each current feed, or false.
_READ_FEEDS = Script("""
local out = {}
for i = 1, #KEYS do
  local pub = redis.call('GET', KEYS[i])
  out[i] = pub and redis.call('GET', KEYS[i] .. '@' .. pub) or false
end
return out
""")


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

    async def user_view_categories(self, user_id: str, categories: Sequence[str]) -> tuple[
            str | None, frozenset[str], dict[str, Any] | None, tuple[str, list] | None]:
        """:meth:`user_view` and, in the same round trip, ``(segment, its per-category feeds)`` for the
        first segment of the user's fallback chain that has any (``("", [])`` when none has), or
        None when they could not be looked up there (then the caller reads them itself)."""
        keys = (online.user_profile_key(user_id), online.user_recent_key(user_id), online.feed_key("user", user_id))
        prefix = online.feed_key(online.CATEGORY_FEED, "")
        out = await self._call(self.client.evalsha, _USER_VIEW_CATEGORIES, keys, (MAX_RECENT, prefix, *categories))
        segment, recent, raw = out[:3]
        by_category = (out[3], [_feed(r) for r in out[4:]]) if len(out) > 3 else None
        return segment, frozenset(recent.split(SEPARATOR)) if recent else frozenset(), _feed(raw), by_category

    async def feeds(self, refs: Sequence[tuple[str, str]]) -> Iterator[dict[str, Any] | None]:
        """The current feeds ``(kind, id)`` (None where none is published), in one round trip;
        each is decoded only when the iterator reaches it."""
        keys = [online.feed_key(kind, ident) for kind, ident in refs]
        return map(_feed, await self._call(self.client.evalsha, _READ_FEEDS, keys))

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
