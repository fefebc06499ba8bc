"""/metrics through prometheus_client: summed over worker processes, same names and labels, a fresh directory per start.

The multiprocess test runs three separate interpreters (two "workers" and one that serves
``/metrics``) with ``PROMETHEUS_MULTIPROC_DIR`` pointing at a temporary directory, as
``feedloop serve`` runs its uvicorn workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
from prometheus_client.parser import text_string_to_metric_families

from feedloop.settings import REPO_ROOT, Settings
from serving import metrics as metrics_module
from serving.app import create_app
from serving.metrics import MULTIPROC_ENV, Metrics, multiproc_dir, prepare_multiproc_dir, use_multiproc_dir
from serving.served_log import ServedLog
from serving.store import _USER_VIEW

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

CLOSED = "127.0.0.1:1"
FEED = "/v1/feeds/users/{user_id}"

# One "worker": n requests through the Metrics API, n events, n served records of which
# one is queued (queue of 1), n - 1 dropped as queue_full, and the queued one dropped at close.
WORKER = textwrap.dedent("""
    import os, sys
    from serving.metrics import EVENTS, Metrics
    from serving.served_log import ServedLog
    n = int(sys.argv[1])
    m = Metrics()
    assert m.multiprocess, "PROMETHEUS_MULTIPROC_DIR not seen"
    log = ServedLog("127.0.0.1:1", "served", queue_max_messages=1)
    log.count_to(m)
    for i in range(n):
        m.observe("/v1/feeds/users/{user_id}", "user", 200, 0.003)
        log.log({"i": i}, "u1")
    m.inc(*EVENTS, n, outcome="accepted")
    log.close(timeout_s=0)
    print(os.getpid())
""")

# The scrape: a third process's app answers /metrics.
SCRAPE = textwrap.dedent("""
    import warnings
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
    from feedloop.settings import Settings
    from serving.app import create_app
    settings = Settings(redis={"port": 1}, kafka={"bootstrap": "127.0.0.1:1"})
    with TestClient(create_app(settings)) as client:
        response = client.get("/metrics")
    print(response.headers["content-type"])
    print(response.text, end="")
