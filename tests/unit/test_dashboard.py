"""The dashboard's pure parts: counters to rates, each panel from given readings, the app's routes and login."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dashboard import snapshot
from dashboard.app import create_app
from dashboard.collect import Collector, Reading
from feedloop.progress import write_json_atomic
from feedloop.settings import Settings
from serving.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]


# -- rates ---------------------------------------------------------------------------
def test_a_rate_is_the_growth_over_the_window():
    history = snapshot.CounterHistory()
    for t in range(100, 121):  # 50 events a second for 20 s
        history.add(t, {"valid": 50 * (t - 100)})
    assert history.rates(120.0)["valid"] == pytest.approx(50.0)


def test_a_rate_falls_to_zero_when_nothing_new_comes():
    history = snapshot.CounterHistory()
    history.add(100, {"valid": 0})
    history.add(101, {"valid": 500})
    assert history.rates(101.5)["valid"] > 0
    assert history.rates(200.0) == {"valid": 0.0}


def test_a_restarted_app_never_shows_a_negative_rate():
    history = snapshot.CounterHistory()
    history.add(100, {"valid": 1000})
    history.add(101, {"valid": 2000})
    history.add(102, {"valid": 10})  # the sink restarted: its counters start again from 0
    assert history.rates(102.0) is None  # one reading since the restart: no rate yet
    history.add(103, {"valid": 110})
    assert history.rates(103.0)["valid"] == pytest.approx(100.0)  # 100 events in the 1 s since the restart


def test_a_reading_already_seen_is_not_added_twice():
    history = snapshot.CounterHistory()
    history.add(100, {"valid": 1})
    history.add(100, {"valid": 1})
    assert len(history.samples) == 1


def test_one_reading_gives_no_rate():
    history = snapshot.CounterHistory()
    history.add(100, {"valid": 5})
    assert history.rates(100.0) is None


# -- panels ----------------------------------------------------------------------------
SINK = {"batch_id": 7, "updated_at": 1000.0, "redis_lag_s": 0.8,
        "since_start": {"valid": 300, "rejected": 4, "by_type": {"click": 100, "view": 200}}}


def test_the_events_panel_has_the_rate_by_type_and_the_dlq_rate():
    counters = snapshot.sink_counters(SINK)
    assert counters == {"valid": 300, "rejected": 4, "type:click": 100, "type:view": 200}
    panel = snapshot.events_panel({"valid": 30.0, "rejected": 0.4, "type:click": 10.0, "type:view": 20.0}, SINK, 1002.0)
    assert panel["ok"] and panel["events_per_s"] == 30.0 and panel["dlq_per_s"] == 0.4
    assert panel["by_type_per_s"] == {"click": 10.0, "view": 20.0}
    assert (panel["total_valid"], panel["total_dlq"], panel["last_batch"], panel["last_batch_age_s"]) == (300, 4, 7, 2.0)


def test_every_type_the_sink_has_seen_is_listed_before_there_is_a_rate():
    assert snapshot.events_panel(None, SINK, 1000.0)["by_type_per_s"] == {"click": 0.0, "view": 0.0}


def test_a_sink_without_progress_is_shown_as_down():
    panel = snapshot.events_panel(None, None, 0.0)
    assert not panel["ok"] and "no batch" in panel["error"]


def test_freshness_from_the_sink_and_the_learner():
    learner = {"updated_at": 995.0, "lag_s": 1.5, "seconds": 2.25, "reason": "accepted"}
    panel = snapshot.freshness_panel(SINK, learner, 1000.0)
    assert panel["event_to_redis_s"] == 0.8 and panel["click_to_feed_s"] == 3.75
    assert panel["click_to_feed_age_s"] == 5.0 and panel["learner_reason"] == "accepted"
    assert "click_to_feed_s" not in snapshot.freshness_panel(SINK, None, 1000.0)
    assert not snapshot.freshness_panel(None, None, 1000.0)["ok"]


def test_lag_is_what_the_topic_holds_beyond_the_last_commit():
    assert snapshot.query_lag({0: 100, 1: 50}, {0: 90, 1: 50}) == 10
    assert snapshot.query_lag({0: 100, 1: 50}, {0: 100}) == 50  # a partition never committed: all of it
    assert snapshot.query_lag({0: 100}, None) is None
    panel = snapshot.lag_panel([{"query": "q", "topic": "t", "end": {0: 5}, "committed": {0: 2}, "state": "RUNNING"}])
    assert panel["queries"] == [{"query": "q", "topic": "t", "state": "RUNNING", "lag": 3, "end": 5}]


ALIASES = {"champion": {"version": "3", "online_version": None},
           "online": {"version": "5", "online_version": "3+online.4"},
           "challenger": {"version": "4", "online_version": None}}


def test_ctr_rows_mark_the_champion_online_and_challenger_versions():
    rows = [("3", "F|25-34|comedy", 200, 20), ("3+online.4", "F|25-34|comedy", 100, 15),
            ("3+online.2", "M|18-24|drama", 50, 5), ("4", "F|25-34|comedy", 0, 0), ("2", None, 300, 3)]
    panel = snapshot.ctr_panel(rows, ALIASES, "2026-11-30")
    by_version = {r["model_version"]: r for r in panel["rows"]}
    assert by_version["3"]["alias"] == "champion" and by_version["3"]["ctr"] == 0.1
    assert by_version["3+online.4"]["alias"] == "online" and by_version["3+online.4"]["ctr"] == 0.15
    assert by_version["3+online.2"]["alias"] == "online"  # an earlier online state of the champion
    assert by_version["4"]["alias"] == "challenger" and by_version["4"]["ctr"] is None
    assert by_version["2"]["alias"] == ""
    assert [r["model_version"] for r in panel["rows"]][0] == "2"  # most impressions first


def test_the_champion_history_is_newest_first_with_the_gates_reasons():
    versions = [{"version": "3", "tags": {"ds": "2026-11-29", "ndcg10": "0.412300", "gate": "champion",
                                          "gate_reason": "ndcg10 0.4123 > champion v1 0.4000"}},
                {"version": "4", "tags": {"ds": "2026-11-30", "ndcg10": "0.401000", "gate": "challenger",
                                          "gate_reason": "ndcg10 0.4010 <= champion v3 0.4123"}},
                {"version": "5", "tags": {"online_version": "3+online.4"}},
                {"version": "2", "tags": {"online_version": "1+online.9"}},  # an old online state: left out
                {"version": "1", "tags": {"ds": "2026-11-28", "ndcg10": "0.4", "gate": "champion",
                                          "gate_reason": "no champion yet"}}]
    panel = snapshot.champion_panel(versions, ALIASES)
    assert (panel["champion"], panel["online"], panel["challenger"]) == ("3", "3+online.4", "4")
    assert [v["version"] for v in panel["versions"]] == ["5", "4", "3", "1"]
    three = panel["versions"][2]
    assert three["aliases"] == ["champion"] and three["ndcg10"] == pytest.approx(0.4123)
    assert three["reason"].startswith("ndcg10 0.4123 > champion v1")
    assert snapshot.champion_panel([], {"champion": None, "online": None, "challenger": None})["champion"] is None


def test_feed_sources_are_read_from_the_apis_own_metrics():
    metrics = Metrics()
    for source, n in (("user", 3), ("segment", 2), ("trending", 1)):
        for _ in range(n):
            metrics.observe("/v1/feeds/users/{user_id}", source, 200, 0.002)
    metrics.observe("/v1/feeds/segments/{segment}", "segment", 200, 0.001)
    metrics.observe("/healthz", "none", 200, 0.001)  # not a feed
    counts = snapshot.feed_source_counts(text_string_to_metric_families(metrics.render().decode()))
    assert counts == {"user": 3.0, "segment": 3.0, "trending": 1.0, "popular": 0.0}
    panel = snapshot.sources_panel(counts, {"user": 1.5})
    assert panel["total"] == 7.0
    assert panel["sources"][0]["source"] in ("user", "segment") and panel["sources"][0]["share"] == pytest.approx(3 / 7, abs=1e-3)
    assert next(s for s in panel["sources"] if s["source"] == "user")["per_s"] == 1.5


def test_health_rows_come_from_status_rows():
    rows = [{"service": "redis", "state": "RUNNING", "healthy": True, "address": "127.0.0.1:6379", "log": "x"},
            {"service": "api", "state": "FATAL", "healthy": False, "address": "127.0.0.1:8000", "log": "y"}]
    panel = snapshot.health_panel(rows)
    assert (panel["healthy"], panel["services"]) == (1, 2) and "log" not in panel["rows"][0]
    assert not snapshot.health_panel(None)["ok"]


# -- the collector and the app -------------------------------------------------------------
class IdleCollector(Collector):
    """A collector whose threads never start: the test sets its readings."""

    def start(self) -> None:
        pass


def test_the_events_reader_turns_the_sinks_progress_file_into_a_rate(tmp_path):
    settings = Settings(var_dir=str(tmp_path))
    collector = IdleCollector(settings)
    path = tmp_path / "run" / "stream-events.json"
    now = time.time()
    write_json_atomic(path, {**SINK, "updated_at": now - 2, "since_start": {"valid": 100, "rejected": 0, "by_type": {"view": 100}}})
    assert collector.read_events()["events_per_s"] == 0.0  # one reading: no rate yet
    write_json_atomic(path, {**SINK, "updated_at": now - 1, "since_start": {"valid": 600, "rejected": 5, "by_type": {"view": 600}}})
    panel = collector.read_events()
    assert panel["events_per_s"] > 0 and panel["dlq_per_s"] > 0 and panel["by_type_per_s"]["view"] > 0
    assert collector.series["events"][-1]["events_per_s"] == panel["events_per_s"]


def test_a_panel_not_read_for_long_is_stale_and_a_failed_one_says_why(tmp_path):
    collector = IdleCollector(Settings(var_dir=str(tmp_path)))
    collector.readings["lag"] = Reading({"ok": False, "error": "NoBrokersAvailable"}, time.time(), 0.1)
    collector.readings["health"] = Reading({"ok": True, "rows": []}, time.time() - 60, 0.1)
    panels = collector.snapshot()["panels"]
    assert panels["lag"]["error"] == "NoBrokersAvailable" and not panels["lag"]["stale"]
    assert panels["health"]["stale"] and panels["champion"]["stale"]  # never read: stale too


def _client(tmp_path, password="s3cret-dashboard"):
    from starlette.testclient import TestClient

    settings = Settings(var_dir=str(tmp_path), dashboard={"admin_password": password})
    return TestClient(create_app(settings, IdleCollector(settings)))


def _auth(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_every_route_but_healthz_asks_for_the_login(tmp_path):
    with _client(tmp_path) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/", "/api/snapshot", "/static/dashboard.js"):
            response = client.get(path)
            assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
            assert client.get(path, headers=_auth("admin", "wrong")).status_code == 401
            assert client.get(path, headers=_auth("admin", "s3cret-dashboard")).status_code == 200
        assert client.get("/", headers={"Authorization": "Basic !!!"}).status_code == 401


def test_no_password_set_lets_nobody_in(tmp_path):
    with _client(tmp_path, password="") as client:
        assert client.get("/", headers=_auth("admin", "")).status_code == 401


def test_the_snapshot_has_every_panel_and_the_refresh_interval(tmp_path):
    with _client(tmp_path) as client:
        body = client.get("/api/snapshot", headers=_auth("admin", "s3cret-dashboard")).json()
    assert set(body["panels"]) == {"events", "freshness", "lag", "sources", "health", "champion", "ctr"}
    assert body["refresh_s"] == 2.0 and set(body["series"]) == {"events", "sources"}
    assert all(not p["ok"] for p in body["panels"].values())  # nothing read: each panel says so
    json.dumps(body)


def test_the_page_has_an_element_for_every_figure_the_script_fills():
    page = (REPO / "dashboard" / "static" / "index.html").read_text()
    script = (REPO / "dashboard" / "static" / "dashboard.js").read_text()
    import re

    for element in set(re.findall(r'\$\("([a-z0-9-]+)"\)', script)):
        assert f'id="{element}"' in page, element
    for name in ("events", "freshness", "lag", "champion", "ctr", "sources", "health"):
        assert f'id="panel-{name}"' in page and f'panel(snap, "{name}")' in script


def _loaded_after(imports: str) -> list[str]:
    code = f"import sys, {imports}; print(sorted(m for m in ('tensorflow', 'pyspark', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_the_dashboard_needs_neither_tensorflow_nor_spark():
    assert _loaded_after("dashboard.app, dashboard.collect") == []
    # what its readers import when they run: MLflow's client imports pyspark's Python package on its own
    # (no JVM starts); TensorFlow stays out
    assert "tensorflow" not in _loaded_after("dashboard.app, models.train, models.online_service, infra.stack, mlflow")
