"""Real-time aggregates: each micro-batch's events -> Redis trending, popular, user stats, recent history.

Computed by the events sink (:mod:`spark.stream_events`) from the batch it has
already read, validated and de-duplicated, so the aggregates count every event_id
once, and no event is parsed twice. (A second streaming query with its own
stateful aggregation would read Kafka and validate every event again; validation
is the largest share of the sink's CPU — docs/events.md has the figures — so that
design would halve the rate on two cores.)

Every valid event becomes a few *facts*, exploded in one pass and summed in one
``groupBy`` (one Spark job, one collect):

  ``t1``   item, 1-minute tumbling pane                       -> summed event weight
  ``t5``   item, 5-minute pane                                -> summed event weight
  ``pop``  item                                               -> summed event weight
  ``us``   user and event type                                -> count
  ``rec``  user and item                                      -> latest event time
  ``max``                                                     -> newest event time

**Event time and lateness.** The watermark is the newest event time of the
earlier batches less ``spark.aggregates_late_after_s`` (default 10 minutes). An
event older than that is too late for the trending windows: it is left out of
them and counted (``late`` in the sink's progress and ``feedloop status``); it
still counts for popular, the user's stats and recent history, which have no
window to be late for. The newest event time is capped at the wall clock (stored
and read): the validator admits events up to a day ahead (clock skew, a simulated
day such as ``make demo``'s), and one such event would otherwise put the watermark
hours ahead and make every live event late for the windows, which are the wall
clock's current panes.

**Idempotent per batch.** The increments are applied in MULTI/EXEC chunks of at
most ``CHUNK_COMMANDS`` commands, each recording how many chunks of the batch are
done; the last chunk also stores the new watermark and the batch id. A batch
replayed after a crash (same id, same rows, cut into the same chunks: the commands
are ordered by their keys) applies only the chunks not yet recorded, and one whose
id is stored is skipped. Bounded chunks keep Redis answering the API between them
(one transaction for a 250,000-event batch held it 8-13 s). In the last chunk the
current windows are rebuilt: ``trending:1m`` = the current 1-minute pane, ``trending:10m`` = the
current and previous 5-minute panes (10 minutes sliding by 5).

**On a Redis Cluster** a transaction may only touch one hash slot, so the commands are grouped by
slot (users' keys by bucket, the rankings and markers under ``{live}``), each group keeps its own
progress marker in its slot, and the ``{live}`` group runs last and closes the batch
(docs/cluster.md). On a single Redis all commands form one group, as above.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
import tenacity
from redis.crc import key_slot

from feature_store import online
from feature_store.definitions import (
    RECENT_MAX_ITEMS, RECENT_TTL_S, SEEN_TYPES, SLIDE_MS, SLIDING_MS, TUMBLING_MS, USER_STATS_TTL_S,
)
from feedloop import clients

PANE_TTL_S = 3600
TRENDING_1M_TTL_S = 2 * TUMBLING_MS // 1000
TRENDING_10M_TTL_S = SLIDING_MS // 1000 + 60
NO_WATERMARK = -(2**62)


def weight_column():
    """The event weight as a Spark expression (defined once, in spark.features)."""
    from spark.features import weight_column as shared

    return shared()


@dataclass
class BatchAggregates:
    """What one micro-batch adds, small enough to collect to the driver."""

    panes_1m: list[tuple[int, str, float]]
    panes_5m: list[tuple[int, str, float]]
    popular: list[tuple[str, float]]
    user_stats: list[tuple[str, str, int]]
    recent: list[tuple[str, str, int]]
    events: int
    late: int = 0
    max_ts: int | None = None


def facts(events, watermark_ms: int):
    """Valid events -> one row per fact: kind, k1, k2, pane (ms), value (see the module doc)."""
    from pyspark.sql import functions as F

    def pane(width_ms: int):  # start of the tumbling pane holding the event (epoch-aligned)
        return (F.floor(F.col("ts") / width_ms) * width_ms).cast("bigint")

    weight = weight_column()
    has_item = F.col("item_id").isNotNull()
    weighted = has_item & weight.isNotNull()
    on_time = F.col("ts") >= F.lit(watermark_ms)
    seen = has_item & F.col("event_type").isin(*SEEN_TYPES)
    none = F.lit(None).cast("string")

    def fact(kind: str, keep, k1=none, k2=none, pane_ms=F.lit(0).cast("bigint"), value=F.lit(1)):
        return F.when(keep, F.struct(F.lit(kind).alias("kind"), k1.alias("k1"), k2.alias("k2"),
                                     pane_ms.alias("pane"), value.cast("double").alias("value")))

    all_facts = F.array(
        fact("t1", weighted & on_time, F.col("item_id"), pane_ms=pane(TUMBLING_MS), value=weight),
        fact("t5", weighted & on_time, F.col("item_id"), pane_ms=pane(SLIDE_MS), value=weight),
        fact("late", weighted & ~on_time),
        fact("pop", weighted, F.col("item_id"), value=weight),
        fact("us", F.lit(True), F.col("user_id"), F.col("event_type")),
        fact("rec", seen, F.col("user_id"), F.col("item_id"), value=F.col("ts")),
        fact("max", F.lit(True), value=F.col("ts")),
    )
    return (events.select(F.explode(F.filter(all_facts, lambda f: f.isNotNull())).alias("f"))
            .select("f.kind", "f.k1", "f.k2", "f.pane", "f.value"))


def aggregate(events, watermark_ms: int = NO_WATERMARK) -> BatchAggregates:
    """Aggregate valid events (event_type, user_id, item_id, ts, dwell_ms) in one Spark job."""
    from pyspark.sql import functions as F

    table = (facts(events, watermark_ms).groupBy("kind", "k1", "k2", "pane")
             .agg(F.sum("value").alias("total"), F.max("value").alias("latest"), F.count(F.lit(1)).alias("n"))
             .toArrow())  # Arrow, not Row objects: a batch can hold 100,000s of (user, item) pairs
    columns = [table.column(name).to_pylist() for name in ("kind", "k1", "k2", "pane", "total", "latest", "n")]
    agg = BatchAggregates([], [], [], [], [], events=0)
    for kind, k1, k2, pane, total, latest, n in zip(*columns):
        if kind == "t1":
            agg.panes_1m.append((int(pane), k1, float(total)))
        elif kind == "t5":
            agg.panes_5m.append((int(pane), k1, float(total)))
        elif kind == "pop":
            agg.popular.append((k1, float(total)))
        elif kind == "us":
            agg.user_stats.append((k1, k2, int(n)))
            agg.events += int(n)
        elif kind == "rec":
            agg.recent.append((k1, k2, int(latest)))
        elif kind == "late":
            agg.late = int(n)
        elif kind == "max":
            agg.max_ts = int(latest)
    return agg


def pane_key(width: str, start_ms: int) -> str:
    return f"{online.trending_key(width)}@{start_ms}"


def watermark_key(marker: str) -> str:
    return marker + ":watermark"


def read_watermark(client, marker: str, late_after_ms: int, now_ms: int | None = None) -> int:
    """The watermark for the next batch: newest event time applied so far, never later than now (a value
    stored ahead of the clock, before the cap in :func:`_close_batch`, counts as now), less the allowed
    lateness."""
    newest = client.get(watermark_key(marker))
    if newest is None:
        return NO_WATERMARK
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    return min(int(newest), now) - late_after_ms


CHUNK_COMMANDS = 2000  # commands per MULTI/EXEC: ~tens of ms of Redis time, far under the API's 0.25 s timeout
CHUNK_MARKER_TTL_S = 24 * 3600  # a group's progress through a batch; stale once the batch is closed


def marker_key(marker_id: str) -> str:
    """The sink's marker (the last batch applied), under the live rankings' hash tag: the batch's last
    transaction stores it together with the rebuilt windows and the watermark."""
    return online.key("agg", "batch", marker_id, tag=online.LIVE)


def chunk_key(marker: str, tag: str = online.LIVE) -> str:
    """Where the commands of hash tag ``tag`` record their progress through a batch: beside the marker,
    under that tag (on a Redis Cluster each group's transactions stay in its slot)."""
    return marker.replace("{%s}" % online.LIVE, "{%s}" % tag, 1) + ":chunk"


def batch_commands(agg: BatchAggregates) -> list[tuple[str, tuple, dict]]:
    """The increments of one batch as (command, args, kwargs), in an order fixed by the keys alone, so a
    replayed batch (same rows, perhaps collected in another order) cuts the same chunks."""
    cmds: list[tuple[str, tuple, dict]] = []
    for width, rows in (("1m", agg.panes_1m), ("5m", agg.panes_5m)):
        for pane, item, weight in sorted(rows, key=lambda r: (r[0], r[1])):
            cmds.append(("zincrby", (pane_key(width, pane), weight, item), {}))
        for pane in sorted({p for p, _, _ in rows}):
            cmds.append(("expire", (pane_key(width, pane), PANE_TTL_S), {}))
    for item, weight in sorted(agg.popular, key=lambda r: r[0]):
        cmds.append(("zincrby", (online.popular_key(), weight, item), {}))
    for user, event_type, n in sorted(agg.user_stats, key=lambda r: (r[0], r[1])):
        cmds.append(("hincrby", (online.user_stats_key(user), event_type, n), {}))
        cmds.append(("expire", (online.user_stats_key(user), USER_STATS_TTL_S), {}))
    by_user: dict[str, dict[str, int]] = {}
    for user, item, ts in agg.recent:
        by_user.setdefault(user, {})[item] = ts
    for user in sorted(by_user):  # one ZADD per user, not per item
        cmds.append(("zadd", (online.user_recent_key(user), dict(sorted(by_user[user].items()))), {"gt": True}))
        cmds.append(("zremrangebyrank", (online.user_recent_key(user), 0, -RECENT_MAX_ITEMS - 1), {}))
        cmds.append(("expire", (online.user_recent_key(user), RECENT_TTL_S), {}))
    return cmds


def command_groups(client, cmds: list) -> list[tuple[str, list]]:
    """``cmds`` as ``(hash tag, commands)`` groups that may share a transaction, the live group last (it
    closes the batch; present even when empty). One group on a single Redis: the batch's chunks run in
    order as before. On a Redis Cluster one group per hash slot, each with its own progress marker."""
    live_slot = key_slot(online.popular_key().encode("utf-8"))
    groups, live = [], []
    for group in online.slot_groups(client, cmds, lambda cmd: cmd[1][0]):
        if not online.is_cluster(client) or key_slot(group[0][1][0].encode("utf-8")) == live_slot:
            live = group
        else:
            groups.append((online.hash_tag(group[0][1][0]), group))
    return groups + [(online.LIVE, live)]


def chunks(cmds: list, size: int) -> list[list]:
    """``cmds`` cut into lists of at most ``size`` (at least one list, perhaps empty: the closing one)."""
    return [cmds[i:i + size] for i in range(0, len(cmds), size)] or [[]]


def _progress(raw, batch_id: int) -> int:
    if raw is None:
        return 0
    batch, _, count = (raw.decode() if isinstance(raw, bytes) else raw).partition(":")
    return int(count) if int(batch) == batch_id else 0


def applied_chunks(client, marker: str, batch_id: int, tags: list[str] = (online.LIVE,)) -> list[int] | None:
    """How many chunks of ``batch_id`` each group (by hash tag) has applied: None when the whole batch is
    (skip it). One round trip (one per node on a Redis Cluster) after reading the marker."""
    done = client.get(marker)
    if done is not None and int(done) >= batch_id:
        return None
    pipe = client.pipeline(transaction=False)
    for tag in tags:
        pipe.get(chunk_key(marker, tag))
    return [_progress(raw, batch_id) for raw in pipe.execute()]


def apply_aggregates(client, marker: str, batch_id: int, agg: BatchAggregates, now_ms: int | None = None,
                     chunk_commands: int = CHUNK_COMMANDS) -> bool:
    """Apply one batch's aggregates in bounded MULTI/EXEC chunks; False when the batch was already applied.

    Each chunk's transaction also records ``<batch id>:<chunks done>`` for its group, so a replay after a
    crash between chunks applies only the chunks that are missing; the live group's last chunk rebuilds the
    windows, raises the watermark and stores the batch id. One huge transaction held Redis for 8-13 s on a
    catch-up batch, and the API's reads (0.25 s timeout) failed meanwhile (docs/chaos.md). On a Redis
    Cluster the groups are hash slots (a transaction may not span two); on a single Redis, one group.
    """
    groups = command_groups(client, batch_commands(agg))
    done = applied_chunks(client, marker, batch_id, [tag for tag, _ in groups])
    if done is None:
        return False
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    for (tag, cmds), already in zip(groups, done):
        parts = chunks(cmds, chunk_commands)
        for index, part in enumerate(parts):
            if index < already:
                continue
            pipe = client.pipeline(transaction=True)
            for name, args, kwargs in part:
                getattr(pipe, name)(*args, **kwargs)
            if tag == online.LIVE and index == len(parts) - 1:
                _close_batch(pipe, marker, batch_id, agg, now)
            else:
                pipe.set(chunk_key(marker, tag), f"{batch_id}:{index + 1}", ex=CHUNK_MARKER_TTL_S)
            pipe.execute()
    return True


def _close_batch(pipe, marker: str, batch_id: int, agg: BatchAggregates, now: int) -> None:
    """The batch's last transaction: current windows rebuilt, newest event time raised, batch id stored."""
    current_1m = now - now % TUMBLING_MS
    current_5m = now - now % SLIDE_MS
    pipe.zunionstore(online.trending_key("1m"), [pane_key("1m", current_1m)])
    pipe.expire(online.trending_key("1m"), TRENDING_1M_TTL_S)
    pipe.zunionstore(online.trending_key("10m"), [pane_key("5m", current_5m - SLIDE_MS), pane_key("5m", current_5m)])
    pipe.expire(online.trending_key("10m"), TRENDING_10M_TTL_S)
    if agg.max_ts is not None:  # the newest event time moves forward only, and never past the wall clock
        online.raise_pointers(pipe, [watermark_key(marker)], min(int(agg.max_ts), now))
    pipe.set(marker, batch_id)
    pipe.delete(chunk_key(marker))


class RedisAggregates:
    """Applies one micro-batch's aggregates to Redis, exactly once per batch id (retried while Redis is down)."""

    def __init__(self, settings, marker_id: str, late_after_ms: int):
        self.client = clients.redis_client(settings)
        self.marker = marker_key(marker_id)
        self.late_after_ms = late_after_ms
        self.applied = 0
        self.late = 0

    def _retry(self, what: str, fn):
        """``fn()``, retried every 2 s for as long as Redis is down: a batch's aggregates are never dropped."""
        def report(state) -> None:
            print(f"aggregates: Redis unavailable while {what} ({state.outcome.exception()}); retrying in 2s", flush=True)

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)),
            wait=tenacity.wait_fixed(2), before_sleep=report, reraise=True)(fn)

    def __call__(self, valid_events, batch_id: int) -> BatchAggregates:
        watermark = self._retry("reading the watermark",
                                lambda: read_watermark(self.client, self.marker, self.late_after_ms))
        agg = aggregate(valid_events, watermark)
        if agg.events:
            applied = self._retry(f"applying batch {batch_id}",
                                  lambda: apply_aggregates(self.client, self.marker, batch_id, agg))
            if applied:
                self.applied += agg.events
                self.late += agg.late
        return agg
