"""`feedloop import-movielens PATH`: ML-100K users, items and ratings into feedloop.

Reads the ML-100K files (latin-1): ``u.user`` (id|age|gender|occupation|zip),
``u.item`` (id|title|release date|video date|url|19 genre flags), ``u.genre``
(name|index) and ``u.data`` (user, item, rating, unix seconds; tab-separated).

* Users -> ``feedloop.users``: ``ml<id>``, gender, age, occupation, and as
  interests their top genres (most ratings of 4 or 5 first; ties by mean rating,
  then name), at most three; created at their first rating.
* Items -> ``feedloop.items``: ``ml<id>``, title, category = the first of its
  genres, keywords = all its genres (lower case, as in u.genre), no price,
  created at the release date (midnight UTC; NULL when the file has none).
* Ratings -> events on the events topic, at their original time (ms): every
  rating is a ``view``; a 4 adds a ``like`` and a 5 a ``purchase``. The rating is
  kept as the extra field ``rating``. Event ids are uuid5 of (user, item, type),
  so importing again re-sends the same ids and the exactly-once sink keeps one.

Both tables are replaced (INSERT OVERWRITE); events are sent in time order by an
idempotent producer with acks=all.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from feedloop.events import SCHEMA_VERSION
from feedloop.settings import get_settings
from sources.simulator import Item, User

ENCODING = "latin-1"
ID_PREFIX = "ml"
# uuid5 namespace of imported events: the same rating always gets the same event ids
EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://grouplens.org/datasets/movielens/100k/feedloop-events")
EVENTS_BY_RATING = {1: ("view",), 2: ("view",), 3: ("view",), 4: ("view", "like"), 5: ("view", "purchase")}
LIKED_RATING = 4
MAX_INTERESTS = 3
UNKNOWN_GENRE = "unknown"
REPORT_EVERY_S = 2.0
SOURCE = "movielens-100k"


class MovieLensError(ValueError):
    """The files are missing or not in ML-100K format; the message names file and line."""


@dataclass(frozen=True)
class Rating:
    user: str
    item: str
    rating: int
    ts_ms: int


def _lines(path: Path):
    if not path.exists():
        raise MovieLensError(f"{path} not found (expected ML-100K files u.user, u.item, u.genre, u.data)")
    with path.open(encoding=ENCODING) as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def read_genres(path: Path) -> list[str]:
    """Genre names in flag order (u.genre: name|index), lower case."""
    genres: dict[int, str] = {}
    for number, line in _lines(path):
        name, _, index = line.rpartition("|")
        if not name or not index.isdigit():
            raise MovieLensError(f"{path}:{number}: expected name|index, got {line!r}")
        genres[int(index)] = name.strip().lower()
    if sorted(genres) != list(range(len(genres))):
        raise MovieLensError(f"{path}: genre indexes are not 0..{len(genres) - 1}")
    return [genres[i] for i in range(len(genres))]


def parse_release_date(text: str) -> int | None:
    """'01-Jan-1995' -> ms since epoch at midnight UTC; None when empty."""
    if not text.strip():
        return None
    day = datetime.strptime(text.strip(), "%d-%b-%Y").replace(tzinfo=timezone.utc)
    return int(day.timestamp() * 1000)


def read_items(path: Path, genres: list[str]) -> list[Item]:
    """Items with category = first genre, keywords = all genres."""
    items = []
    for number, line in _lines(path):
        fields = line.split("|")
        if len(fields) != 5 + len(genres):
            raise MovieLensError(f"{path}:{number}: expected {5 + len(genres)} fields, got {len(fields)}")
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise MovieLensError(f"{path}:{number}: genre flags must be 0 or 1")
        keywords = [g for g, flag in zip(genres, flags) if flag == "1"] or [UNKNOWN_GENRE]
        try:
            created = parse_release_date(fields[2])
        except ValueError:
            raise MovieLensError(f"{path}:{number}: bad release date {fields[2]!r}") from None
        items.append(Item(item_id=ID_PREFIX + fields[0], title=fields[1], category=keywords[0],
                          keywords=keywords, price=None, created_at=created))
    return items


def read_users(path: Path) -> list[User]:
    """Users without interests yet (see :func:`interests_by_user`)."""
    users = []
    for number, line in _lines(path):
        fields = line.split("|")
        if len(fields) != 5 or not fields[0].isdigit() or not fields[1].isdigit():
            raise MovieLensError(f"{path}:{number}: expected id|age|gender|occupation|zip, got {line!r}")
        gender = fields[2].strip().upper() or None
        users.append(User(user_id=ID_PREFIX + fields[0], gender=gender if gender in ("F", "M") else None,
                          age=int(fields[1]) or None, occupation=fields[3].strip() or None, interests=[]))
    return users


def read_ratings(path: Path, limit: int = 0) -> list[Rating]:
    """The first ``limit`` ratings of u.data (all when 0)."""
    ratings = []
    for number, line in _lines(path):
        if limit and len(ratings) >= limit:
            break
        fields = line.split("\t")
        if len(fields) != 4 or not all(f.strip().isdigit() for f in fields):
            raise MovieLensError(f"{path}:{number}: expected user<TAB>item<TAB>rating<TAB>unix seconds, got {line!r}")
        user, item, rating, seconds = (int(f) for f in fields)
        if rating not in EVENTS_BY_RATING:
            raise MovieLensError(f"{path}:{number}: rating must be 1..5, got {rating}")
        ratings.append(Rating(ID_PREFIX + str(user), ID_PREFIX + str(item), rating, seconds * 1000))
    return ratings


def interests_by_user(ratings: list[Rating], items: list[Item]) -> dict[str, list[str]]:
    """Each user's top genres: most ratings >= 4 first, ties by mean rating, then name."""
    keywords = {i.item_id: i.keywords for i in items}
    liked: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    total: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in ratings:
        for genre in keywords.get(r.item, ()):
            if genre == UNKNOWN_GENRE:
                continue
            sums = total[r.user][genre]
            sums[0] += r.rating
            sums[1] += 1
            if r.rating >= LIKED_RATING:
                liked[r.user][genre] += 1
    out = {}
    for user, genres in total.items():
        ranked = sorted(
            (g for g in genres if liked[user].get(g)),
            key=lambda g: (-liked[user][g], -genres[g][0] / genres[g][1], g),
        )
        out[user] = ranked[:MAX_INTERESTS]
    return out


