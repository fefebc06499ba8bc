"""The feed API under failure, over real HTTP (uvicorn in a thread) and real Redis: no mocks.

* Redis stopped, then hung, during load: fast 503s (each answer well under a second),
  no hangs, and the API recovers by itself when Redis is back. These run against a
  private redis-server started here, so the session stack's Redis is not disturbed.
* A reader hammering a segment feed while it is republished again and again never
  sees an empty feed or one mixing two publications (the session stack's Redis).
* Kafka unreachable: feeds are still served at full speed; served-feed records are
  dropped at the bounded buffer and counted in /metrics.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
import uvicorn

from bench.private import PrivateRedis, free_port
from feature_store import online
from serving.app import create_app
from serving.served_log import ServedLog

pytestmark = pytest.mark.integration

MAX_ANSWER_S = 1.0
LOAD_THREADS = 6


@contextmanager
def serving(app) -> Iterator[str]:
    """``app`` on a real uvicorn server in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _seed(client: redis.Redis, users: list[str]) -> None:
    feeds = {("user", u): online.Feed(items=[f"{u}-i{n}" for n in range(10)], model_version="v1") for u in users}
    online.publish_feeds(client, feeds, ttl_s=300)


class Load:
    """Threads asking for user feeds in a loop, recording (start, seconds, status, error)."""

    def __init__(self, base: str, users: list[str]) -> None:
        self.base, self.users = base, users
        self.records: list[tuple[float, float, int, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(LOAD_THREADS)]

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            i = n
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.get(f"/v1/feeds/users/{self.users[i % len(self.users)]}")
                    status, error = response.status_code, response.json().get("error", "")
                except httpx.HTTPError as exc:  # a hang or a dropped connection: the test fails on it
                    status, error = 0, repr(exc)
                with self._lock:
                    self.records.append((started, time.monotonic() - started, status, error))
                i += LOAD_THREADS

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def between(self, start: float, end: float) -> list[tuple[float, float, int, str]]:
        with self._lock:
            return [r for r in self.records if start <= r[0] and r[0] + r[1] <= end]

    def wait_for(self, status: int, after: float, timeout_s: float) -> float:
        """When the first request started after ``after`` answered ``status``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                hits = [r[0] for r in self.records if r[0] >= after and r[2] == status]
            if hits:
                return min(hits)
            time.sleep(0.05)
        raise AssertionError(f"no {status} within {timeout_s}s")


def _app_on(settings, port: int):
    """The API with the session's settings, but Redis on ``port`` (no password)."""
    return create_app(settings.model_copy(update={"redis": settings.redis.model_copy(update={"port": port,
                                                                                          "password": ""})}))


def _assert_bounded(load: Load) -> None:
    statuses = {r[2] for r in load.records}
    odd = [r for r in load.records if r[2] not in (200, 503)]
    assert statuses <= {200, 503}, f"unexpected answers: {sorted(statuses)}: {odd[:3]}"
    slowest = max(r[1] for r in load.records)
    assert slowest < MAX_ANSWER_S, f"slowest answer took {slowest:.2f}s"


def test_redis_stopped_during_load_gives_fast_503s_then_recovers(settings, private_redis):
    users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    _seed(redis.Redis(port=private_redis.port, decode_responses=True), users)
    with serving(_app_on(settings, private_redis.port)) as base, Load(base, users) as load:
        load.wait_for(200, 0, 10)
        time.sleep(0.5)
        stopped = time.monotonic()
        private_redis.stop()
        time.sleep(1.5)
        down = load.between(stopped + 0.1, time.monotonic())
        assert len(down) > 10
        assert {(status, error) for _, _, status, error in down} == {(503, "redis unavailable")}

        back = time.monotonic()
        _seed(private_redis.start(), users)  # no persistence: publish again
        recovered = load.wait_for(200, back, 5)
        time.sleep(0.5)
    assert recovered - back < 2
    assert {r[2] for r in load.between(recovered + 0.1, time.monotonic())} == {200}
    _assert_bounded(load)


def test_hung_redis_times_out_into_503s_then_recovers(settings, private_redis):
    users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    _seed(redis.Redis(port=private_redis.port, decode_responses=True), users)
    with serving(_app_on(settings, private_redis.port)) as base, Load(base, users) as load:
        load.wait_for(200, 0, 10)
        paused = time.monotonic()
        private_redis.pause()  # accepts connections, answers nothing
        try:
            load.wait_for(503, paused, 5)
            time.sleep(1.5)
        finally:
            private_redis.resume()
        resumed = time.monotonic()
        recovered = load.wait_for(200, resumed, 5)
        time.sleep(0.5)
        with httpx.Client(base_url=base) as client:
            assert client.get("/readyz").status_code == 200
    assert {r[2] for r in load.between(paused + 0.6, resumed)} == {503}
    assert recovered - resumed < 2
    _assert_bounded(load)


def test_reader_never_sees_a_mixed_or_empty_feed_during_publications(settings, redis_client):
    segment = f"R|{uuid.uuid4().hex[:8]}|x"
    base_pub = int(time.time() * 1000)

    def publish(version: int) -> None:
        feed = online.Feed(items=[f"p{version}-i{n}" for n in range(30)], model_version=f"v{version}",
                           scores=[1 - n / 30 for n in range(30)])
        online.publish_feeds(redis_client, {("seg", segment): feed}, ttl_s=300, publication=str(base_pub + version))

    publish(0)
    seen_versions: set[int] = set()
    problems: list[str] = []
    stop = threading.Event()

    def read() -> None:
        with httpx.Client(base_url=base, timeout=5) as client:
            while not stop.is_set():
                body = client.get(f"/v1/feeds/segments/{segment}", params={"limit": 30}).json()
                items = [row["item_id"] for row in body.get("items", [])]
                version = int(body["model_version"][1:]) if body.get("model_version") else -1
                if len(items) != 30:
                    problems.append(f"{len(items)} items: {body}")
                elif {item.split("-")[0] for item in items} != {f"p{version}"}:
                    problems.append(f"mixed feed for v{version}: {items}")
                elif body["publication"] != str(base_pub + version):
                    problems.append(f"publication {body['publication']} with model v{version}")
                seen_versions.add(version)

    try:
        with serving(create_app(settings)) as base:
            readers = [threading.Thread(target=read, daemon=True) for _ in range(3)]
            for t in readers:
                t.start()
            for version in range(1, 41):
                publish(version)
                time.sleep(0.05)
            stop.set()
            for t in readers:
                t.join(timeout=10)
    finally:
        keys = redis_client.keys(online.feed_key("seg", segment) + "*")
        if keys:
            redis_client.delete(*keys)
    assert not problems, problems[:3]
    assert len(seen_versions) > 5, f"the readers saw only {sorted(seen_versions)}"


def test_kafka_down_drops_served_records_without_slowing_feeds(settings, private_redis):
    users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    _seed(redis.Redis(port=private_redis.port, decode_responses=True), users)
    port = private_redis.port
    log = ServedLog(f"127.0.0.1:{free_port()}", settings.kafka.served_topic, queue_max_messages=5)
    app = create_app(settings.model_copy(update={"redis": settings.redis.model_copy(update={"port": port,
                                                                                         "password": ""})}),
                     served_log=log)
    with serving(app) as base, httpx.Client(base_url=base, timeout=5) as client:
        slowest = 0.0
        for n in range(40):
            started = time.monotonic()
            response = client.get(f"/v1/feeds/users/{users[n % len(users)]}")
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 200 and response.json()["source"] == "user"
        metrics = client.get("/metrics").text
    assert slowest < 0.5
    assert log.queued + log.dropped["queue_full"] == 40  # the 5 queued are dropped at shutdown
    assert log.dropped["queue_full"] >= 30
    assert 'feedloop_api_served_dropped_total{reason="queue_full"}' in metrics


AOF_KEYS = 1_000_000  # 100-byte values: a ~130 MB AOF that takes seconds to load here


def _loading(client: redis.Redis) -> bool:
    """Whether Redis is still loading its data (INFO answers while it loads; PING does not)."""
    return client.info("persistence")["loading"] == 1


def test_redis_loading_its_aof_gives_fast_503s_and_opens_the_breaker(settings, tmp_path):
    server = PrivateRedis(tmp_path, appendonly=True)
    client = server.start()
    users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    try:
        _seed(client, users)
        client.execute_command("DEBUG", "POPULATE", AOF_KEYS, "bulk", 100)  # not logged: rewrite the AOF
        client.bgrewriteaof()
        deadline = time.monotonic() + 120
        while (info := client.info("persistence"))["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]:
            assert time.monotonic() < deadline, "the AOF rewrite did not finish"
            time.sleep(0.1)
        with serving(_app_on(settings, server.port)) as base, Load(base, users) as load:
            load.wait_for(200, 0, 10)
            server.stop()  # SIGTERM: the AOF is flushed, and loaded again at the next start
            restarted = time.monotonic()
            watcher = server.start(wait=False)
            while True:  # until it accepts connections and says it is loading
                assert time.monotonic() - restarted < 10, "redis-server did not start loading"
                try:
                    asked = time.monotonic()
                    if _loading(watcher):
                        still_loading = asked
                        break
                except redis.ConnectionError:
                    time.sleep(0.02)
            load.wait_for(503, restarted, 10)
            while True:
                asked = time.monotonic()
                if not _loading(watcher):
                    break
                still_loading = asked  # a request answered before this was answered while loading
                assert asked - restarted < 120, "redis-server did not finish loading"
                time.sleep(0.05)
            loaded = time.monotonic()
            recovered = load.wait_for(200, loaded, 5)
            time.sleep(0.5)
            with httpx.Client(base_url=base) as http:
                metrics = http.get("/metrics").text
        during = load.between(restarted + 0.2, still_loading)
    finally:
        server.stop()
    assert still_loading - restarted > 1, f"loading took {loaded - restarted:.2f}s: the AOF is too small to test"
    assert len(during) > 10
    assert {(status, error) for _, _, status, error in during} == {(503, "redis unavailable")}
    # LOADING reached the app as a connection-class error, and the breaker answered the calls after it
    assert 'kind="BusyLoadingError"' in metrics and 'kind="RedisUnavailable"' in metrics, metrics
    assert recovered - loaded < 2
    assert {r[2] for r in load.between(recovered + 0.1, time.monotonic())} == {200}
    _assert_bounded(load)