""")


def _env(directory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDLOOP_") and k != MULTIPROC_ENV}
    env.update({MULTIPROC_ENV: str(directory), "PYTHONPATH": str(REPO_ROOT), "FEEDLOOP_CONFIG": str(directory / "none.yaml")})
    return env


def samples(text: str) -> dict[tuple, float]:
    """``{(sample name, sorted label pairs): value}`` of a text-format page."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_two_worker_processes_are_summed_at_metrics(tmp_path):
    directory = prepare_multiproc_dir(tmp_path / "prom")
    env = _env(directory)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(n)], env=env, cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (3, 5)]
    pids = set()
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        pids.add(int(out.split()[-1]))
    assert len(pids) == 2
    assert {p.name for p in directory.iterdir()} >= {f"counter_{pid}.db" for pid in pids}

    scrape = subprocess.run([sys.executable, "-c", SCRAPE], env=env, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert scrape.returncode == 0, scrape.stderr
    content_type, _, text = scrape.stdout.partition("\n")
    assert content_type.startswith("text/plain; version=")
    got = samples(text)
    latency = (("endpoint", FEED), ("source", "user"))
    assert got[("feedloop_api_requests_total", (("endpoint", FEED), ("status", "200")))] == 8
    assert got[("feedloop_api_request_duration_seconds_count", latency)] == 8
    assert got[("feedloop_api_request_duration_seconds_bucket", (latency[0], ("le", "0.0025"), latency[1]))] == 0
    assert got[("feedloop_api_request_duration_seconds_bucket", (latency[0], ("le", "0.005"), latency[1]))] == 8
    assert got[("feedloop_api_request_duration_seconds_sum", latency)] == pytest.approx(8 * 0.003)
    assert got[("feedloop_api_events_total", (("outcome", "accepted"),))] == 8
    assert got[("feedloop_api_served_queued_total", ())] == 2
    assert got[("feedloop_api_served_dropped_total", (("reason", "queue_full"),))] == 2 + 4
    assert got[("feedloop_api_served_dropped_total", (("reason", "shutdown"),))] == 2


class CannedRedis:
    """No user feed, no segment feed, a trending ranking: every user feed is a fallback."""

    async def evalsha(self, script, keys, args=()):
        assert script is _USER_VIEW
        return [None, "", False]

    async def pipeline(self, commands):
        return [2 if c[0] == "ZCARD" else ["i1", "3", "i2", "2"] for c in commands]

    async def execute(self, *command):
        return [None] * (len(command) - 1) if command[0] == "MGET" else None

    async def close(self):
        pass


def test_metrics_names_and_labels_the_docs_and_tests_use():
    settings = Settings(api={"api_key": "k"}, redis={"port": 1, "socket_timeout_s": 0.2},
                        kafka={"bootstrap": CLOSED, "request_timeout_ms": 300})
    served = ServedLog(CLOSED, settings.kafka.served_topic, queue_max_messages=1, message_timeout_ms=300)
    app = create_app(settings, served_log=served, redis_client=CannedRedis())
    with TestClient(app) as client:
        assert client.get("/v1/feeds/users/u1?limit=0").status_code == 422
        assert client.get("/v1/feeds/users/u1").json()["source"] == "trending"
        assert client.get("/v1/feeds/users/u2").status_code == 200  # the queue of one is full
        client.post("/v1/events", json=[{"event_type": "nope"}], headers={"X-API-Key": "k"})
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert "# TYPE feedloop_api_request_duration_seconds histogram" in text
    assert 'feedloop_api_requests_total{endpoint="/v1/feeds/users/{user_id}",status="422"} 1.0' in text
    assert 'feedloop_api_requests_total{endpoint="/v1/feeds/users/{user_id}",status="200"} 2.0' in text
    assert 'le="+Inf"' in text
    got = samples(text)
    bucket = {labels for name, labels in got if name == "feedloop_api_request_duration_seconds_bucket"}
    assert (("endpoint", FEED), ("le", "0.001"), ("source", "trending")) in bucket
    assert {dict(labels)["le"] for labels in bucket} == {*(repr(b) for b in metrics_module.LATENCY_BUCKETS), "+Inf"}
    assert got[("feedloop_api_feed_fallbacks_total", (("source", "trending"),))] == 2
    assert got[("feedloop_api_served_queued_total", ())] == 1
    assert got[("feedloop_api_served_dropped_total", (("reason", "queue_full"),))] == 1
    assert ("feedloop_api_served_delivered_total", ()) in got
    assert got[("feedloop_api_events_total", (("outcome", "rejected"),))] == 1


def test_redis_errors_are_counted_by_kind():
    settings = Settings(redis={"port": 1, "socket_timeout_s": 0.2}, kafka={"bootstrap": CLOSED})
    with TestClient(create_app(settings)) as client:
        client.get("/readyz")
        text = client.get("/metrics").text
    assert any(name == "feedloop_api_redis_errors_total" and dict(labels).get("kind")
               for name, labels in samples(text)), text


def test_a_counter_keeps_its_label_names():
    m = Metrics()
    m.inc("feedloop_api_test_total", "test", source="user")
    with pytest.raises(ValueError):
        m.inc("feedloop_api_test_total", "test", kind="x")


def test_the_entry_point_empties_a_stale_directory(tmp_path):
    stale = tmp_path / "prom"
    (stale / "old").mkdir(parents=True)
    (stale / "counter_99999.db").write_bytes(b"stale")
    assert prepare_multiproc_dir(stale) == stale
    assert stale.is_dir() and not any(stale.iterdir())
    fresh = prepare_multiproc_dir(tmp_path / "new" / "9000")
    assert fresh.is_dir() and not any(fresh.iterdir())


def test_main_prepares_the_directory_before_uvicorn_starts(tmp_path, monkeypatch):
    import uvicorn

    from serving import app as app_module

    settings = Settings(var_dir=str(tmp_path), api={"port": 18765, "workers": 2})
    directory = multiproc_dir(settings)
    assert directory == tmp_path / "prometheus" / "18765"
    directory.mkdir(parents=True)
    (directory / "histogram_4242.db").write_bytes(b"stale")
    seen = {}

    def fake_run(*args, **kwargs):
        seen["env"] = os.environ.get(MULTIPROC_ENV)
        seen["files"] = sorted(p.name for p in directory.iterdir())
        seen["workers"] = kwargs["workers"]

    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(app_module, "get_settings", lambda: settings)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    try:
        assert app_module.main([]) == 0
        assert seen == {"env": str(directory), "files": [], "workers": 2}
        # with one worker uvicorn builds the app in this very process, where prometheus_client
        # was imported before the variable was set: the app's metrics must still go to the files
        m = Metrics()
        assert m.multiprocess
        m.observe(FEED, "user", 200, 0.002)
        assert any(p.name.startswith("histogram_") for p in directory.iterdir())
        assert samples(m.render().decode())[("feedloop_api_requests_total", (("endpoint", FEED), ("status", "200")))] == 1
    finally:
        monkeypatch.delenv(MULTIPROC_ENV, raising=False)
        assert not Metrics().multiprocess  # back to in-process values for the other tests
