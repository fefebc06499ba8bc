"""Real-time aggregates in the real Redis, fed by the supervised streaming job."""

from __future__ import annotations

import json
import time
import uuid

from feature_store import online
from spark.stream_aggregates import BatchAggregates, apply_aggregates, chunk_key, marker_key


def test_a_replayed_batch_is_not_counted_twice(redis_client):
    item = f"i-{uuid.uuid4()}"
    marker = marker_key(f"test-{uuid.uuid4()}")
    agg = BatchAggregates(panes_1m=[], panes_5m=[], popular=[(item, 3.0)], user_stats=[], recent=[], events=1)
    assert apply_aggregates(redis_client, marker, 0, agg)
    assert not apply_aggregates(redis_client, marker, 0, agg)  # replay of batch 0
    assert apply_aggregates(redis_client, marker, 1, agg)
    assert redis_client.zscore(online.popular_key(), item) == 6.0
    redis_client.zrem(online.popular_key(), item)


def test_events_from_kafka_reach_redis_aggregates(settings, redis_client):
    from kafka import KafkaProducer

    from feedloop.events import new_event

    user, item = f"u-{uuid.uuid4()}", f"i-{uuid.uuid4()}"
    events = [new_event("view", user, item), new_event("purchase", user, item), new_event("impression", user, "other")]
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", enable_idempotence=True)
    for event in events:
        producer.send(settings.kafka.events_topic, json.dumps(event).encode(), key=user.encode())
    producer.flush(30)
    producer.close()

    deadline = time.time() + 180
    while time.time() < deadline and redis_client.zscore(online.popular_key(), item) is None:
        time.sleep(0.5)
    assert redis_client.zscore(online.popular_key(), item) == 6.0  # view 1 + purchase 5
    assert redis_client.hgetall(online.user_stats_key(user)) == {"view": "1", "purchase": "1", "impression": "1"}
    assert 0 < redis_client.ttl(online.user_stats_key(user)) <= 300
    assert redis_client.zrange(online.user_recent_key(user), 0, -1) == [item]
    assert redis_client.zscore(online.trending_key("10m"), item) == 6.0


class CrashAfter:
    """A Redis client whose transactions fail (as a crashed driver would stop) after ``n`` of them ran."""

    def __init__(self, client, n: int):
        self.client, self.left = client, n

    def get(self, key):
        return self.client.get(key)

    def pipeline(self, transaction=True):
        if transaction:  # (the reads of the progress markers are a plain pipeline)
            if self.left == 0:
                raise RuntimeError("driver crashed between chunks")
            self.left -= 1
        return self.client.pipeline(transaction=transaction)


def test_a_batch_cut_into_chunks_and_replayed_after_a_crash_counts_once(redis_client):
    tag = uuid.uuid4().hex[:8]
    marker = marker_key(f"test-{tag}")
    items = [f"i-{tag}-{n}" for n in range(25)]
    users = [f"u-{tag}-{n}" for n in range(10)]
    agg = BatchAggregates(panes_1m=[], panes_5m=[], popular=[(i, 2.0) for i in items],
                          user_stats=[(u, "view", 3) for u in users], recent=[], events=30)
    # 25 + 20 commands in chunks of 7: 7 transactions; the driver dies after 3 of them
    try:
        apply_aggregates(CrashAfter(redis_client, 3), marker, 5, agg, chunk_commands=7)
        raise AssertionError("the crash was not injected")
    except RuntimeError:
        pass
    assert redis_client.get(marker) is None and redis_client.get(chunk_key(marker)) == "5:3"
    # the replay of batch 5 (rows collected in another order) applies only the missing chunks
    replay = BatchAggregates(panes_1m=[], panes_5m=[], popular=list(reversed(agg.popular)),
                             user_stats=list(reversed(agg.user_stats)), recent=[], events=30)
    assert apply_aggregates(redis_client, marker, 5, replay, chunk_commands=7)
    assert not apply_aggregates(redis_client, marker, 5, agg, chunk_commands=7)
    assert [redis_client.zscore(online.popular_key(), i) for i in items] == [2.0] * len(items)
    assert [redis_client.hget(online.user_stats_key(u), "view") for u in users] == ["3"] * len(users)
    assert redis_client.get(marker) == "5" and redis_client.get(chunk_key(marker)) is None
    redis_client.zrem(online.popular_key(), *items)
    redis_client.delete(marker, chunk_key(marker), *[online.user_stats_key(u) for u in users])
