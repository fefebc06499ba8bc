"""`feedloop simulate`: users with hidden preferences producing events into Kafka.

Users have gender, age and ordered interests; items have a category, keywords,
a price and a creation time. Each user's hidden preference is a weight per
category (their interests weigh most); which item a user acts on, whether they
click a shown item and how long they dwell on it all follow it, so a model that
learns the preferences serves feeds that get clicked.

* Event mix (the seed system's): view 50%, cart 20%, purchase 10%, like 10%,
  search 10% of user actions; a view comes with its impression, and, by the
  user's preference, a click and a dwell.
* Time: the rate follows a diurnal curve in UTC, 0.1x at 03:00 up to 10x at
  20:00, and weekends carry 1.3x the weekday volume. ``--rate`` is the 1x rate,
  paced by the wall clock; with ``--ds`` event times are drawn over that day from
  the curve instead, and ``--rate`` is a plain limit.
* Promotions (``--promo-every``): now and then an item or a whole category is
  promoted for ``--promo-duration`` seconds, and its events run at 20x.
* Feed visits (``--api URL``): users ask the feed API for their feed, report an
  impression per shown item (with ``feed_id``, ``position``, ``model_version``),
  and click and dwell by their hidden preferences; the click-through rate of the
  served feeds is printed at the end, beside what a random feed would get.

The generator (:class:`Simulator`) does no I/O, so tests check its statistics.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from feedloop.clients import PRODUCERS, make_producer
from feedloop.events import new_event
from feedloop.settings import Settings, get_settings

CATEGORIES = (
    "comedy", "drama", "action", "sci-fi", "romance", "horror", "documentary", "animation", "thriller", "music",
)
KEYWORDS = ("new", "classic", "award", "family", "dark", "light", "epic", "indie", "remake", "series")
DEMO_USERS, DEMO_ITEMS, DEMO_EVENTS = 200, 300, 5000  # the size of `feedloop demo`'s simulated day
EVENT_MIX = (("view", 0.5), ("cart", 0.2), ("purchase", 0.1), ("like", 0.1), ("search", 0.1))
MIX_KINDS, MIX_WEIGHTS = [k for k, _ in EVENT_MIX], [w for _, w in EVENT_MIX]
ITEM_KINDS, ITEM_KIND_WEIGHTS = [k for k, _ in EVENT_MIX if k != "search"], [w for k, w in EVENT_MIX if k != "search"]
ITEM_ACTION_SHARE = sum(ITEM_KIND_WEIGHTS)

# Hidden preference: weight of a user's 1st, 2nd, 3rd interest; every other category.
INTEREST_WEIGHTS = (3.0, 1.5, 0.7)
OTHER_WEIGHT = 0.05
# Click model: a top-interest item at position 0 is clicked with CLICK_MAX; other
# categories in proportion to their weight; attention halves by position EXAMINE_HALF.
CLICK_MAX = 0.5
EXAMINE_HALF = 5
ORGANIC_CLICK_MAX = 0.9  # a view the user sought (not from a feed): twice the feed click chance, capped
DWELL_MEAN_MS = 20_000  # times the category weight: top interest ~60 s, others ~1 s

# Diurnal curve (UTC hours) and weekly pattern.
TROUGH_HOUR, PEAK_HOUR = 3, 20
TROUGH_LEVEL, PEAK_LEVEL = 0.1, 10.0
WEEKEND_FACTOR = 1.3

PROMO_BOOST = 20.0
PROMO_DURATION_S = 120.0

FEED_LIMIT = 10
FEED_SHARE = 0.5  # share of actions that are feed visits when --api is given
FEED_TIMEOUT_S = 2.0
DAY_MS = 86_400_000
DAY_BIN_MS = 10_000
SESSION_MS = 1_800_000
REPORT_EVERY_S = 2.0


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
    price: float | None
    created_at: int | None


@dataclass(frozen=True)
class Promotion:
    """An item or a category promoted between ``start_ms`` and ``end_ms`` (event time)."""

    kind: str  # "item" | "category"
    target: str
    start_ms: int
    end_ms: int

    def active(self, ts_ms: int) -> bool:
        return self.start_ms <= ts_ms < self.end_ms

    def covers(self, item: Item) -> bool:
        return (item.item_id if self.kind == "item" else item.category) == self.target


def make_catalogue(n_users: int, n_items: int, seed: int, now_ms: int | None = None) -> tuple[list[User], list[Item]]:
    """Users and items for a seed (the same for the same seed and ``now_ms``)."""
    rng = random.Random(seed)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    users = []
    for i in range(n_users):
        interests = rng.sample(CATEGORIES, len(INTEREST_WEIGHTS))
        preference = {c: OTHER_WEIGHT for c in CATEGORIES}
        preference.update(zip(interests, INTEREST_WEIGHTS))
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
            created_at=now - rng.randint(0, 90) * DAY_MS,
        )
        for j, category in enumerate(rng.choice(CATEGORIES) for _ in range(n_items))
    ]
    return users, items


def diurnal_multiplier(ts: datetime) -> float:
    """Rate multiplier at a UTC time: 0.1x at 03:00 rising to 10x at 20:00, back by 03:00.

    Log-cosine between the trough and the peak (17 h up, 7 h down); weekends x1.3.
    """
    hour = ts.hour + ts.minute / 60 + ts.second / 3600
    rise = PEAK_HOUR - TROUGH_HOUR
    since_trough = (hour - TROUGH_HOUR) % 24
    phase = since_trough / rise if since_trough <= rise else 1 - (since_trough - rise) / (24 - rise)
    level = TROUGH_LEVEL * (PEAK_LEVEL / TROUGH_LEVEL) ** ((1 - math.cos(math.pi * phase)) / 2)
    return level * (WEEKEND_FACTOR if ts.weekday() >= 5 else 1.0)


def click_probability(user: User, category: str | None, position: int) -> float:
    """Chance that ``user`` clicks an item of ``category`` shown at ``position`` (0-based)."""
    weight = user.preference.get(category, OTHER_WEIGHT) if category else OTHER_WEIGHT
    return CLICK_MAX * weight / INTEREST_WEIGHTS[0] / (1 + position / EXAMINE_HALF)


class Simulator:
    """Generates events of simulated users; no I/O, so tests can check the statistics.

    ``ds`` puts event times on that UTC day (drawn from the diurnal curve and the
    promotions), else events happen now. ``promo_every_s`` > 0 schedules promotions
    with that mean gap between them, each ``promo_duration_s`` long.
    """

    def __init__(self, users: list[User], items: list[Item], seed: int, ds: str | None = None,
                 promo_every_s: float = 0.0, promo_duration_s: float = PROMO_DURATION_S,
                 now_ms: int | None = None):
        if not users or not items:
            raise ValueError("the simulator needs at least one user and one item")
        self.users, self.items = users, items
        self.rng = random.Random(seed + 1)
        self._promo_rng = random.Random(seed + 2)
        self.by_category: dict[str, list[Item]] = {}
        for item in items:
            self.by_category.setdefault(item.category, []).append(item)
        self.categories = sorted(self.by_category)
        self.item_by_id = {item.item_id: item for item in items}
        # mean share of a user's item events per category, for the promotion rate factor
        self.category_share = {c: 0.0 for c in self.categories}
        for user in users:
            for c in self.categories:
                self.category_share[c] += self._share_of(user, c) / len(users)
        self.promo_every_ms = promo_every_s * 1000
        self.promo_duration_ms = int(promo_duration_s * 1000)
        self.promotions: list[Promotion] = []
        self._promo_starts: list[int] = []
        self._base_weights: dict[str, list[float]] = {}
        self._promo_users: tuple[Promotion | None, list[float]] = (None, [])
        self.day_start = None
        if ds:
            self.day_start = int(datetime.fromisoformat(ds).replace(tzinfo=timezone.utc).timestamp() * 1000)
            self._schedule_from = self.day_start
            self._extend_schedule(self.day_start + DAY_MS - 1)
            # cumulative rate over the day in DAY_BIN_MS bins, to draw event times from
            bins = range(self.day_start + DAY_BIN_MS // 2, self.day_start + DAY_MS, DAY_BIN_MS)
            self._day_cdf = list(itertools.accumulate(self.rate_factor(ts) for ts in bins))
        else:
            self._schedule_from = now_ms if now_ms is not None else int(time.time() * 1000)

    def _share_of(self, user: User, category: str) -> float:
        """Share of ``user``'s item actions that fall on ``category``."""
        total = sum(user.preference.get(c, OTHER_WEIGHT) for c in self.categories)
        return user.preference.get(category, OTHER_WEIGHT) / total

    # -- drift ------------------------------------------------------------
    def release(self, items: list[Item]) -> None:
        """New items join the catalogue from now on (users can pick them; feeds can show them)."""
        for item in items:
            if item.item_id in self.item_by_id:
                continue
            self.items.append(item)
            self.item_by_id[item.item_id] = item
            self.by_category.setdefault(item.category, []).append(item)
        self.categories = sorted(self.by_category)
        self._base_weights.clear()

    def drift(self, users: list[User], preference: dict[str, float]) -> None:
        """``users``' hidden preferences change: each category in ``preference`` gets that weight.

        What they do from now on (organic picks, clicks, dwell) follows the new
        weights; what they declared (``interests``, hence their segment) stays.
        """
        for user in users:
            user.preference.update(preference)
            self._base_weights.pop(user.user_id, None)

    # -- time and promotions ------------------------------------------------
    @staticmethod
    def _dt(ts_ms: int) -> datetime:
        return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)

    def _extend_schedule(self, until_ms: int) -> None:
        """Schedule promotions (non-overlapping, exponential gaps) up to ``until_ms``."""
        if self.promo_every_ms <= 0:
            return
        if self.day_start is not None:  # a simulated day is scheduled once, whole
            until_ms = min(until_ms, self.day_start + DAY_MS - 1)
        while self._schedule_from <= until_ms:
            start = self._schedule_from + int(self._promo_rng.expovariate(1 / self.promo_every_ms))
            if self.day_start is not None and start >= self.day_start + DAY_MS:
                self._schedule_from = start
                break
            if self._promo_rng.random() < 0.5:
                promo = Promotion("item", self._promo_rng.choice(self.items).item_id, start,
                                  start + self.promo_duration_ms)
            else:
                promo = Promotion("category", self._promo_rng.choice(self.categories), start,
                                  start + self.promo_duration_ms)
            self.promotions.append(promo)
            self._promo_starts.append(start)
            self._schedule_from = promo.end_ms

    def promotion_at(self, ts_ms: int) -> Promotion | None:
        """The promotion running at ``ts_ms``, if any."""
        self._extend_schedule(ts_ms)
        i = bisect.bisect_right(self._promo_starts, ts_ms) - 1
        if i >= 0 and self.promotions[i].active(ts_ms):
            return self.promotions[i]
        return None

    def target_share(self, promo: Promotion) -> float:
        """Share of all actions that fall on the promotion's target when it is not promoted."""
        if promo.kind == "category":
            share = self.category_share.get(promo.target, 0.0)
        else:
            item = self.item_by_id.get(promo.target)
            share = self.category_share[item.category] / len(self.by_category[item.category]) if item else 0.0
        return ITEM_ACTION_SHARE * share

    def promotion_factor(self, promo: Promotion | None) -> float:
        """How much the whole rate grows while ``promo`` runs: its target's events run at 20x."""
        return 1.0 if promo is None else 1 + (PROMO_BOOST - 1) * self.target_share(promo)

    def rate_factor(self, ts_ms: int) -> float:
        """Rate multiplier at ``ts_ms``: the diurnal curve times any running promotion."""
        return diurnal_multiplier(self._dt(ts_ms)) * self.promotion_factor(self.promotion_at(ts_ms))

    def _ts(self) -> int:
        if self.day_start is None:
            return int(time.time() * 1000)
        b = bisect.bisect_right(self._day_cdf, self.rng.random() * self._day_cdf[-1])
        return self.day_start + min(b, len(self._day_cdf) - 1) * DAY_BIN_MS + self.rng.randrange(DAY_BIN_MS)

    # -- users' choices ---------------------------------------------------
    def pick_user(self) -> User:
        return self.rng.choice(self.users)

    def pick_item(self, user: User) -> Item:
        """An item by the user's hidden preference for its category."""
        weights = self._base_weights.get(user.user_id)
        if weights is None:
            weights = [user.preference.get(c, OTHER_WEIGHT) for c in self.categories]
            self._base_weights[user.user_id] = weights
        return self.rng.choice(self.by_category[self.rng.choices(self.categories, weights)[0]])

    def _promoted_pick(self, promo: Promotion) -> tuple[User, Item]:
        """A user (in proportion to how much they act on the target anyway) and a target item."""
        if self._promo_users[0] != promo:
            category = promo.target if promo.kind == "category" else self.item_by_id[promo.target].category
            weights = [self._share_of(u, category) for u in self.users]
            self._promo_users = (promo, list(itertools.accumulate(weights)))
        user = self.rng.choices(self.users, cum_weights=self._promo_users[1])[0]
        if promo.kind == "item":
            return user, self.item_by_id[promo.target]
        return user, self.rng.choice(self.by_category[promo.target])

    def _dwell_ms(self, user: User, category: str | None) -> int:
        weight = user.preference.get(category, OTHER_WEIGHT) if category else OTHER_WEIGHT
        return int(self.rng.expovariate(1 / DWELL_MEAN_MS) * weight)

    def events_for_action(self, ts: int | None = None) -> list[dict]:
        """One user action: a main event (by the mix) and, for a view, its impression, click and dwell."""
        ts = ts if ts is not None else self._ts()
        promo = self.promotion_at(ts)
        extra = (PROMO_BOOST - 1) * self.target_share(promo) if promo is not None else 0.0
        if extra and self.rng.random() < extra / (1 + extra):
            # the promotion's extra actions: target events at 19x their usual rate, on top of the usual ones
            user, item = self._promoted_pick(promo)
            kind = self.rng.choices(ITEM_KINDS, ITEM_KIND_WEIGHTS)[0]
        else:
            user = self.pick_user()
            kind = self.rng.choices(MIX_KINDS, MIX_WEIGHTS)[0]
            if kind == "search":
                session = f"s-{user.user_id}-{ts // SESSION_MS}"
                return [new_event("search", user.user_id, None, ts, query=self.rng.choice(self.categories),
                                  session_id=session)]
            item = self.pick_item(user)
        session = f"s-{user.user_id}-{ts // SESSION_MS}"
        out = []
        if kind == "view":
            out.append(new_event("impression", user.user_id, item.item_id, ts - 2000, session_id=session))
            if self.rng.random() < min(ORGANIC_CLICK_MAX, 2 * click_probability(user, item.category, 0)):
                out.append(new_event("click", user.user_id, item.item_id, ts - 1000, session_id=session))
        out.append(new_event(kind, user.user_id, item.item_id, ts, session_id=session))
        if kind == "view":
            out.append(new_event("dwell", user.user_id, item.item_id, ts + 500,
                                 dwell_ms=self._dwell_ms(user, item.category), session_id=session))
        return out

    def feed_visit(self, user: User, page: dict[str, Any], ts: int | None = None) -> list[dict]:
        """Events of ``user`` looking at one page of the feed API's answer.

        An impression per shown item, attributed to the feed (``feed_id``,
        ``position``, ``model_version``); a click by :func:`click_probability` and,
        after a click, a dwell whose length follows the user's preference.
        """
        ts = ts if ts is not None else int(time.time() * 1000)  # feeds are served now, whatever --ds says
        session = f"s-{user.user_id}-{ts // SESSION_MS}"
        attribution = {"feed_id": page.get("feed_id"), "model_version": page.get("model_version"),
                       "session_id": session}
        attribution = {k: v for k, v in attribution.items() if v is not None}
        out = []
        for index, entry in enumerate(page.get("items") or []):
            item_id = entry.get("item_id")
            if not item_id:
                continue
            position = entry.get("position", index)
            item = self.item_by_id.get(item_id)
            category = item.category if item else None
            fields = dict(attribution, position=position)
            out.append(new_event("impression", user.user_id, item_id, ts, **fields))
            if self.rng.random() < click_probability(user, category, position):
                out.append(new_event("click", user.user_id, item_id, ts + 1000 + 500 * index, **fields))
                out.append(new_event("dwell", user.user_id, item_id, ts + 1500 + 500 * index,
                                     dwell_ms=self._dwell_ms(user, category), **fields))
        return out

    def random_feed_ctr(self, user: User, positions: list[int]) -> float:
        """Expected clicks per impression if the same positions showed random catalogue items."""
        if not positions:
            return 0.0
        by_category = {c: len(pool) / len(self.items) for c, pool in self.by_category.items()}
        expected = sum(click_probability(user, c, p) * share for p in positions for c, share in by_category.items())
        return expected / len(positions)


