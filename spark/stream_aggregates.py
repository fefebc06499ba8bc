"""Real-time aggregates: Kafka events -> Redis trending, popular, user stats, recent history.

Each micro-batch is aggregated in Spark first, then applied to Redis in one
MULTI/EXEC transaction together with the batch id, so a batch replayed after a
crash (same id, same offsets) is skipped instead of counted twice.

Keys (all built by feature_store.online):
  trending panes   ``feedloop:trending:1m@<start ms>`` (1-minute tumbling) and
                   ``feedloop:trending:5m@<start ms>`` (5-minute panes);
  trending now     ``trending:1m`` = the current 1-minute window,
                   ``trending:10m`` = the current 10-minute window sliding by 5
                   (the union of the current and the previous 5-minute pane);
  popular          all-time weighted events per item;
  user stats       counts by event type, TTL 5 minutes from the last event;
  recent history   item -> last event time, newest 500 kept.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from feature_store import online
from feature_store.definitions import (
    RECENT_MAX_ITEMS, RECENT_TTL_S, SEEN_TYPES, SLIDE_MS, SLIDING_MS, TUMBLING_MS, USER_STATS_TTL_S,
)
from feedloop.settings import Settings

PANE_TTL_S = 3600
TRENDING_1M_TTL_S = 2 * TUMBLING_MS // 1000
TRENDING_10M_TTL_S = SLIDING_MS // 1000 + 60


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


def aggregate(events) -> BatchAggregates:
    """Aggregate validated events (columns event_type, user_id, item_id, ts, dwell_ms)."""
    from pyspark.sql import functions as F

    weighted = (
        events.where(F.col("item_id").isNotNull())
        .withColumn("weight", weight_column())
        .where(F.col("weight").isNotNull())
        .cache()
    )

    def panes(width_ms: int) -> list[tuple[int, str, float]]:
        pane = (F.floor(F.col("ts") / width_ms) * width_ms).cast("bigint").alias("pane")
        rows = weighted.groupBy(pane, F.col("item_id")).agg(F.sum("weight").alias("weight")).collect()
        return [(r.pane, r.item_id, float(r.weight)) for r in rows]

    popular = weighted.groupBy("item_id").agg(F.sum("weight").alias("weight")).collect()
    stats = events.groupBy("user_id", "event_type").agg(F.count(F.lit(1)).alias("n")).collect()
    recent = (
        events.where(F.col("event_type").isin(*SEEN_TYPES) & F.col("item_id").isNotNull())
        .groupBy("user_id", "item_id").agg(F.max("ts").alias("ts")).collect()
    )
    result = BatchAggregates(
        panes_1m=panes(TUMBLING_MS),
        panes_5m=panes(SLIDE_MS),
        popular=[(r.item_id, float(r.weight)) for r in popular],
        user_stats=[(r.user_id, r.event_type, int(r.n)) for r in stats],
        recent=[(r.user_id, r.item_id, int(r.ts)) for r in recent],
        events=events.count(),
    )
    weighted.unpersist()
    return result


def pane_key(width: str, start_ms: int) -> str:
    return f"{online.trending_key(width)}@{start_ms}"


def apply_aggregates(client, marker: str, batch_id: int, agg: BatchAggregates, now_ms: int | None = None) -> bool:
    """Apply one batch's aggregates in one transaction; False when the batch was already applied."""
    done = client.get(marker)
    if done is not None and int(done) >= batch_id:
        return False
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    pipe = client.pipeline(transaction=True)
    for width, rows in (("1m", agg.panes_1m), ("5m", agg.panes_5m)):
        for pane, item, weight in rows:
            pipe.zincrby(pane_key(width, pane), weight, item)
        for pane in sorted({p for p, _, _ in rows}):
            pipe.expire(pane_key(width, pane), PANE_TTL_S)
    for item, weight in agg.popular:
        pipe.zincrby(online.popular_key(), weight, item)
    for user, event_type, n in agg.user_stats:
        pipe.hincrby(online.user_stats_key(user), event_type, n)
        pipe.expire(online.user_stats_key(user), USER_STATS_TTL_S)
    touched = sorted({user for user, _, _ in agg.recent})
    for user, item, ts in agg.recent:
        pipe.zadd(online.user_recent_key(user), {item: ts}, gt=True)
    for user in touched:
        pipe.zremrangebyrank(online.user_recent_key(user), 0, -RECENT_MAX_ITEMS - 1)
        pipe.expire(online.user_recent_key(user), RECENT_TTL_S)
    current_1m = now - now % TUMBLING_MS
    current_5m = now - now % SLIDE_MS
    pipe.zunionstore(online.trending_key("1m"), [pane_key("1m", current_1m)])
    pipe.expire(online.trending_key("1m"), TRENDING_1M_TTL_S)
    pipe.zunionstore(online.trending_key("10m"), [pane_key("5m", current_5m - SLIDE_MS), pane_key("5m", current_5m)])
    pipe.expire(online.trending_key("10m"), TRENDING_10M_TTL_S)
    pipe.set(marker, batch_id)
    pipe.execute()
    return True


class RedisAggregatesSink:
    """foreachBatch target: validated events -> aggregates -> one Redis transaction."""

    def __init__(self, settings: Settings, checkpoint: Path):
        self.settings = settings
        self.checkpoint = checkpoint
        self.client = online.connect(settings)
        self._marker: str | None = None
        self.applied = 0

    def marker(self) -> str:
        # Keyed by the query id stored in the checkpoint, so a fresh checkpoint
        # (batch ids from 0 again) never matches an old marker.
        if self._marker is None:
            metadata = json.loads((self.checkpoint / "metadata").read_text())
            self._marker = online.key("agg", "batch", metadata["id"])
        return self._marker

    def __call__(self, batch_df, batch_id: int) -> None:
        from spark.stream_events import split_valid, validated

        # cached: aggregate() runs several actions, each would re-read Kafka and re-validate
        valid_events = split_valid(validated(batch_df))[0].cache()
        agg = aggregate(valid_events)
        valid_events.unpersist()
        if not agg.events:
            return
        while True:
            try:
                applied = apply_aggregates(self.client, self.marker(), batch_id, agg)
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:  # retry, never drop
                print(f"aggregates batch {batch_id}: Redis unavailable ({exc}); retrying in 2s", flush=True)
                time.sleep(2)
        self.applied += agg.events if applied else 0
        print(f"aggregates batch {batch_id}: {agg.events} events -> Redis"
              f"{'' if applied else ' (already applied, skipped)'}", flush=True)
