"""`feedloop simulate`: users with hidden preferences producing events into Kafka.

Users have gender, age and ordered interests; items have a category, keywords,
a price and a creation time. Each user's hidden preference is a weight per
category (their interests weigh most), and item choice follows it, so a model
that learns the preferences serves feeds that get clicked.

Event mix (from the seed system): view 50%, cart 20%, purchase 10%, like 10%,
search 10%; every view is preceded by an impression, and a share of views come
with a click and a dwell. With ``--rate`` the rate follows a diurnal curve
(0.1x at 03:00 up to 10x at 20:00, weekends 1.3x).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from feedloop.events import new_event
from feedloop.settings import Settings, get_settings

CATEGORIES = ("comedy", "drama", "action", "sci-fi", "romance", "horror", "documentary", "animation", "thriller", "music")
KEYWORDS = ("new", "classic", "award", "family", "dark", "light", "epic", "indie", "remake", "series")
EVENT_MIX = (("view", 0.5), ("cart", 0.2), ("purchase", 0.1), ("like", 0.1), ("search", 0.1))
CLICK_SHARE = 0.6
DWELL_SHARE = 0.5


@dataclass
class User:
    user_id: str
    gender: str | None
    age: int | None
    occupation: str
    interests: list[str]
    preference: dict[str, float] = field(repr=False, default_factory=dict)


@dataclass
class Item:
    item_id: str
    title: str
    category: str
    keywords: list[str]
    price: float
    created_at: int


def make_catalog(n_users: int, n_items: int, seed: int) -> tuple[list[User], list[Item]]:
    """Deterministic users and items for a seed."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    users = []
    for i in range(n_users):
        interests = rng.sample(CATEGORIES, 3)
        preference = {c: 0.05 for c in CATEGORIES}
        for rank, category in enumerate(interests):
            preference[category] = (3.0, 1.5, 0.7)[rank]
        users.append(User(
            user_id=f"u{i:06d}",
            gender=rng.choice(("F", "M", "F", "M", None)),
            age=rng.choice((None, *range(16, 70))),
            occupation=rng.choice(("student", "engineer", "artist", "writer", "other")),
            interests=interests,
            preference=preference,
        ))
    items = [
        Item(
            item_id=f"i{j:06d}",
            title=f"{rng.choice(KEYWORDS).title()} {category.title()} #{j}",
            category=category,
            keywords=rng.sample(KEYWORDS, 2),
            price=round(rng.uniform(1, 60), 2),
            created_at=now - rng.randint(0, 90) * 86_400_000,
        )
        for j, category in enumerate(rng.choice(CATEGORIES) for _ in range(n_items))
    ]
    return users, items


def diurnal_multiplier(ts: datetime) -> float:
    """0.1x at 03:00 rising to 10x at 20:00 (log-cosine), 1.3x on weekends."""
    hours_from_peak = ((ts.hour + ts.minute / 60) - 20) % 24
    phase = math.cos(math.pi * min(hours_from_peak, 24 - hours_from_peak) / 7)  # 1 at 20:00, -1 at 13:00/03:00
    level = 10 ** (0.5 + 1.5 * max(phase, -1))  # 10^-1 .. 10^2 clipped below
    level = min(max(level, 0.1), 10.0)
    return level * (1.3 if ts.weekday() >= 5 else 1.0)