# -- feed visits through the API ---------------------------------------------
@dataclass
class FeedStats:
    """Impressions and clicks of served feeds, by feed source; CTR and a random-feed baseline."""

    impressions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    clicks: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    visits: int = 0
    errors: int = 0
    random_clicks: float = 0.0

    def add(self, source: str, events: list[dict], random_ctr: float) -> None:
        self.visits += 1
        shown = sum(1 for e in events if e["event_type"] == "impression")
        self.impressions[source] += shown
        self.clicks[source] += sum(1 for e in events if e["event_type"] == "click")
        self.random_clicks += random_ctr * shown

    @property
    def ctr(self) -> float:
        shown = sum(self.impressions.values())
        return sum(self.clicks.values()) / shown if shown else 0.0

    @property
    def random_ctr(self) -> float:
        shown = sum(self.impressions.values())
        return self.random_clicks / shown if shown else 0.0

    def summary(self) -> str:
        shown = sum(self.impressions.values())
        by_source = ", ".join(
            f"{s} {self.clicks[s] / n:.3f} ({n} shown)" for s, n in sorted(self.impressions.items()) if n)
        return (f"feed CTR {self.ctr:.3f} = {sum(self.clicks.values())} clicks / {shown} impressions over "
                f"{self.visits} feed visits ({self.errors} failed); by source: {by_source or 'none'}; "
                f"random feeds would get {self.random_ctr:.3f}")


