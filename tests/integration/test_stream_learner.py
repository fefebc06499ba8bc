"""The online learner over real services: clicks on a new item from one segment's users reach
that segment's feed in Redis, published as `<champion>+online.<n>`; the state survives restarts.

Runs after test_skeleton (alphabetical order), whose DAG run leaves a champion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from feature_store import online
from feedloop.events import new_event
from feedloop.simulator import make_producer
from tests.integration.conftest import hive_query

ROUNDS = 3
CLICKS_PER_USER = 4


def _learner_once(settings) -> str:
    # the test champion is trained on a few thousand events: its holdout recall is noise-level, so the
    # guardrail's bound is widened here (the guardrail itself: tests/unit/test_online_learner.py)
    env = {**os.environ, "FEEDLOOP_MODEL__ONLINE_MIN_TOLERANCE": "0.5"}
    run = subprocess.run([sys.executable, "-m", "feedloop.cli", "stream-learner", "--once"], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


@pytest.fixture(scope="module")
def champion(settings):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    version = client.get_model_version_by_alias(settings.mlflow.model_name, "champion")
    assert version is not None, "no champion: test_skeleton's DAG run should have made one"
    return version


def test_a_burst_of_clicks_reaches_the_segments_feed(settings, redis_client, champion):
    users = hive_query(settings, "SELECT user_id, gender, age, interests FROM users")
    from feature_store.segments import segment_of

    by_segment: dict[str, list[str]] = {}
    for user_id, gender, age, interests in users:
        interests = json.loads(interests) if isinstance(interests, str) else list(interests or [])  # PyHive: JSON
        by_segment.setdefault(segment_of(gender, age, interests), []).append(user_id)
    segment, fans = max(by_segment.items(), key=lambda kv: len(kv[1]))
    item = f"fresh-{uuid.uuid4().hex[:8]}"

    first = _learner_once(settings)  # from the latest offsets: nothing old is learned
    assert "stream-learner done" in first, first[-2000:]
    producer = make_producer(settings)
    for _ in range(ROUNDS):
        for user in fans[:10]:
            for _ in range(CLICKS_PER_USER):
                producer.send(settings.kafka.events_topic, new_event("click", user, item, position=0))
        producer.flush()
        out = _learner_once(settings)
    producer.close()

    state = json.loads((settings.var / "run" / "stream-learner.json").read_text())
    assert state["version"].startswith(f"{champion.version}+online."), (state, out[-2000:])
    assert state["since_start"]["accepted"] >= 1, state
    feed = online.read_feed(redis_client, "seg", segment)
    assert feed is not None and feed.model_version.startswith(f"{champion.version}+online."), feed
    assert item in feed.items, (segment, feed.items[:10], out[-2000:])
    pointer = json.loads((settings.var / "online" / "current.json").read_text())
    assert pointer["base_version"] == str(champion.version) and (settings.var / "online" / pointer["towers"]).is_dir()
    # a restart resumes from the checkpoint: no new events, nothing relearned, same version
    _learner_once(settings)
    assert json.loads((settings.var / "online" / "current.json").read_text())["version"] == pointer["version"]
