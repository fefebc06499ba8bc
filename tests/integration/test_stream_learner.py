"""The online learner over real services: clicks on a new item from one segment's users reach
that segment's feed in Redis, published as `<champion>+online.<n>`; the state survives restarts,
a crash after publishing and a kill -9 mid-batch (no event learned twice or skipped); a flood from
one user or on one item is cut to the flood caps; Redis down during publication is retried until
it is back.

Runs after test_skeleton (alphabetical order), whose DAG run leaves a champion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from feature_store import online
from feedloop.events import new_event
from feedloop.simulator import make_producer
from tests.integration.conftest import PrivateRedis, hive_query

ROUNDS = 3
CLICKS_PER_USER = 4


def _learner_once(settings, expect: int = 0, **env: str) -> str:
    # the test champion is trained on a few thousand events: its holdout recall is noise-level, so the
    # guardrail's bound is widened here (the guardrail itself: tests/unit/test_online_learner.py)
    env = {**os.environ, "FEEDLOOP_MODEL__ONLINE_MIN_TOLERANCE": "0.5", **env}
    run = subprocess.run([sys.executable, "-m", "feedloop.cli", "stream-learner", "--once"], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == expect, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


class Learner:
    """`feedloop stream-learner --once` in the background, in its own process group (the Spark JVM with it)."""

    def __init__(self, **env: str):
        env = {**os.environ, "FEEDLOOP_MODEL__ONLINE_MIN_TOLERANCE": "0.5", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "feedloop.cli", "stream-learner", "--once"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)[-3000:]

    def wait_for(self, text: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in list(self.lines)):
            assert self.proc.poll() is None, f"the learner exited ({self.proc.returncode}) before {text!r}: {self.output}"
            assert time.monotonic() < deadline, f"no {text!r} from the learner in {timeout_s}s: {self.output}"
            time.sleep(0.1)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=10)

    def finish(self, timeout_s: float = 600) -> int:
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.reader.join(timeout=10)
        return code


def _biggest_segment(settings) -> tuple[str, list[str]]:
    from bench.freshness import segments_by_size

    return segments_by_size(settings)[0]


def _progress(settings) -> dict:
    return json.loads((settings.var / "run" / "stream-learner.json").read_text())


def _pointer(settings) -> dict:
    return json.loads((settings.var / "online" / "current.json").read_text())


def _burst(settings, users: list[str], item: str) -> None:
    producer = make_producer(settings)
    for user in users:
        for _ in range(CLICKS_PER_USER):
            producer.send(settings.kafka.events_topic, new_event("click", user, item, position=0))
    producer.flush()
    producer.close()


@pytest.fixture(scope="module")
def champion(settings):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    version = client.get_model_version_by_alias(settings.mlflow.model_name, "champion")
    assert version is not None, "no champion: test_skeleton's DAG run should have made one"
    return version


def test_a_burst_of_clicks_reaches_the_segments_feed(settings, redis_client, champion):
    segment, fans = _biggest_segment(settings)
    item = f"fresh-{uuid.uuid4().hex[:8]}"

    first = _learner_once(settings)  # from the latest offsets: nothing old is learned
    assert "stream-learner done" in first, first[-2000:]
    for _ in range(ROUNDS):
        _burst(settings, fans[:10], item)
        out = _learner_once(settings)

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


def test_a_crash_after_publishing_neither_loses_nor_relearns_the_batch(settings, redis_client, champion):
    """Killed after publishing a batch's feeds but before its checkpoint: the restart learns it exactly once."""
    users = [u for (u,) in hive_query(settings, "SELECT user_id FROM users LIMIT 10")]
    _learner_once(settings)  # start from the present
    before = _pointer(settings)
    _burst(settings, users, f"crash-{uuid.uuid4().hex[:8]}")
    out = _learner_once(settings, expect=137, LEARNER_FAULT="after-publish")
    assert _pointer(settings) == before, out[-2000:]  # the crashed batch was not checkpointed
    out = _learner_once(settings)  # Spark replays the uncommitted batch; the learner starts from the checkpoint
    after = _pointer(settings)
    assert after["batch_id"] > before["batch_id"], out[-2000:]
    # one update for one batch: learned once, not twice (and not skipped)
    assert after["updates"] == before["updates"] + 1, (before, after, out[-2000:])
    assert after["version"] == f"{champion.version}+online.{after['updates']}"
    _learner_once(settings)  # nothing new: nothing relearned
    assert _pointer(settings)["updates"] == after["updates"]
    for segment in hive_query(settings, "SELECT DISTINCT segment FROM user_features LIMIT 3"):
        feed = online.read_feed(redis_client, "seg", segment[0])
        assert feed is None or feed.items, segment  # published feeds stay whole


def test_kill_9_mid_batch_then_restart_learns_the_batch_exactly_once(settings, redis_client, champion):
    segment, fans = _biggest_segment(settings)
    _learner_once(settings)  # start from the present
    before = _pointer(settings)
    feed_before = online.read_feed(redis_client, "seg", segment)
    item = f"kill-{uuid.uuid4().hex[:8]}"
    _burst(settings, fans[:10], item)
    learner = Learner()
    learner.wait_for("online learner on champion")  # the batch is read and learning starts
    learner.kill()  # kill -9 of the learner and its Spark JVM, mid-batch
    assert _pointer(settings) == before, learner.output
    feed = online.read_feed(redis_client, "seg", segment)
    assert feed == feed_before or (feed is not None and feed.items), feed  # still a whole, valid feed
    out = _learner_once(settings)  # Spark replays the batch from its offsets; the checkpoint had not taken it
    after = _pointer(settings)
    assert after["updates"] == before["updates"] + 1, (before, after, out[-2000:])  # learned once
    feed = online.read_feed(redis_client, "seg", segment)
    assert feed.model_version == after["version"] and item in feed.items, (feed, out[-2000:])  # current
    _learner_once(settings)
    assert _pointer(settings)["updates"] == after["updates"]  # and not again