def fetch_feed(api: str, user_id: str, limit: int = FEED_LIMIT, timeout_s: float = FEED_TIMEOUT_S) -> dict[str, Any]:
    """GET /v1/feeds/users/{user_id} from the feed API; raises OSError/ValueError on failure."""
    url = f"{api.rstrip('/')}/v1/feeds/users/{urllib.parse.quote(user_id, safe='')}?limit={limit}"
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


# -- writing: Hive catalogue and Kafka ----------------------------------------
USER_COLUMNS = "user_id STRING, gender STRING, age INT, occupation STRING, interests ARRAY<STRING>, created_at BIGINT"
ITEM_COLUMNS = "item_id STRING, title STRING, category STRING, keywords ARRAY<STRING>, price DOUBLE, created_at BIGINT"
ROWS_PER_STATEMENT = 500


def _value_sql(value: Any) -> tuple[str, list[Any]]:
    """Placeholder text of one value and its parameters: a list becomes ARRAY<STRING> of one per element."""
    if isinstance(value, list):
        return "CAST(array(" + ", ".join(["%s"] * len(value)) + ") AS ARRAY<STRING>)", [str(v) for v in value]
    return "%s", [value]


def typed_values(rows: list[tuple], columns: str) -> tuple[str, list[Any]]:
    """``SELECT CAST(c0 AS T0) AS name0, ... FROM VALUES (%s, ...), ...`` and its parameters, for
    ``cursor.execute(sql, params)``: every value is a parameter (the driver escapes it), and the
    casts give NULLs and empty arrays the table's types."""
    specs = [c.strip().split(" ", 1) for c in columns.split(",")]
    names = ", ".join(f"c{i}" for i in range(len(specs)))
    casts = ", ".join(f"CAST(c{i} AS {t}) AS {n}" for i, (n, t) in enumerate(specs))
    tuples, params = [], []
    for row in rows:
        parts = [_value_sql(v) for v in row]
        tuples.append("(" + ", ".join(text for text, _ in parts) + ")")
        params += [p for _, values in parts for p in values]
    return f"SELECT {casts} FROM VALUES {', '.join(tuples)} AS t({names})", params


