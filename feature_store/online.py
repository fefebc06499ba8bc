"""The online store in Redis: key layout, versioned feed publication, feed reads.

Every key is built by :func:`key`, which escapes each part, so no user input
reaches Redis unescaped.

**Hash tags (Redis Cluster).** Keys that meet in one script, transaction or multi-key
command carry the same hash tag, the second part of the key (``feedloop:{<tag>}:...``), so
they hash to one slot; every script declares each key it touches in ``KEYS``. Groups:

* ``{seg}``: every segment feed and per-category segment feed (flipped together, read
  together along a fallback chain);
* ``{u<n>}``, n = crc32(user id) mod :data:`USER_BUCKETS`: a user's profile, recent items,
  stats and own feed (read in one script by the API, written per bucket by the sink);
* ``{live}``: trending windows and panes, popular, the streaming sink's markers.

Keys that never meet (the catalogue, the publication summary) carry no tag and spread
over the cluster. docs/cluster.md has the rules and what each group costs.

Publication is versioned and flipped atomically:

* each feed is written, whole, under ``<feed key>@<pub>`` (a JSON string whose first
  field is the publication, TTL = feed TTL + grace);
* one script per hash tag (all segment feeds in one) then renames each of them onto its
  feed key, with the feed TTL, so a reader's plain GET of the feed key never sees a mix of
  two publications nor a half-written feed, and the segment feeds change together.

Feeds only move forward: a publication older than the current one (a stale backfill)
is refused per feed by the same script.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import quote

import redis
from redis.crc import key_slot

PREFIX = "feedloop"
GRACE_S = 600
SAFE = "|-_.+"
# Parts made only of characters quote() leaves alone skip it (the common case, and hot in the API).
_UNESCAPED = re.compile(r"[A-Za-z0-9_.~|+-]*")

SEGMENTS = "seg"  # hash tag of every segment feed and per-category segment feed
LIVE = "live"  # hash tag of the live rankings and the streaming sink's markers
# Users' keys are spread over this many hash tags; a change moves every user key (docs/cluster.md).
USER_BUCKETS = 512

# The one pointer-raising script, for the catalogue's pointer and the streaming sink's newest
# event time: each key takes ARGV[1] unless it holds a larger number (compared by the leading
# integer: publications are "<ms>"); ARGV[2] is a TTL in seconds, 0 for none. Returns each
# key's previous value ('' when it had none).
RAISE = """
local function num(v) return tonumber(string.match(v, '^(-?%d+)')) end
local new, ttl, before = num(ARGV[1]), tonumber(ARGV[2]), {}
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  before[i] = cur or ''
  if (not cur) or num(cur) <= new then
    if ttl > 0 then redis.call('SET', KEYS[i], ARGV[1], 'EX', ttl) else redis.call('SET', KEYS[i], ARGV[1]) end
  end
end
return before
"""

# The feed flip. KEYS: pairs (feed key, its staged body <feed key>@<pub>); ARGV[1] the
# publication, ARGV[2] the feed TTL. A staged body replaces its feed unless the feed holds a
# newer publication (read from the body's first bytes: Feed.to_json writes it first), then it
# is dropped. Returns how many feeds were replaced.
FLIP = """
local new, ttl, flipped = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then
    local head = redis.call('GETRANGE', KEYS[i], 0, 47)
    local cur = tonumber(string.match(head, '^{"publication":"(%d+)"'))
    if (not cur) or cur <= new then
      redis.call('RENAME', KEYS[i + 1], KEYS[i])
      redis.call('EXPIRE', KEYS[i], ttl)
      flipped = flipped + 1
    else
      redis.call('DEL', KEYS[i + 1])
    end
  end
