"""Redis Cluster safety, on real redis-servers this module starts (docs/cluster.md, "Redis").

* Every Lua script in the code base declares each key it touches: the scripts run on a
  private redis-server under MONITOR, which shows each command a script calls; every key of
  those commands (``COMMAND GETKEYS``) must be among the call's ``KEYS``. A script found in
  the code base but not exercised here fails the test too.
* The publication's feed flip, the feed reads (``feature_store.online`` and the API itself,
  through :mod:`serving.resp_cluster`), the catalogue and the streaming sink's aggregates
  (exactly once, a crash between chunks included) run on a 3-master Redis Cluster through
  redis-py's ``RedisCluster``: a key of another slot in a script, transaction or multi-key
  command fails there with ``CROSSSLOT`` (or redis-py refuses it before sending).
"""

from __future__ import annotations

import ast
import re
import subprocess
import time
import uuid

import pytest
import redis
from redis.cluster import RedisCluster

from bench.private import PrivateRedis, free_port
from feature_store import catalogue, online
from feedloop.settings import REPO_ROOT, Settings
from serving import store as serving_store
from spark import stream_aggregates as sink

CODE_DIRS = ("feedloop", "feature_store", "serving", "spark", "models", "sources", "dags", "infra", "dashboard", "bench")
MONITOR_LINE = re.compile(r"^[\d.]+ \[\d+ ([^\]]+)\] (.*)$")
ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
END = "feedloop-monitor-end"