def overwrite_table(cursor, table: str, columns: str, rows: list[tuple]) -> None:
    """Replace ``table``'s rows with ``rows`` in one INSERT OVERWRITE.

    Large inputs go through a staging table in chunks first, so readers only
    ever see the old rows or all of the new ones.
    """
    if len(rows) <= ROWS_PER_STATEMENT:
        select, params = typed_values(rows, columns)
        cursor.execute(f"INSERT OVERWRITE TABLE {table} {select}", params)
        return
    staging = f"tmp_load_{table}_{int(time.time() * 1000)}"
    cursor.execute(f"CREATE TABLE {staging} ({columns}) STORED AS PARQUET")
    try:
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            select, params = typed_values(rows[start:start + ROWS_PER_STATEMENT], columns)
            cursor.execute(f"INSERT INTO {staging} {select}", params)
        cursor.execute(f"INSERT OVERWRITE TABLE {table} SELECT * FROM {staging}")
    finally:
        cursor.execute(f"DROP TABLE IF EXISTS {staging}")


def write_catalogue(settings: Settings, users: list[User], items: list[Item],
                  created_at: dict[str, int] | None = None) -> None:
    """INSERT OVERWRITE the users and items tables through HiveServer2.

    ``created_at`` maps user ids to their creation time (default: now for all).
    """
    from feedloop.clients import hive_connection

    now = int(time.time() * 1000)
    created_at = created_at or {}
    conn = hive_connection(settings, settings.hive.database)
    try:
        cursor = conn.cursor()
        overwrite_table(cursor, "users", USER_COLUMNS, [
            (u.user_id, u.gender, u.age, u.occupation, u.interests, created_at.get(u.user_id, now)) for u in users])
        overwrite_table(cursor, "items", ITEM_COLUMNS, [
            (i.item_id, i.title, i.category, i.keywords, i.price, i.created_at) for i in items])
    finally:
        conn.close()