def event_id(user: str, item: str, event_type: str) -> str:
    """The deterministic event id of one rating-derived event."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{user}|{item}|{event_type}"))


def rating_events(rating: Rating) -> list[dict]:
    """The events one rating becomes: a view, plus a like for 4 or a purchase for 5."""
    return [
        {
            "event_id": event_id(rating.user, rating.item, event_type),
            "event_type": event_type,
            "user_id": rating.user,
            "item_id": rating.item,
            "ts": rating.ts_ms,
            "schema_version": SCHEMA_VERSION,
            "rating": rating.rating,
            "source": SOURCE,
        }
        for event_type in EVENTS_BY_RATING[rating.rating]
    ]


@dataclass
class Dataset:
    users: list[User]
    items: list[Item]
    ratings: list[Rating]
    user_created_at: dict[str, int]


def load(path: str | Path, limit: int = 0) -> Dataset:
    """Read and check the ML-100K files under ``path``; users get their interests."""
    base = Path(path)
    if not base.is_dir():
        raise MovieLensError(f"{base} is not a directory holding u.user, u.item, u.genre, u.data")
    genres = read_genres(base / "u.genre")
    items = read_items(base / "u.item", genres)
    users = read_users(base / "u.user")
    ratings = read_ratings(base / "u.data", limit)
    known_users, known_items = {u.user_id for u in users}, {i.item_id for i in items}
    for r in ratings:
        if r.user not in known_users or r.item not in known_items:
            raise MovieLensError(f"{base / 'u.data'}: rating of unknown user {r.user} or item {r.item}")
    interests = interests_by_user(ratings, items)
    for user in users:
        user.interests = interests.get(user.user_id, [])
    first_seen: dict[str, int] = {}
    for r in ratings:
        first_seen[r.user] = min(first_seen.get(r.user, r.ts_ms), r.ts_ms)
    ratings.sort(key=lambda r: (r.ts_ms, r.user, r.item))
    return Dataset(users, items, ratings, first_seen)


def main(args) -> int:
    from feedloop.clients import make_producer
    from sources.simulator import write_catalogue

    started = time.time()
    settings = get_settings()
    try:
        data = load(args.path, getattr(args, "limit", 0) or 0)
    except MovieLensError as exc:
        print(f"import-movielens: {exc}")
        return 2
    print(f"import-movielens: read {len(data.users)} users, {len(data.items)} items, {len(data.ratings)} ratings "
          f"from {args.path}", flush=True)
    write_catalogue(settings, data.users, data.items, created_at=data.user_created_at)
    print(f"  catalogue: {len(data.users)} users, {len(data.items)} items -> {settings.hive.database}.users/items "
          f"(replaced)", flush=True)
    to_hive = getattr(args, "to_hive", False)
    if to_hive:
        from spark.backfill import HiveBackfill

        producer = HiveBackfill(settings, "import-movielens")
    else:
        producer = make_producer(settings)
    topic = settings.kafka.events_topic
    sent, last_report, send_started = 0, time.time(), time.time()
    counts: dict[str, int] = defaultdict(int)
    try:
        for n, rating in enumerate(data.ratings, 1):
            for event in rating_events(rating):
                producer.send(topic, event)
                counts[event["event_type"]] += 1
                sent += 1
            if time.time() - last_report > REPORT_EVERY_S:
                rate = sent / (time.time() - send_started)
                print(f"  events: {n}/{len(data.ratings)} ratings, {sent} events sent, {rate:,.0f}/s, "
                      f"ETA {(len(data.ratings) - n) * sent / n / rate:.0f}s", flush=True)
                last_report = time.time()
        producer.flush()
    finally:
        producer.close()
    acked = sent - producer.failed
    if to_hive:
        print(f"import-movielens: {len(data.users)} users and {len(data.items)} items in {settings.hive.database}; "
              f"{sent} events ({', '.join(f'{counts[k]} {k}' for k in ('view', 'like', 'purchase'))}); "
              f"{producer.summary()}; {time.time() - started:.1f}s in all")
        return 1 if producer.failed or producer.rejected else 0
    first = datetime.fromtimestamp(data.ratings[0].ts_ms / 1000, tz=timezone.utc).date() if data.ratings else "-"
    last = datetime.fromtimestamp(data.ratings[-1].ts_ms / 1000, tz=timezone.utc).date() if data.ratings else "-"
    kinds = ", ".join(f"{counts[k]} {k}" for k in ("view", "like", "purchase"))
    print(f"import-movielens: {len(data.users)} users and {len(data.items)} items in {settings.hive.database}; "
          f"{acked} events ({kinds}) from {first} to {last} acknowledged by Kafka topic {topic} "
          f"in {time.time() - started:.1f}s"
          + (f"; {producer.failed} failed: {producer.last_error}" if producer.failed else ""))
    return 1 if producer.failed else 0