end
return flipped
"""


def key(*parts: object, tag: str | None = None) -> str:
    """``feedloop:<part>:<part>...`` with every part percent-escaped (``:`` included); with
    ``tag``, ``feedloop:{<tag>}:<part>...`` (the hash tag: the keys of one tag share a slot)."""
    head = f"{PREFIX}:{{{_escape(tag)}}}" if tag is not None else PREFIX
    return ":".join([head] + [_escape(str(p)) for p in parts])


def is_plain(part: str) -> bool:
    """Whether :func:`key` leaves ``part`` as it is (no escaping)."""
    return _UNESCAPED.fullmatch(part) is not None


def _escape(part: str) -> str:
    return part if _UNESCAPED.fullmatch(part) else quote(part, safe=SAFE)


def user_tag(user_id: str) -> str:
    """The hash tag of a user's keys: one of :data:`USER_BUCKETS`, the same in every process."""
    return f"u{zlib.crc32(str(user_id).encode('utf-8')) % USER_BUCKETS}"


def feed_key(kind: str, ident: str) -> str:
    """Key of a feed (its current body); ``kind`` is ``seg``, ``user`` or :data:`CATEGORY_FEED`."""
    return key("feed", kind, ident, tag=user_tag(ident) if kind == "user" else SEGMENTS)


# A segment's feed within one category, published beside the segment feed (models.publish):
# the candidates of the category-filtered feeds (GET /v1/feeds/...?category=).
CATEGORY_FEED = "segcat"


def category_feed_ident(segment: str, category: str) -> str:
    """The id of ``segment``'s feed within ``category`` (feed kind :data:`CATEGORY_FEED`)."""
    return f"{segment}~{category.lower()}"


def user_profile_key(user_id: str) -> str:
    """Hash: ``segment``, ``gender``, ``age``, ``interests`` (comma-joined)."""
    return key("user", user_id, "profile", tag=user_tag(user_id))


def user_recent_key(user_id: str) -> str:
    """Sorted set of recently seen item ids, scored by event time (ms)."""
    return key("user", user_id, "recent", tag=user_tag(user_id))


def user_view_keys(user_id: str) -> tuple[str, str, str]:
    """The user's profile, recent-items and own-feed keys (the API's read of every user feed),
    the id escaped once rather than three times: the same keys as the three functions give."""
    user = _escape(str(user_id))
    head = f"{PREFIX}:{{{user_tag(user_id)}}}"
    return (f"{head}:user:{user}:profile", f"{head}:user:{user}:recent", f"{head}:feed:user:{user}")


def user_stats_key(user_id: str) -> str:
    """Hash of per-user counters by event type; TTL 5 minutes."""
    return key("user", user_id, "stats", tag=user_tag(user_id))


def trending_key(window: str) -> str:
    """Sorted set of item ids by weighted events in the window (``1m`` or ``10m``)."""
    return key("trending", window, tag=LIVE)


def popular_key() -> str:
    """Sorted set of item ids by all-time weighted events."""
    return key("popular", tag=LIVE)


T = TypeVar("T")


def is_cluster(client) -> bool:
    """Whether ``client`` (a redis-py client or pipeline) talks to a Redis Cluster."""
    from redis.cluster import ClusterPipeline, RedisCluster

    return isinstance(client, (RedisCluster, ClusterPipeline))


def slot_groups(client, items: Iterable[T], key_of: Callable[[T], str]) -> list[list[T]]:
    """``items`` in groups whose keys may meet in one script or transaction: by hash slot on a
    Redis Cluster (in slot order), all in one group on a single Redis. Order is kept within a group."""
    items = list(items)
    if not is_cluster(client):
        return [items] if items else []
    groups: dict[int, list[T]] = {}
    for item in items:
        groups.setdefault(key_slot(key_of(item).encode("utf-8")), []).append(item)
    return [groups[slot] for slot in sorted(groups)]