# -- the command ---------------------------------------------------------------
OPTION_DEFAULTS = {
    "users": 200, "items": 300, "events": 5000, "rate": 0.0, "duration": 0.0, "seed": 7, "ds": None,
    "no_catalogue": False, "promo_every": 0.0, "promo_duration": PROMO_DURATION_S, "api": None,
    "feed_share": FEED_SHARE, "feed_limit": FEED_LIMIT, "producer": "confluent", "to_hive": False,
}


def add_arguments(parser) -> None:
    """The flags of `feedloop simulate` beyond the basic ones, for the CLI to add."""
    parser.add_argument("--promo-every", type=float, default=0.0,
                        help="mean seconds between promotion bursts (an item or category at 20x; 0: none)")
    parser.add_argument("--promo-duration", type=float, default=PROMO_DURATION_S, help="seconds a promotion lasts")
    parser.add_argument("--api", default=None, metavar="URL",
                        help="feed API base URL: users visit their feeds, click by preference; CTR printed")
    parser.add_argument("--feed-share", type=float, default=FEED_SHARE,
                        help="share of actions that are feed visits (--api)")
    parser.add_argument("--feed-limit", type=int, default=FEED_LIMIT, help="items per feed page (--api)")
    parser.add_argument("--producer", choices=PRODUCERS, default="confluent",
                        help="Kafka client library (default confluent: librdkafka, ~10x kafka-python's rate here)")


