"""Hive maintenance on the real services: compaction keeps every row and leaves one file per partition."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

from feedloop.events import new_event
from spark.partitions import partition_rows, wait_for_rows

DS = "2026-09-01"


def send(settings, events):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", enable_idempotence=True)
    for event in events:
        producer.send(settings.kafka.events_topic, json.dumps(event).encode(), key=event["user_id"].encode())
    producer.flush(30)
    producer.close()


def test_compaction_merges_batch_files_and_keeps_rows(settings):
    base = int(datetime.fromisoformat(DS).replace(tzinfo=timezone.utc).timestamp() * 1000)
    expected = partition_rows(settings, "events", DS)
    for chunk in range(3):  # three micro-batches -> three files in hour 0
        send(settings, [new_event("view", f"u{n}", f"i{n}", base + chunk * 1000 + n) for n in range(50)])
        expected += 50
        wait_for_rows(settings, DS, expected, timeout_s=240)
    hour0 = settings.warehouse / "feedloop.db" / "events" / f"dt={DS}" / "hr=0"
    assert len(list(hour0.glob("*.parquet"))) >= 3

    run = subprocess.run([sys.executable, "-m", "feedloop.cli", "compact", "--ds", DS],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "compact: feedloop.events dt=2026-09-01" in run.stdout
    assert len(list(hour0.glob("*.parquet"))) == 1
    assert partition_rows(settings, "events", DS) == expected
