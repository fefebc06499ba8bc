"""The online learner over real services: clicks on a new item from one segment's users reach
that segment's feed in Redis, published as `<champion>+online.<n>`; the state survives restarts,
a crash after publishing and a kill -9 mid-batch (no event learned twice or skipped); a flood from
one user or on one item is cut to the flood caps; Redis down during publication is retried until
it is back; a wrecking update is refused by the holdout bound; a state that falls behind the
champion on the present is reset to it by the prequential judge, exactly, learning stops and
`feedloop status` says so.

Runs on the champion test_skeleton's DAG run leaves when the session ran it; run alone, the
champion fixture trains one on a simulated day of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from bench.private import PrivateRedis
from feature_store import online
from feedloop.clients import make_producer
from feedloop.events import new_event
from sources import simulator
from spark.partitions import partition_rows, wait_for_rows
from tests.integration.conftest import feedloop_cli, hive_query

ROUNDS = 3
# the day the champion fixture simulates and trains on when the session has no champion (not test_skeleton's)
LEARNER_DS, LEARNER_EVENTS = "2026-11-19", 3000
CLICKS_PER_USER = 4
# the test champion is trained on a few thousand events, so the tests of the learner's plumbing switch its judges
# off (a margin no shortfall of percentile ranks can exceed, no holdout floor); the last two tests switch them on
JUDGES_OFF = {"FEEDLOOP_MODEL__ONLINE_PREQUENTIAL_MARGIN": "1.0", "FEEDLOOP_MODEL__ONLINE_HOLDOUT_FLOOR": "0"}
# a bad update: it learns the clicks backwards, at 50 times the daily learning rate, dense layers included
BACKWARDS = {"FEEDLOOP_MODEL__ONLINE_LEARNING_RATE_SHARE": "-50", "FEEDLOOP_MODEL__ONLINE_EMBEDDINGS_ONLY": "false"}


def _learner_once(settings, expect: int = 0, **env: str) -> str:
    env = {**os.environ, **JUDGES_OFF, **env}
    run = subprocess.run([sys.executable, "-m", "feedloop.cli", "stream-learner", "--once"], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == expect, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def _caught_up(settings) -> bool:
    """The learner's query has committed every event of the topic: its Spark checkpoint's offsets (the
    last committed batch's) reach Kafka's end offsets in every partition."""
    from confluent_kafka import Consumer, TopicPartition

    from dashboard.snapshot import query_lag
    from feedloop.progress import committed_partition_offsets

    topic = settings.kafka.events_topic
    committed = committed_partition_offsets(settings, "stream-learner", topic)
    if committed is None:
        return False
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "test-learner-offsets",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()
    return query_lag(ends, committed) == 0  # the dashboard's consumer-lag arithmetic


def _from_the_present(settings) -> None:
    """Learn (with the judges off) whatever earlier tests left in the topic, so a test's batch is its own; a
    learner start (a JVM, TensorFlow, the champion) only when something is left."""
    if not _caught_up(settings):
        _learner_once(settings)


class Learner:
    """`feedloop stream-learner --once` in the background, in its own process group (the Spark JVM with it)."""

    def __init__(self, **env: str):
        env = {**os.environ, **JUDGES_OFF, **env}
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


def _registered(client, name: str):
    """(the champion version or None, the other trained versions: tagged with a ds, not online states)."""
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        champion = None
    others = [v for v in client.search_model_versions(f"name='{name}'")
              if (champion is None or v.version != champion.version) and v.tags.get("ds")
              and "online_version" not in v.tags]
    return champion, others


@pytest.fixture(scope="module")
def champion(settings):
    """The stack's champion, and a second trained version for the successor test.

    A session that ran test_skeleton has both; run alone, this module makes them itself: one
    simulated day through Kafka and the sink into Hive, its features and training set, a train
    and a gate (the first version becomes champion), then one more train."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    name = settings.mlflow.model_name
    champion, others = _registered(client, name)
    quick = {"FEEDLOOP_MODEL__TUNE": "false"}  # a plain fit: the learner's tests need a champion, not a good one
    if champion is None:
        before = partition_rows(settings, "events", LEARNER_DS)
        simulator.main(argparse.Namespace(users=120, items=200, events=LEARNER_EVENTS, rate=0, duration=0, seed=11,
                                          ds=LEARNER_DS, no_catalogue=False))
        wait_for_rows(settings, LEARNER_DS, before + LEARNER_EVENTS, timeout_s=600)
        for step in ("features", "training-set"):
            feedloop_cli(step, "--ds", LEARNER_DS)
        feedloop_cli("train", "--ds", LEARNER_DS, env=quick)
        feedloop_cli("gate", "--ds", LEARNER_DS)
        champion, others = _registered(client, name)
        assert champion is not None, "the gate promoted no version over an empty registry"
    if not others:
        feedloop_cli("train", "--ds", champion.tags["ds"], env=quick)
        champion, others = _registered(client, name)
        assert others, "the second train registered no version"
    return champion


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
    # every learned batch is committed in Spark's checkpoint too: a restart has nothing to learn again
    assert _caught_up(settings)


def test_a_crash_after_publishing_neither_loses_nor_relearns_the_batch(settings, redis_client, champion):
    """Killed after publishing a batch's feeds but before its checkpoint: the restart learns it exactly once."""
    segment, fans = _biggest_segment(settings)
    _from_the_present(settings)
    before = _pointer(settings)
    item = f"crash-{uuid.uuid4().hex[:8]}"
    _burst(settings, fans[:10], item)
    out = _learner_once(settings, expect=137, LEARNER_FAULT="after-publish")
    assert _pointer(settings) == before, out[-2000:]  # the crashed batch was not checkpointed
    out = _learner_once(settings)  # Spark replays the uncommitted batch; the learner starts from the checkpoint
    after = _pointer(settings)
    assert after["batch_id"] > before["batch_id"], out[-2000:]
    # one update for one batch: learned once, not twice (and not skipped)
    assert after["updates"] == before["updates"] + 1, (before, after, out[-2000:])
    assert after["version"] == f"{champion.version}+online.{after['updates']}"
    assert _caught_up(settings)  # the replayed batch is committed: nothing is left to learn again
    # the burst's segment feed is whole and the learned one: the replayed batch was published again
    feed = online.read_feed(redis_client, "seg", segment)
    assert feed is not None and feed.items and feed.model_version == after["version"], (feed, out[-2000:])


def test_kill_9_mid_batch_then_restart_learns_the_batch_exactly_once(settings, redis_client, champion):
    segment, fans = _biggest_segment(settings)
    _from_the_present(settings)
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
    assert _caught_up(settings)  # and committed: not learned again


def test_a_flood_from_one_user_and_on_one_item_is_cut_to_the_caps(settings, redis_client, champion):
    from models.online import MAX_PAIR_WEIGHT

    segment, fans = _biggest_segment(settings)
    _from_the_present(settings)
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
    out = _learner_once(settings)
    state = _progress(settings)
    assert state["events"] == 3000 + len(ordinary), (state, out[-2000:])
    assert state["pairs_in"] == 251 + 1500 + len(ordinary), state
    # the flood caps: the bot counts for 20 pairs, the hyped item for 50, ordinary users are untouched
    assert state["top_user_pairs"] <= 20 and state["top_item_pairs"] <= 50, state
    assert state["pairs_used"] <= 20 + 50 + len(ordinary), state
    assert state["top_pair_weight"] <= MAX_PAIR_WEIGHT, state  # 1,000 clicks on one item weigh no more than that
    # what is left of the flood is learned like ordinary traffic (judges off: the caps are the subject here)
    assert state["accepted"] and _pointer(settings)["updates"] == before["updates"] + 1, state


def test_redis_down_during_publication_is_retried_and_published_when_back(settings, champion, tmp_path):
    segment, fans = _biggest_segment(settings)
    private = PrivateRedis(tmp_path, settings.redis.password)  # the learner's Redis, down for now
    _from_the_present(settings)
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
    _, others = _registered(client, name)
    assert others, "the champion fixture leaves a second trained version"
    successor = max(others, key=lambda v: int(v.version))
    segment, fans = _biggest_segment(settings)
    _from_the_present(settings)
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


def _ordinary_clicks(settings, n: int) -> list[tuple[str, str]]:
    """Clicks the champion was trained on: (user, item) pairs of the events table, the present's kind of traffic."""
    # known users on catalogue items: not the new items, bots and crowds the other tests sent
    rows = hive_query(settings, "SELECT e.user_id, e.item_id FROM events e JOIN items i ON e.item_id = i.item_id "
                                "JOIN users u ON e.user_id = u.user_id WHERE e.event_type = 'click' "
                                f"ORDER BY e.ts DESC LIMIT {n}")
    assert len(rows) == n, f"the events table holds {len(rows)} clicks, the test needs {n}"
    return [(u, i) for u, i in rows]


def _send(settings, clicks: list[tuple[str, str]]) -> None:
    producer = make_producer(settings)
    for user, item in clicks:
        producer.send(settings.kafka.events_topic, new_event("click", user, item, position=0))
    producer.flush()
    producer.close()


def _forget_online_state(settings) -> None:
    for path in (settings.var / "online").glob("*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.fixture()
def fresh_online_state(settings):
    """No online state before (the next batch starts from the champion, with an empty window) and none left
    behind (the halted learner would stay halted for this champion)."""
    _from_the_present(settings)  # what earlier tests sent is not learned here
    _forget_online_state(settings)
    yield
    _forget_online_state(settings)


def test_a_wrecking_update_is_refused_by_the_holdout_bound(settings, redis_client, champion, fresh_online_state):
    clicks = _ordinary_clicks(settings, 60)
    users = sorted({u for u, _ in clicks})
    feeds_before = {s: online.read_feed(redis_client, "seg", s) for s in _segments_of(settings, users)}
    _send(settings, clicks)
    out = _learner_once(settings, **BACKWARDS, FEEDLOOP_MODEL__ONLINE_HOLDOUT_FLOOR="0.5")
    state = _progress(settings)
    assert state["floor"] > 0, ("the test champion's holdout recall is 0: no bound to hold", state, out[-2000:])
    assert not state["accepted"] and state["reason"].startswith("refused: holdout recall"), (state, out[-2000:])
    assert state["guard_after"] < state["floor"]
    after = _pointer(settings)  # nothing learned, nothing published: the state is still the champion's
    assert after["base_version"] == str(champion.version) and after["updates"] == 0, after
    assert after["version"] == str(champion.version) and "towers" not in after, after
    assert {s: online.read_feed(redis_client, "seg", s) for s in feeds_before} == feeds_before


def _segments_of(settings, users: list[str]) -> list[str]:
    quoted = ", ".join(f"'{u}'" for u in users)
    return sorted({s for (s,) in hive_query(settings, f"SELECT DISTINCT segment FROM user_features "
                                                      f"WHERE user_id IN ({quoted})")})


def test_a_state_behind_the_champion_is_reset_to_it_exactly_and_learning_stops(settings, redis_client, champion,
                                                                               fresh_online_state):
    """A backwards update the holdout bound lets through (floor 0); the next batches, scored before they are
    learned, find the online state behind the frozen champion: the judge resets it to the champion's weights
    (exactly), republishes its segments' feeds, stops learning (one reset allowed) and `feedloop status` alerts."""
    from feedloop.progress import learner_progress
    from models.train import configure_mlflow
    from models.two_tower import TwoTower, load_registered

    judge = {"FEEDLOOP_MODEL__ONLINE_PREQUENTIAL_MARGIN": "0.02", "FEEDLOOP_MODEL__ONLINE_PREQUENTIAL_WINDOW": "3",
             "FEEDLOOP_MODEL__ONLINE_PREQUENTIAL_MIN_EVENTS": "10", "FEEDLOOP_MODEL__ONLINE_MAX_ROLLBACKS": "1",
             "FEEDLOOP_MODEL__ONLINE_HOLDOUT_FLOOR": "0"}
    clicks = _ordinary_clicks(settings, 200)
    poison, present = clicks[:20], [clicks[20 + 60 * n:80 + 60 * n] for n in range(3)]
    _send(settings, poison)
    out = _learner_once(settings, **judge, **BACKWARDS)
    state = _progress(settings)
    assert state["accepted"] and not state["reset"], (state, out[-2000:])  # let through: scored only afterwards
    assert state["prequential_shortfall"] == 0.0  # the batch was scored before it was learned: champion vs itself
    poisoned = _pointer(settings)
    assert poisoned["updates"] == 1 and poisoned["version"] == f"{champion.version}+online.1", poisoned
    batches = []
    for part in present:
        _send(settings, part)
        out = _learner_once(settings, **judge)
        batches.append(_progress(settings))
        if batches[-1]["reset"]:
            break
    reset = batches[-1]
    assert reset["reset"] and reset["halted"] and not reset["accepted"], (batches, out[-2000:])
    assert reset["prequential_shortfall"] > 0.02, reset
    assert reset["reason"].startswith("not learned: reset to champion"), reset
    assert "ALERT stream-learner stopped learning: reset to champion" in learner_progress(settings)
    # the state now is the champion's, weight for weight, published under the next version
    after = _pointer(settings)
    assert after["version"] == f"{champion.version}+online.{after['updates']}", after
    assert after["updates"] == poisoned["updates"] + len(batches), (poisoned, after)  # learned, learned, reset
    restored = TwoTower.load(settings.var / "online" / after["towers"])
    configure_mlflow(settings)
    frozen = load_registered(settings.mlflow.model_name, champion.version)
    for mine, theirs in ((restored.query_tower, frozen.query_tower), (restored.item_tower, frozen.item_tower)):
        assert all(np.array_equal(a, b) for a, b in zip(mine.get_weights(), theirs.get_weights()))
    segments = _segments_of(settings, sorted({u for u, _ in poison}))
    assert all(online.read_feed(redis_client, "seg", s).model_version == after["version"] for s in segments)
    # stopped: the next batch is not learned, and a restart does not resume learning
    _send(settings, present[-1])
    _learner_once(settings, **judge)
    state = _progress(settings)
    assert state["halted"] and state["reason"].startswith("not learned: halted"), state
    assert _pointer(settings)["updates"] == after["updates"]