@dataclass
class Feed:
    """A ranked list of items, with the model version that made it."""

    items: list[str]
    model_version: str
    generated_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    scores: list[float] = field(default_factory=list)
    publication: str = ""
    # Each item's category as its number in catalogue ``catalogue``'s categories
    # (feature_store.catalogue.category_codes), for the category-filtered feeds; empty: not known.
    category_codes: list[int] = field(default_factory=list)
    catalogue: str = ""

    def to_json(self) -> str:
        # The publication first: the flip script reads it from the stored body's first bytes.
        body = {
            "publication": self.publication,
            "items": self.items,
            "scores": [round(s, 6) for s in self.scores],
            "model_version": self.model_version,
            "generated_at_ms": self.generated_at_ms,
        }
        if self.category_codes:
            body.update(category_codes=self.category_codes, catalogue=self.catalogue)
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Feed":
        data = json.loads(raw)
        return cls(
            items=list(data["items"]),
            model_version=str(data["model_version"]),
            generated_at_ms=int(data["generated_at_ms"]),
            scores=list(data.get("scores") or []),
            publication=str(data.get("publication", "")),
            category_codes=list(data.get("category_codes") or []),
            catalogue=str(data.get("catalogue") or ""),
        )


def raise_pointers(client, keys: Sequence[str], value: int | str, ttl_s: int = 0) -> list[str]:
    """Set every key to ``value`` unless it holds a larger number (one atomic script); returns the old values.

    ``client`` is a redis-py client or pipeline (a pipeline returns its results at ``execute``).
    On a Redis Cluster the keys must share a hash slot. (``execute_command``: redis-py's cluster
    pipelines have no ``eval``, but route an EVAL by its keys.)"""
    return client.execute_command("EVAL", RAISE, len(keys), *keys, value, ttl_s)


def new_publication_id(now_ms: int | None = None) -> str:
    """Monotonic publication id: milliseconds, so a later publication sorts higher."""
    return str(now_ms if now_ms is not None else int(time.time() * 1000))


def publish_feeds(
    client: redis.Redis,
    feeds: Mapping[tuple[str, str], Feed],
    ttl_s: int = 3600,
    publication: str | None = None,
) -> str:
    """Write every feed under a new publication, then make them current in one step per hash tag:
    every segment and category feed together (``{seg}``), user feeds per bucket. No reader reads two
    users' feeds, so none sees half a publication; the same calls run on a Redis Cluster, and no
    script holds Redis for the whole publication (20,000 user and 2,600 category feeds: the longest
    flip took 14 ms, one script for all of them 94-149 ms).

    ``feeds`` maps ``(kind, id)`` to a :class:`Feed`. Returns the publication id.
    """
    pub = publication or new_publication_id()
    pairs = []
    body = client.pipeline(transaction=False)
    for (kind, ident), feed in feeds.items():
        feed.publication = pub
        current = feed_key(kind, ident)
        body.set(f"{current}@{pub}", feed.to_json(), ex=ttl_s + GRACE_S)
        pairs.append((current, f"{current}@{pub}"))
    body.execute()
    by_tag: dict[str, list[str]] = {}
    for current, staged in pairs:
        by_tag.setdefault(hash_tag(current), []).extend((current, staged))
    flips = client.pipeline(transaction=False)
    for keys in by_tag.values():
        flips.execute_command("EVAL", FLIP, len(keys), *keys, pub, ttl_s)
    flips.execute()
    return pub


def read_feed(client: redis.Redis, kind: str, ident: str) -> Feed | None:
    """The current feed, or None when none is published (or it expired)."""
    raw = client.get(feed_key(kind, ident))
    return Feed.from_json(raw) if raw else None


def read_feeds(client: redis.Redis, refs: Sequence[tuple[str, str]]) -> list[Feed | None]:
    """Several current feeds in one round trip (one per node on a Redis Cluster)."""
    pipe = client.pipeline(transaction=False)
    for kind, ident in refs:
        pipe.get(feed_key(kind, ident))
    return [Feed.from_json(raw) if raw else None for raw in pipe.execute()]


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis hashes to pick its slot: the first ``{...}`` when not empty, else the key."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1:end] if end > start + 1 else key
