"""Real-time aggregates in the real Redis, fed by the supervised streaming job."""

from __future__ import annotations

import json
import time
import uuid

from feature_store import online
from spark.stream_aggregates import BatchAggregates, apply_aggregates


def test_a_replayed_batch_is_not_counted_twice(redis_client):
    item = f"i-{uuid.uuid4()}"
    marker = online.key("agg", "batch", f"test-{uuid.uuid4()}")
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