class Simulator:
    """Generates events of simulated users; pure, so tests can check the mix."""

    def __init__(self, users: list[User], items: list[Item], seed: int, ds: str | None = None):
        self.users, self.items = users, items
        self.rng = random.Random(seed + 1)
        self.by_category: dict[str, list[Item]] = {}
        for item in items:
            self.by_category.setdefault(item.category, []).append(item)
        self.categories = [c for c in CATEGORIES if c in self.by_category]
        self.day_start = int(datetime.fromisoformat(ds).replace(tzinfo=timezone.utc).timestamp() * 1000) if ds else None

    def _ts(self) -> int:
        if self.day_start is None:
            return int(time.time() * 1000)
        return self.day_start + self.rng.randint(0, 86_400_000 - 1)

    def pick_item(self, user: User) -> Item:
        weights = [user.preference[c] for c in self.categories]
        category = self.rng.choices(self.categories, weights)[0]
        return self.rng.choice(self.by_category[category])

    def events_for_action(self) -> list[dict]:
        """One user action: a main event (by the mix) and its impression/click/dwell."""
        user = self.rng.choice(self.users)
        kind = self.rng.choices([k for k, _ in EVENT_MIX], [w for _, w in EVENT_MIX])[0]
        ts = self._ts()
        session = f"s-{user.user_id}-{ts // 1_800_000}"
        if kind == "search":
            return [new_event("search", user.user_id, None, ts, query=self.rng.choice(self.categories), session_id=session)]
        item = self.pick_item(user)
        out = []
        if kind == "view":
            out.append(new_event("impression", user.user_id, item.item_id, ts - 2000, session_id=session))
            if self.rng.random() < CLICK_SHARE:
                out.append(new_event("click", user.user_id, item.item_id, ts - 1000, session_id=session))
        out.append(new_event(kind, user.user_id, item.item_id, ts, session_id=session))
        if kind == "view" and self.rng.random() < DWELL_SHARE:
            dwell = int(self.rng.expovariate(1 / 20000) * user.preference[item.category])
            out.append(new_event("dwell", user.user_id, item.item_id, ts + 500, dwell_ms=dwell, session_id=session))
        return out


def write_catalog(settings: Settings, users: list[User], items: list[Item]) -> None:
    """INSERT OVERWRITE the users and items tables through HiveServer2."""
    from feedloop.services import hive_connection

    def q(value) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, list):
            return "array(" + ", ".join(q(v) for v in value) + ")"
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    now = int(time.time() * 1000)
    conn = hive_connection(settings, settings.hive.database)
    cursor = conn.cursor()
    user_rows = ", ".join(f"({q(u.user_id)}, {q(u.gender)}, CAST({q(u.age)} AS INT), {q(u.occupation)}, {q(u.interests)}, {now})" for u in users)
    cursor.execute(f"INSERT OVERWRITE TABLE users VALUES {user_rows}")
    item_rows = ", ".join(f"({q(i.item_id)}, {q(i.title)}, {q(i.category)}, {q(i.keywords)}, {q(i.price)}, {i.created_at})" for i in items)
    cursor.execute(f"INSERT OVERWRITE TABLE items VALUES {item_rows}")
    conn.close()


def make_producer(settings: Settings):
    """kafka-python producer: idempotent, acks=all, keyed by user_id; fails fast when Kafka is down."""
    from kafka import KafkaProducer

    k = settings.kafka
    return KafkaProducer(
        bootstrap_servers=k.bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
        max_block_ms=k.request_timeout_ms,
        request_timeout_ms=k.request_timeout_ms * 6,
        key_serializer=str.encode,
        value_serializer=lambda e: json.dumps(e, separators=(",", ":")).encode(),
    )


def main(args) -> int:
    settings = get_settings()
    users, items = make_catalog(args.users, args.items, args.seed)
    if not args.no_catalog:
        write_catalog(settings, users, items)
        print(f"catalog: {len(users)} users, {len(items)} items -> {settings.hive.database}.users/items", flush=True)
    sim = Simulator(users, items, args.seed, args.ds)
    producer = make_producer(settings)
    topic = settings.kafka.events_topic
    sent, started, last_report = 0, time.time(), time.time()
    deadline = started + args.duration if not args.events and args.duration else None
    target = args.events or None
    try:
        while (target is None or sent < target) and (deadline is None or time.time() < deadline):
            for event in sim.events_for_action():
                producer.send(topic, key=event["user_id"], value=event)
                sent += 1
            if args.rate:
                rate = args.rate * diurnal_multiplier(datetime.now(timezone.utc))
                time.sleep(max(0.0, sent / rate - (time.time() - started)) if rate else 0)
            if time.time() - last_report > 2:
                elapsed = time.time() - started
                eta = f", ETA {max(0, (target - sent) / (sent / elapsed)):.0f}s" if target else ""
                print(f"  simulate: {sent} events sent, {sent / elapsed:,.0f}/s{eta}", flush=True)
                last_report = time.time()
        producer.flush(timeout=settings.kafka.request_timeout_ms / 1000 * 6)
    finally:
        producer.close(timeout=10)
    elapsed = time.time() - started
    print(f"simulate: {sent} events acknowledged by Kafka topic {topic} in {elapsed:.1f}s ({sent / max(elapsed, 1e-9):,.0f}/s)")
    return 0
