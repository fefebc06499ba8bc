"""Spark standalone on the cluster profile: a DAG step's executors spread over both workers, and
killing one worker (kill -9, with its executor) while the step runs costs a rerun of its tasks on
the other worker, not the step: it completes and writes the same partition as an undisturbed run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest

from infra.spark_cluster import alive_worker_ports, master_state, worker_registered, worker_ui_port
from infra.supervision import supervisor
from sources import simulator
from spark.partitions import partition_rows, wait_for_rows
from tests.cluster.conftest import hive_query

DS = "2026-07-19"  # a day of this module's own: no other test writes it
EVENTS = 5000
TABLES = ("user_features", "item_features")
# the features step's driver UI (its REST API tells which executor runs tasks), clear of the stack's own Spark UIs
UI_PORT_OFFSET = 40


@pytest.fixture(scope="module")
def day_loaded(settings):
    """One simulated day of events, landed in Hive by the supervised streaming sink (as test_skeleton's)."""
    before = partition_rows(settings, "events", DS)
    simulator.main(argparse.Namespace(users=300, items=400, events=EVENTS, rate=0, duration=0, seed=19, ds=DS,
                                      no_catalogue=False))
    return wait_for_rows(settings, DS, before + EVENTS, timeout_s=300, poll_s=1)


def start_features(settings, event_log: Path) -> subprocess.Popen:
    """`feedloop features --ds DS` (the DAG's step, same job), logging its Spark events to ``event_log``
    and its output to ``event_log``/../features.out."""
    event_log.mkdir(parents=True, exist_ok=True)
    conf = {"spark.eventLog.enabled": "true", "spark.eventLog.dir": event_log.as_uri(),
            "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false"}  # one JSON-lines file
    env = {**os.environ, "FEEDLOOP_SPARK__UI_PORT": str(settings.spark.ui_port + UI_PORT_OFFSET),
           "FEEDLOOP_SPARK__EXTRA_CONF": json.dumps(conf)}
    with open(event_log.parent / "features.out", "w") as out:  # a file, not a pipe nobody reads while it runs
        return subprocess.Popen([sys.executable, "-m", "feedloop.cli", "features", "--ds", DS], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def output(event_log: Path) -> str:
    return (event_log.parent / "features.out").read_text(errors="replace")[-3000:]


def finish(proc: subprocess.Popen, event_log: Path, timeout_s: float = 240) -> None:
    assert proc.wait(timeout=timeout_s) == 0, output(event_log)


def spark_events(event_log: Path) -> list[dict]:
    (log,) = [p for p in event_log.iterdir() if not p.name.endswith(".inprogress")]
    return [json.loads(line) for line in log.read_text().splitlines()]


def executor_workers(events: list[dict]) -> dict[str, int]:
    """Executor id -> web UI port of the worker that ran it (its log URLs point at that worker)."""
    return {e["Executor ID"]: urlparse(e["Executor Info"]["Log Urls"]["stdout"]).port
            for e in events if e["Event"] == "SparkListenerExecutorAdded"}


def task_ends(events: list[dict]) -> list[dict]:
    # the partition, not the task's index: a resubmitted stage runs only its missing partitions
    return [{"stage": e["Stage ID"], "partition": e["Task Info"].get("Partition ID", e["Task Info"]["Index"]),
             "executor": e["Task Info"]["Executor ID"],
             "failed": e["Task Info"]["Failed"], "reason": e["Task End Reason"]["Reason"]}
            for e in events if e["Event"] == "SparkListenerTaskEnd"]


def partition(settings, table: str) -> list[tuple]:
    """The day's rows, doubles to 9 places: summing partial aggregates in another order moves the last bits."""
    rows = hive_query(settings, f"SELECT * FROM {table} WHERE dt = '{DS}'")
    return sorted((tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in rows), key=repr)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.load(resp)


def busy_executor(settings, proc: subprocess.Popen, event_log: Path, timeout_s: float = 180) -> tuple[str, str, int]:
    """(app id, executor id, worker UI port) of an executor running a task, once executors run on both workers."""
    ui = f"http://{settings.bind_host}:{settings.spark.ui_port + UI_PORT_OFFSET}/api/v1/applications"
    workers = {worker_ui_port(settings, n) for n in (1, 2)}
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, "the features step ended before an executor ran a task:\n" + output(event_log)
        try:
            (app,) = get_json(ui)
            assert app["name"] == "feedloop-features", app
            executors = [e for e in get_json(f"{ui}/{app['id']}/executors") if e["id"] != "driver" and e["isActive"]]
        except (OSError, ValueError):
            time.sleep(0.2)  # the driver's UI is not up yet
            continue
        ports = {e["id"]: urlparse(e["executorLogs"]["stdout"]).port for e in executors}
        busy = [e["id"] for e in executors if e["activeTasks"] > 0]
        if set(ports.values()) == workers and busy:
            return app["id"], busy[0], ports[busy[0]]
        time.sleep(0.05)
    raise AssertionError(f"no executor of the features step ran a task on both workers within {timeout_s}s")


def kill_worker_and_executor(settings, n: int, app_id: str, executor_id: str) -> None:
    worker = psutil.Process(supervisor(settings).getProcessInfo(f"spark-worker-{n}")["pid"])
    (executor,) = [p for p in worker.children(recursive=True)
                   if app_id in p.cmdline() and f"--executor-id {executor_id} " in " ".join(p.cmdline()) + " "]
    os.kill(executor.pid, signal.SIGKILL)
    os.kill(worker.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def undisturbed(settings, day_loaded, tmp_path_factory):
    """Rows and Spark events of the features step run on the cluster with nothing killed."""
    event_log = tmp_path_factory.mktemp("undisturbed") / "events"
    started = time.time()
    finish(start_features(settings, event_log), event_log)
    print(f"\n[spark] features on the cluster, undisturbed: {time.time() - started:.0f}s", file=sys.stderr)
    return {table: partition(settings, table) for table in TABLES}, spark_events(event_log)


def test_the_master_lists_both_workers_and_a_steps_executors_run_on_both(settings, undisturbed):
    rows, events = undisturbed
    ports = {worker_ui_port(settings, n) for n in (1, 2)}
    assert ports <= alive_worker_ports(master_state(settings))
    assert set(executor_workers(events).values()) == ports
    assert all(rows[table] for table in TABLES)


def test_killing_a_worker_mid_step_reruns_its_tasks_on_the_other_and_writes_the_same_partition(
        settings, undisturbed, tmp_path):
    expected, _ = undisturbed
    event_log = tmp_path / "events"
    proc = start_features(settings, event_log)
    try:
        app_id, victim, port = busy_executor(settings, proc, event_log)
        n = port - settings.spark.worker_ui_port + 1
        kill_worker_and_executor(settings, n, app_id, victim)
        finish(proc, event_log)
    finally:
        proc.kill()
    events = spark_events(event_log)
    workers = executor_workers(events)
    ends = task_ends(events)
    lost = {(t["stage"], t["partition"]) for t in ends if t["executor"] == victim and t["failed"]}
    assert lost, f"no task of executor {victim} failed: the kill hit no running task ({ends})"
    rerun = {(t["stage"], t["partition"]) for t in ends
             if not t["failed"] and t["executor"] != victim and workers[t["executor"]] != port}
    assert lost <= rerun, f"tasks lost with executor {victim} and not rerun on the other worker: {lost - rerun}"
    for table in TABLES:
        assert partition(settings, table) == expected[table], table
    # the supervisor restarts the worker; the stack is whole again for the next test
    deadline = time.time() + 180
    while not worker_registered(n)(settings):
        assert time.time() < deadline, f"spark-worker-{n} did not rejoin the master within 180s"
        time.sleep(1)
