"""The online store in Redis: key layout, versioned feed publication, feed reads.

Every key is built by :func:`key`, which escapes each part, so no user input
reaches Redis unescaped.

Publication is versioned and flipped atomically:

* each feed is written, whole, under ``feedloop:feed:<kind>:<id>@<pub>`` (a JSON
  string, immutable, TTL = feed TTL + grace);
* one MULTI/EXEC then points ``feedloop:feed:<kind>:<id>`` at ``<pub>`` for every
  feed of the publication, with the feed TTL;
* a reader resolves pointer and body in one Lua call, so it never sees a mix of
  two publications nor a half-written feed.

Pointers only move forward: a publication older than the current one (a stale
backfill) is refused per feed by the same script.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import redis

PREFIX = "feedloop"
GRACE_S = 600
SAFE = "|-_.+"
# Parts made only of characters quote() leaves alone skip it (the common case, and hot in the API).
_UNESCAPED = re.compile(r"[A-Za-z0-9_.~|+-]*")

# The one pointer-raising script, for the feed pointers, the catalogue's pointer and the
# streaming sink's newest event time: each key takes ARGV[1] unless it holds a larger number
# (compared by the leading integer: publications are "<ms>"); ARGV[2] is a TTL in seconds, 0
# for none. Returns each key's previous value ('' when it had none).
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

_READ = """
local pub = redis.call('GET', KEYS[1])
if not pub then return false end
return redis.call('GET', KEYS[1] .. '@' .. pub)
"""


def key(*parts: object) -> str:
    """``feedloop:<part>:<part>...`` with every part percent-escaped (``:`` included)."""
    return ":".join([PREFIX] + [_escape(str(p)) for p in parts])


def is_plain(part: str) -> bool:
    """Whether :func:`key` leaves ``part`` as it is (no escaping)."""
    return _UNESCAPED.fullmatch(part) is not None


def _escape(part: str) -> str:
    return part if _UNESCAPED.fullmatch(part) else quote(part, safe=SAFE)


def feed_key(kind: str, ident: str) -> str:
    """Pointer key of a feed; ``kind`` is ``seg``, ``user`` or :data:`CATEGORY_FEED`."""
    return key("feed", kind, ident)


# A segment's feed within one category, published beside the segment feed (models.publish):
# the candidates of the category-filtered feeds (GET /v1/feeds/...?category=).
CATEGORY_FEED = "segcat"


def category_feed_ident(segment: str, category: str) -> str:
    """The id of ``segment``'s feed within ``category`` (feed kind :data:`CATEGORY_FEED`)."""
    return f"{segment}~{category.lower()}"


def user_profile_key(user_id: str) -> str:
    """Hash: ``segment``, ``gender``, ``age``, ``interests`` (comma-joined)."""
    return key("user", user_id, "profile")


def user_recent_key(user_id: str) -> str:
    """Sorted set of recently seen item ids, scored by event time (ms)."""
    return key("user", user_id, "recent")


def user_view_keys(user_id: str) -> tuple[str, str, str]:
    """The user's profile, recent-items and own-feed keys (the API's read of every user feed),
    the id escaped once rather than three times: the same keys as the three functions give."""
    user = _escape(str(user_id))
    return (f"{PREFIX}:user:{user}:profile", f"{PREFIX}:user:{user}:recent", f"{PREFIX}:feed:user:{user}")


def user_stats_key(user_id: str) -> str:
    """Hash of per-user counters by event type; TTL 5 minutes."""
    return key("user", user_id, "stats")


def trending_key(window: str) -> str:
    """Sorted set of item ids by weighted events in the window (``1m`` or ``10m``)."""
    return key("trending", window)


def popular_key() -> str:
    """Sorted set of item ids by all-time weighted events."""
    return key("popular")


@dataclass
class Feed:
    """A ranked list of items, with the model version that made it."""

    items: list[str]
    model_version: str
    generated_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    scores: list[float] = field(default_factory=list)
    publication: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "items": self.items,
                "scores": [round(s, 6) for s in self.scores],
                "model_version": self.model_version,
                "generated_at_ms": self.generated_at_ms,
                "publication": self.publication,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Feed":
        data = json.loads(raw)
        return cls(
            items=list(data["items"]),
            model_version=str(data["model_version"]),
            generated_at_ms=int(data["generated_at_ms"]),
            scores=list(data.get("scores") or []),
            publication=str(data.get("publication", "")),
        )


def raise_pointers(client, keys: Sequence[str], value: int | str, ttl_s: int = 0) -> list[str]:
    """Set every key to ``value`` unless it holds a larger number (one atomic script); returns the old values.

    ``client`` is a redis-py client or pipeline (a pipeline returns its results at ``execute``)."""
    return client.eval(RAISE, len(keys), *keys, value, ttl_s)


def new_publication_id(now_ms: int | None = None) -> str:
    """Monotonic publication id: milliseconds, so a later publication sorts higher."""
    return str(now_ms if now_ms is not None else int(time.time() * 1000))


def publish_feeds(
    client: redis.Redis,
    feeds: Mapping[tuple[str, str], Feed],
    ttl_s: int = 3600,
    publication: str | None = None,
) -> str:
    """Write every feed under a new publication, then flip all pointers in one step.

    ``feeds`` maps ``(kind, id)`` to a :class:`Feed`. Returns the publication id.
    """
    pub = publication or new_publication_id()
    pointers = [feed_key(kind, ident) for kind, ident in feeds]
    body = client.pipeline(transaction=False)
    for (kind, ident), feed in feeds.items():
        feed.publication = pub
        body.set(f"{feed_key(kind, ident)}@{pub}", feed.to_json(), ex=ttl_s + GRACE_S)
    body.execute()
    if pointers:
        raise_pointers(client, pointers, pub, ttl_s)
    return pub


def read_feed(client: redis.Redis, kind: str, ident: str) -> Feed | None:
    """The current feed, or None when none is published (or it expired)."""
    raw = client.eval(_READ, 1, feed_key(kind, ident))
    return Feed.from_json(raw) if raw else None


def read_feeds(client: redis.Redis, refs: Sequence[tuple[str, str]]) -> list[Feed | None]:
    """Several current feeds in one round trip."""
    pipe = client.pipeline(transaction=False)
    for kind, ident in refs:
        pipe.eval(_READ, 1, feed_key(kind, ident))
    return [Feed.from_json(raw) if raw else None for raw in pipe.execute()]
