"""A streaming app is healthy only once it has made progress since its process started."""

import time

from feedloop.progress import last_progress_at, write_heartbeat, write_json_atomic
from feedloop.settings import load_settings
from infra import health


class Rpc:
    def __init__(self, state, start):
        self.info = {"statename": state, "start": start}

    def getProcessInfo(self, name):
        return self.info


def check(monkeypatch, state, start):
    import infra.supervision

    monkeypatch.setattr(infra.supervision, "supervisor", lambda settings: Rpc(state, start))
    return health.streaming("stream-events")(load_settings())


def test_running_without_progress_is_not_healthy(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    assert last_progress_at(load_settings(), "stream-events") is None
    assert not check(monkeypatch, "RUNNING", time.time() - 60)


def test_progress_of_an_earlier_process_does_not_count(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    write_json_atomic(tmp_path / "run" / "stream-events.json", {"updated_at": time.time() - 100})
    assert not check(monkeypatch, "RUNNING", time.time() - 10)


def test_a_batch_or_an_idle_poll_since_the_start_is_healthy(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    started = time.time() - 10
    write_heartbeat(load_settings(), "stream-events")  # an idle trigger that reached Kafka
    assert check(monkeypatch, "RUNNING", started)
    assert not check(monkeypatch, "STARTING", started)
    (tmp_path / "run" / "stream-events.heartbeat.json").unlink()
    write_json_atomic(tmp_path / "run" / "stream-events.json", {"updated_at": time.time()})  # a batch
    assert check(monkeypatch, "RUNNING", started)
