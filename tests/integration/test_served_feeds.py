"""Served feeds logged to Kafka land in Hive served_feeds (for CTR per model version)."""

from __future__ import annotations

import json
import time
import uuid


def test_served_feed_records_reach_hive(settings):
    from kafka import KafkaProducer

    from feedloop.clients import hive_connection

    feed_id = f"seg:F|25-34|comedy@{uuid.uuid4()}"
    record = {"feed_id": feed_id, "user_id": "u-served", "segment": "F|25-34|comedy", "source": "segment",
              "model_version": "7", "items": ["i1", "i2"], "served_at": int(time.time() * 1000)}
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", enable_idempotence=True)
    producer.send(settings.kafka.served_topic, json.dumps(record).encode(), key=b"u-served")
    producer.send(settings.kafka.served_topic, b"not json", key=b"u-served")  # dropped, not fatal
    producer.flush(30)
    producer.close()

    cursor = hive_connection(settings, "feedloop").cursor()
    deadline, rows = time.time() + 240, []
    while time.time() < deadline and not rows:
        cursor.execute("SELECT user_id, source, model_version, items FROM served_feeds WHERE feed_id = %(f)s",
                       {"f": feed_id})
        rows = cursor.fetchall()
        time.sleep(3)
    assert rows == [("u-served", "segment", "7", '["i1","i2"]')]