def test_a_flood_from_one_user_and_on_one_item_is_cut_to_the_caps(settings, redis_client, champion):
    from models.online import MAX_PAIR_WEIGHT

    ms = settings.model
    segment, fans = _biggest_segment(settings)
    _learner_once(settings)
    before = _pointer(settings)
    bot, hype = f"bot-{uuid.uuid4().hex[:8]}", f"hype-{uuid.uuid4().hex[:8]}"
    producer = make_producer(settings)
    for n in range(1500):  # one user: 1,000 clicks on one item, 500 across 250 items
        target = f"bot-fav-{bot}" if n < 1000 else f"bot-{n % 250}-{bot}"
        producer.send(settings.kafka.events_topic, new_event("click", bot, target, position=0))
    for n in range(1500):  # one item: 1,500 users (fresh ids), a click each
        producer.send(settings.kafka.events_topic, new_event("click", f"crowd-{n}-{hype}", hype, position=0))
    ordinary = fans[:10]
    for user in ordinary:  # and ordinary traffic
        producer.send(settings.kafka.events_topic, new_event("click", user, f"normal-{hype}", position=0))
    producer.flush()
    producer.close()
    # the guardrail at its default bounds here (the other tests widen them for the weak test champion)
    out = _learner_once(settings, FEEDLOOP_MODEL__ONLINE_MIN_TOLERANCE=str(ms.online_min_tolerance))
    state = _progress(settings)
    assert state["events"] == 3000 + len(ordinary), (state, out[-2000:])
    assert state["pairs_in"] == 251 + 1500 + len(ordinary), state
    # the flood caps: the bot counts for 20 pairs, the hyped item for 50, ordinary users are untouched
    assert state["top_user_pairs"] <= 20 and state["top_item_pairs"] <= 50, state
    assert state["pairs_used"] <= 20 + 50 + len(ordinary), state
    assert state["top_pair_weight"] <= MAX_PAIR_WEIGHT, state  # 1,000 clicks on one item weigh no more than that
    after = _pointer(settings)
    if state["accepted"]:  # the update kept the guard score above its floor
        assert state["guard_after"] >= state["floor"], state
        assert after["updates"] == before["updates"] + 1
    else:  # rolled back: nothing learned, nothing published
        assert state["reason"].startswith("rolled back"), state
        assert after["updates"] == before["updates"] and after["version"] == before["version"]


def test_redis_down_during_publication_is_retried_and_published_when_back(settings, champion, tmp_path):
    segment, fans = _biggest_segment(settings)
    private = PrivateRedis(tmp_path, settings.redis.password)  # the learner's Redis, down for now
    _learner_once(settings)
    before = _pointer(settings)
    item = f"redis-{uuid.uuid4().hex[:8]}"
    _burst(settings, fans[:10], item)
    learner = Learner(FEEDLOOP_REDIS__PORT=str(private.port))
    try:
        learner.wait_for("retrying in")  # learned, could not publish: it waits, uncommitted
        assert _pointer(settings) == before
        client = private.start()
        assert learner.finish() == 0, learner.output
        after = _pointer(settings)
        assert after["updates"] == before["updates"] + 1, learner.output
        feed = online.read_feed(client, "seg", segment)
        assert feed is not None and feed.model_version == after["version"] and item in feed.items, learner.output
    finally:
        if learner.proc.poll() is None:
            learner.kill()
        private.stop()


def test_a_new_champion_replaces_the_online_state(settings, redis_client, champion):
    """The next champion (here: the alias moved to another registered version) is learned on from scratch."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    name = settings.mlflow.model_name
    others = [v for v in client.search_model_versions(f"name='{name}'")
              if v.version != champion.version and v.tags.get("ds") and "online_version" not in v.tags]
    assert others, "test_skeleton registers more than one version"
    successor = max(others, key=lambda v: int(v.version))
    segment, fans = _biggest_segment(settings)
    _learner_once(settings)
    before = _pointer(settings)
    assert before["base_version"] == str(champion.version) and before["updates"] >= 1, before
    client.set_registered_model_alias(name, "champion", successor.version)
    try:
        item = f"next-{uuid.uuid4().hex[:8]}"
        _burst(settings, fans[:10], item)
        out = _learner_once(settings)
        after = _pointer(settings)
        assert after["base_version"] == str(successor.version), (after, out[-2000:])
        assert after["updates"] == 1 and after["version"] == f"{successor.version}+online.1", after
        assert "fresh from the registry" in out
        feed = online.read_feed(redis_client, "seg", segment)
        assert feed.model_version == after["version"] and item in feed.items, feed
        assert [p.name for p in (settings.var / "online").glob("b*")] == [after["towers"]]  # the old state is gone
    finally:
        client.set_registered_model_alias(name, "champion", champion.version)