def _options(args) -> dict[str, Any]:
    return {name: getattr(args, name, default) for name, default in OPTION_DEFAULTS.items()}


class Pacer:
    """Keeps the send rate at ``base_rate`` x the simulator's rate factor at each moment."""

    def __init__(self, base_rate: float):
        self.base_rate = base_rate
        self.due = time.monotonic()

    def wait(self, n_events: int, factor: float) -> None:
        if not self.base_rate:
            return
        now = time.monotonic()
        self.due = max(self.due, now - 1.0) + n_events / (self.base_rate * factor)  # never burst to catch up >1 s
        if self.due > now:
            time.sleep(self.due - now)


def main(args) -> int:
    opts = _options(args)
    settings = get_settings()
    users, items = make_catalogue(opts["users"], opts["items"], opts["seed"])
    if not opts["no_catalogue"]:
        write_catalogue(settings, users, items)
        print(f"catalogue: {len(users)} users, {len(items)} items -> {settings.hive.database}.users/items", flush=True)
    sim = Simulator(users, items, opts["seed"], opts["ds"], opts["promo_every"], opts["promo_duration"])
    if opts["to_hive"]:
        from spark.backfill import HiveBackfill

        producer = HiveBackfill(settings, "simulate")
    else:
        producer = make_producer(settings, opts["producer"])
    topic = settings.kafka.events_topic
    feeds = FeedStats() if opts["api"] else None
    pacer = Pacer(opts["rate"])
    sent, started, last_report = 0, time.time(), time.time()
    deadline = started + opts["duration"] if not opts["events"] and opts["duration"] else None
    target = opts["events"] or None
    announced: Promotion | None = None
    try:
        while (target is None or sent < target) and (deadline is None or time.time() < deadline):
            if feeds is not None and sim.rng.random() < opts["feed_share"]:
                events = visit(sim, opts, feeds)
            else:
                events = sim.events_for_action()
            for event in events:
                producer.send(topic, event)
            sent += len(events)
            if opts["ds"]:  # the day's shape is in the event times; --rate is a plain limit
                pacer.wait(len(events), 1.0)
            else:
                now_ms = int(time.time() * 1000)
                promo = sim.promotion_at(now_ms)
                if promo is not None and promo != announced:
                    print(f"  promotion: {promo.kind} {promo.target!r} at {PROMO_BOOST:.0f}x for "
                          f"{(promo.end_ms - promo.start_ms) / 1000:.0f}s", flush=True)
                    announced = promo
                pacer.wait(len(events), sim.rate_factor(now_ms))
            if time.time() - last_report > REPORT_EVERY_S:
                elapsed = time.time() - started
                eta = f", ETA {max(0, (target - sent) / (sent / elapsed)):.0f}s" if target and sent else ""
                ctr = f", feed CTR {feeds.ctr:.3f} over {feeds.visits} visits" if feeds is not None else ""
                print(f"  simulate: {sent} events sent, {sent / elapsed:,.0f}/s{eta}{ctr}", flush=True)
                last_report = time.time()
        producer.flush()
    finally:
        producer.close()
    elapsed = time.time() - started
    acked = sent - producer.failed
    if opts["to_hive"]:
        print(f"simulate: {sent} events generated in {elapsed:.1f}s; {producer.summary()}")
        return 1 if producer.failed or producer.rejected else 0
    promos = f"; {len(sim.promotions)} promotions" if opts["promo_every"] and opts["ds"] else ""
    print(f"simulate: {acked} events acknowledged by Kafka topic {topic} in {elapsed:.1f}s "
          f"({acked / max(elapsed, 1e-9):,.0f}/s, {opts['producer']}){promos}"
          + (f"; {producer.failed} failed: {producer.last_error}" if producer.failed else ""))
    if feeds is not None:
        print(f"simulate: {feeds.summary()}")
    return 1 if producer.failed else 0


def visit(sim: Simulator, opts: dict[str, Any], stats: FeedStats) -> list[dict]:
    """One user visiting their feed through the API; falls back to an organic action if the API fails."""
    user = sim.pick_user()
    try:
        page = fetch_feed(opts["api"], user.user_id, opts["feed_limit"])
    except (OSError, ValueError) as exc:
        stats.errors += 1
        if stats.errors in (1, 10, 100) or stats.errors % 1000 == 0:
            print(f"  simulate: feed API {opts['api']} failed ({exc}); {stats.errors} failures so far", flush=True)
        return sim.events_for_action()
    events = sim.feed_visit(user, page)
    positions = [e["position"] for e in events if e["event_type"] == "impression"]
    stats.add(page.get("source") or "unknown", events, sim.random_feed_ctr(user, positions))
    return events or sim.events_for_action()