def scripts_in_code() -> set[str]:
    """Every string constant of the code base that calls redis.call: the Lua scripts."""
    found = set()
    for directory in CODE_DIRS:
        for path in sorted((REPO_ROOT / directory).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and "redis.call(" in node.value:
                    found.add(node.value)
    return found


def _wait(check, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout_s}s"
        time.sleep(0.05)


def _answers(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1).ping()
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 3-master Redis Cluster (no replicas) of private redis-servers; a RedisCluster client."""
    root = tmp_path_factory.mktemp("redis-cluster")
    ports = [free_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            (root / str(port)).mkdir()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-port", str(free_port()), "--cluster-config-file", "nodes.conf", "--save", "",
                 "--appendonly", "no", "--dir", str(root / str(port))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in ports:
            _wait(lambda: _answers(port), f"redis-server on {port} answers")
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for port in ports:
            _wait(lambda: "cluster_state:ok" in redis.Redis(port=port, decode_responses=True).execute_command(
                "CLUSTER", "INFO"), f"node {port} sees the cluster ok")
        client = RedisCluster(host="127.0.0.1", port=ports[0], decode_responses=True)
        yield client
        client.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    server = PrivateRedis(tmp_path_factory.mktemp("redis-single"))
    client = server.start()
    yield client
    server.stop()


# -- every script declares what it touches --------------------------------------------


def undeclared_keys(client: redis.Redis, run) -> tuple[list[str], int]:
    """Run ``run()`` under MONITOR; (each command a script ran with a key it did not declare, how many
    commands scripts ran)."""
    lines = []
    with client.monitor() as monitor:
        run()
        client.echo(END)
        while True:
            line = monitor.connection.read_response()
            line = line.decode() if isinstance(line, bytes) else line
            if END in line:
                break
            lines.append(line)
    declared: set[str] = set()
    problems, script_commands = [], 0
    for line in lines:
        match = MONITOR_LINE.match(line)
        if not match:
            continue
        who, args = match.group(1), [re.sub(r"\\(.)", r"\1", a) for a in ARG.findall(match.group(2))]
        if who != "lua":
            if args and args[0].lower() in ("eval", "evalsha"):
                declared = set(args[3:3 + int(args[2])])
            continue
        script_commands += 1
        try:
            keys = client.command_getkeys(*args)
        except redis.ResponseError:  # a command without keys
            keys = []
        if set(keys) - declared:
            problems.append(f"{args[0]} {sorted(set(keys) - declared)} not in KEYS {sorted(declared)}")
    return problems, script_commands


def exercise_every_script(client: redis.Redis) -> set[str]:
    """Run each script of the code base the way its callers do; returns the sources run."""
    seg, user = f"F|{uuid.uuid4().hex[:6]}|comedy", f"u-{uuid.uuid4().hex[:6]}"
    feeds = {("seg", seg): online.Feed(["i1", "i2"], "v1"), ("user", user): online.Feed(["i3"], "v1"),
             (online.CATEGORY_FEED, online.category_feed_ident(seg, "comedy")): online.Feed(["i1"], "v1")}
    pub = int(online.publish_feeds(client, feeds, ttl_s=60))
    online.publish_feeds(client, {("seg", seg): online.Feed(["old"], "v0")}, ttl_s=60, publication=str(pub - 1))
    online.raise_pointers(client, [online.key("test", "pointer", user)], 5)
    client.hset(online.user_profile_key(user), "segment", seg)
    client.zadd(online.user_recent_key(user), {"i9": 1})
    segment, recent, raw = client.eval(serving_store._USER_VIEW.source, 3, *online.user_view_keys(user),
                                       serving_store.MAX_RECENT)
    assert (segment, recent, online.Feed.from_json(raw).items) == (seg, "i9", ["i3"])
    assert online.read_feed(client, "seg", seg).items == ["i1", "i2"]  # the stale publication was refused
    return {online.FLIP, online.RAISE, serving_store._USER_VIEW.source}


def test_every_lua_script_declares_every_key_it_touches(single):
    ran: set[str] = set()
    problems, commands = undeclared_keys(single, lambda: ran.update(exercise_every_script(single)))
    assert not problems, problems
    assert commands >= 10, f"only {commands} commands ran inside scripts"
    assert scripts_in_code() - ran == set(), "a Lua script this test does not exercise: add it to exercise_every_script"


def test_the_check_catches_a_key_read_through_a_pointer(single):
    """The pattern the feed reads used before (the body's key built inside the script) is caught."""
    pointer_read = "local p = redis.call('GET', KEYS[1]) return redis.call('GET', KEYS[1] .. '@' .. (p or '0'))"
    problems, _ = undeclared_keys(single, lambda: single.eval(pointer_read, 1, "feedloop:t:{x}:pointer"))
    assert problems == ["GET ['feedloop:t:{x}:pointer@0'] not in KEYS ['feedloop:t:{x}:pointer']"]


# -- the paths, on a real Redis Cluster -----------------------------------------------


def test_publication_flip_and_feed_reads_on_a_cluster(cluster):
    segments = [f"{g}|25-34|c{n}" for g in "FM" for n in range(3)]
    users = [f"u{n:05d}-{uuid.uuid4().hex[:4]}" for n in range(300)]
    feeds = {("seg", s): online.Feed([f"{s}-i"], "v1") for s in segments}
    feeds |= {(online.CATEGORY_FEED, online.category_feed_ident(s, "drama")): online.Feed(["d1"], "v1") for s in segments}
    feeds |= {("user", u): online.Feed([f"{u}-i"], "v1") for u in users}
    assert len({cluster.keyslot(online.feed_key("user", u)) for u in users}) > 100  # spread over slots and nodes
    pub = int(online.publish_feeds(cluster, feeds, ttl_s=120))
    got = online.read_feeds(cluster, list(feeds))
    assert [f.items for f in got] == [f.items for f in feeds.values()]
    assert {f.publication for f in got} == {str(pub)}
    assert 0 < cluster.ttl(online.feed_key("user", users[0])) <= 120
    # a stale publication is refused per feed, a newer one replaces, both without a trace left
    online.publish_feeds(cluster, {("seg", segments[0]): online.Feed(["stale"], "v0")}, ttl_s=120,
                         publication=str(pub - 1))
    online.publish_feeds(cluster, {("user", users[0]): online.Feed(["new"], "v2")}, ttl_s=120,
                         publication=str(pub + 1))
    assert online.read_feed(cluster, "seg", segments[0]).items == [f"{segments[0]}-i"]
    assert online.read_feed(cluster, "user", users[0]).items == ["new"]
    assert cluster.exists(online.feed_key("seg", segments[0]) + f"@{pub - 1}") == 0


def test_catalogue_on_a_cluster(cluster):
    items = [{"item_id": f"i{n}", "title": f"title {n}", "category": "comedy" if n % 2 else "drama", "price": n}
             for n in range(50)]
    version = catalogue.write_catalogue(cluster, items)
    assert cluster.get(catalogue.pointer_key()) == version
    assert cluster.zcard(catalogue.category_key(version, "comedy")) == 25
    assert catalogue.write_catalogue(cluster, items, version=str(int(version) + 1)) == str(int(version) + 1)


def _batch(users: list[str], items: list[str], now: int) -> sink.BatchAggregates:
    return sink.BatchAggregates(
        panes_1m=[(now - now % 60000, i, 1.0) for i in items], panes_5m=[(now - now % 300000, i, 1.0) for i in items],
        popular=[(i, 1.0) for i in items], user_stats=[(u, "view", 1) for u in users],
        recent=[(u, items[0], now) for u in users], events=len(users), max_ts=now)


def test_sink_aggregates_exactly_once_on_a_cluster_across_a_crash(cluster, monkeypatch):
    users = [f"u{n:04d}-{uuid.uuid4().hex[:4]}" for n in range(400)]
    items = [f"i-{uuid.uuid4().hex[:6]}-{n}" for n in range(30)]
    marker, now = sink.marker_key(f"test-{uuid.uuid4().hex[:6]}"), int(time.time() * 1000)
    assert len(sink.command_groups(cluster, sink.batch_commands(_batch(users, items, now)))) > 100
    assert sink.apply_aggregates(cluster, marker, 1, _batch(users, items, now), now, chunk_commands=3)
    assert not sink.apply_aggregates(cluster, marker, 1, _batch(users, items, now), now, chunk_commands=3)

    real, transactions = cluster.pipeline, []

    def crashing(transaction=None, shard_hint=None):  # the sink dies after 150 transactions of batch 2
        if transaction:
            transactions.append(1)
            if len(transactions) > 150:
                raise redis.ConnectionError("the sink crashed here")
        return real(transaction=transaction, shard_hint=shard_hint)

    monkeypatch.setattr(cluster, "pipeline", crashing)
    with pytest.raises(redis.ConnectionError):
        sink.apply_aggregates(cluster, marker, 2, _batch(users, items, now), now, chunk_commands=3)
    monkeypatch.undo()
    assert sink.apply_aggregates(cluster, marker, 2, _batch(users, items, now), now, chunk_commands=3)  # the replay

    assert [cluster.hget(online.user_stats_key(u), "view") for u in users] == ["2"] * len(users)
    assert [cluster.zscore(online.popular_key(), i) for i in items] == [2.0] * len(items)
    assert cluster.zscore(online.trending_key("1m"), items[0]) == 2.0
    assert cluster.zscore(online.trending_key("10m"), items[0]) == 2.0
    assert cluster.zrange(online.user_recent_key(users[0]), 0, -1) == [items[0]]
    assert sink.read_watermark(cluster, marker, 0) == now
    cluster.zrem(online.popular_key(), *items)


def test_the_api_reads_feeds_from_a_cluster(cluster):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.served_log import ServedLog

    port = int(cluster.get_default_node().port)
    settings = Settings(api={"api_key": "k"}, redis={"port": port, "cluster": True},
                        kafka={"bootstrap": "127.0.0.1:1", "request_timeout_ms": 300})
    user, lost, seg = f"u-{uuid.uuid4().hex[:6]}", f"u-{uuid.uuid4().hex[:6]}", "any|any|any"
    catalogue.write_catalogue(cluster, [{"item_id": i, "title": i, "category": c, "price": 1}
                                        for i, c in (("a1", "comedy"), ("a2", "drama"), ("a3", "comedy"))])
    cluster.hset(online.user_profile_key(user), "segment", seg)
    cluster.zadd(online.user_recent_key(user), {"a3": 1})
    online.publish_feeds(cluster, {("user", user): online.Feed(["a2", "a3", "a1"], "v1", scores=[3, 2, 1]),
                                   ("seg", seg): online.Feed(["a1", "a2"], "v1", scores=[2, 1]),
                                   (online.CATEGORY_FEED, online.category_feed_ident(seg, "comedy")):
                                       online.Feed(["a1"], "v1", scores=[1])}, ttl_s=120)
    served = ServedLog("127.0.0.1:1", settings.kafka.served_topic, queue_max_messages=10, message_timeout_ms=300)
    with TestClient(create_app(settings, served_log=served)) as client:
        own = client.get(f"/v1/feeds/users/{user}").json()
        fallback = client.get(f"/v1/feeds/users/{lost}").json()
        comedy = client.get(f"/v1/feeds/users/{user}", params={"category": "comedy"})
        assert client.get("/readyz").status_code == 200
    assert (own["source"], [i["item_id"] for i in own["items"]]) == ("user", ["a2", "a1"])  # a3 was seen
    assert (fallback["source"], fallback["segment"]) == ("segment", seg)
    assert comedy.status_code == 200, comedy.text
    assert [i["item_id"] for i in comedy.json()["items"]] == ["a1"]
