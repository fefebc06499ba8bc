"""A small client for the Airflow 3 REST API: trigger a DAG run for a day and follow it.

``feedloop run-dag [dag_id] --ds YYYY-MM-DD`` waits until the DAG is parsed,
(re)runs it for that logical date, switches it on, and prints task progress
until the run succeeds, fails or times out.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from feedloop.eta import Steps
from feedloop.settings import Settings, get_settings
from infra.airflow_env import airflow_log_dir, api_url

CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 5.0
QUEUED_HINT_S = 30.0
HEARTBEAT_S = 60.0  # a progress line at least this often, so a long task shows its ETA moving
DAG_PARSE_TIMEOUT_S = 180.0
FINISHED = {"success", "failed"}
TASK_DONE = {"success", "skipped", "upstream_failed", "removed"}
TASK_FAILED = {"failed", "upstream_failed"}


class AirflowApiError(RuntimeError):
    """The api-server is unreachable or answered with an error; the message says which URL."""


class AirflowClient:
    """Authenticated calls to one Airflow api-server (JWT from /auth/token).

    Hand-written over httpx rather than the official ``apache-airflow-client`` (3.3.2, which
    resolves against our lock), for two reasons found when tried (2026-11-30): the generated
    client does not cover the JWT token endpoint (its ``LoginApi.login`` is the browser's
    redirect), so the login stays ours either way; and importing it loads its 183 generated
    model modules: ``python -X importtime -c "import airflow_client.client"`` took 28-40 s
    against 4-7 s for httpx on the same machine in the same minute (load average ~22; three
    runs each), a cost every ``feedloop run-dag`` and ``backfill`` would pay for the ten
    endpoints below.
    """

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._username = username
        self._password = password
        self._token: str | None = None
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AirflowClient:
        return cls(api_url(settings), settings.airflow.admin_user, settings.airflow.admin_password)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise AirflowApiError(
                f"Airflow API server not reachable at {self.base_url} ({type(exc).__name__}: {exc}); "
                "is it running? (`feedloop status`)"
            ) from None

    def _login(self) -> str:
        response = self._send("POST", "/auth/token", json={"username": self._username, "password": self._password})
        if response.status_code in (400, 401, 403):
            raise AirflowApiError(
                f"Airflow at {self.base_url} refused user {self._username!r}: check airflow.admin_password "
                "(FEEDLOOP_AIRFLOW__ADMIN_PASSWORD or var/secrets/airflow__admin_password)"
            )
        _raise_for_status(response)
        return response.json()["access_token"]

    def request(self, method: str, path: str, *, ok_404: bool = False, **kwargs: Any) -> dict[str, Any] | None:
        """Call /api/v2<path>; return the JSON body, or None for a 404 when ok_404."""
        for attempt in range(2):
            if self._token is None:
                self._token = self._login()
            response = self._send(
                method, f"/api/v2{path}", headers={"Authorization": f"Bearer {self._token}"}, **kwargs
            )
            if response.status_code == 401 and attempt == 0:
                self._token = None  # expired: log in again once
                continue
            if response.status_code == 404 and ok_404:
                return None
            _raise_for_status(response)
            return response.json() if response.content else {}
        raise AssertionError("unreachable")

    # -- DAGs and runs -------------------------------------------------
    def get_dag(self, dag_id: str) -> dict[str, Any] | None:
        return self.request("GET", f"/dags/{dag_id}", ok_404=True)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def import_errors(self) -> list[dict[str, Any]]:
        return self.request("GET", "/importErrors", params={"limit": 100})["import_errors"]

    def runs_for_date(self, dag_id: str, logical_date: datetime) -> list[dict[str, Any]]:
        stamp = logical_date.isoformat()
        body = self.request(
            "GET", f"/dags/{dag_id}/dagRuns",
            params={"logical_date_gte": stamp, "logical_date_lte": stamp, "limit": 10},
        )
        return body["dag_runs"]

    def latest_run(self, dag_id: str) -> dict[str, Any] | None:
        body = self.request("GET", f"/dags/{dag_id}/dagRuns", ok_404=True,
                            params={"order_by": "-run_after", "limit": 1})
        runs = body["dag_runs"] if body else []
        return runs[0] if runs else None

    def trigger(self, dag_id: str, ds: date) -> dict[str, Any]:
        start = _midnight(ds)
        now = datetime.now(timezone.utc)
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json={
            "dag_run_id": f"manual__{ds.isoformat()}__{now.strftime('%Y%m%dT%H%M%S')}",
            "logical_date": start.isoformat(),
            # The same one-day interval a scheduled run for ds has, and a run_after
            # that sorts it before today's scheduled run when both are queued.
            "data_interval_start": start.isoformat(),
            "data_interval_end": (start + timedelta(days=1)).isoformat(),
            "run_after": start.isoformat(),
            "note": "triggered by feedloop run-dag",
        })

    def clear_run(self, dag_id: str, run_id: str) -> None:
        self.request("POST", f"/dags/{dag_id}/dagRuns/{run_id}/clear", json={"dry_run": False})

    def delete_run(self, dag_id: str, run_id: str) -> None:
        self.request("DELETE", f"/dags/{dag_id}/dagRuns/{run_id}")

    def last_success_seconds(self, dag_id: str) -> float | None:
        """Wall seconds of dag_id's latest successful run (None: none yet, or no dates on it)."""
        body = self.request("GET", f"/dags/{dag_id}/dagRuns", ok_404=True,
                            params={"state": "success", "order_by": "-end_date", "limit": 1})
        runs = body["dag_runs"] if body else []
        return run_seconds(runs[0]) if runs else None

    def get_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        body = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return body["task_instances"]


def _raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    detail = response.text.strip().replace("\n", " ")[:400]
    raise AirflowApiError(f"{response.request.method} {response.request.url} -> HTTP {response.status_code}: {detail}")


def _midnight(ds: date) -> datetime:
    return datetime(ds.year, ds.month, ds.day, tzinfo=timezone.utc)


def task_log_path(settings: Settings, ti: dict[str, Any]) -> Path:
    """Where Airflow's default log_filename_template puts a task instance's log."""
    run_dir = airflow_log_dir(settings) / f"dag_id={ti['dag_id']}" / f"run_id={ti['dag_run_id']}"
    path = run_dir / f"task_id={ti['task_id']}"
    if ti.get("map_index", -1) >= 0:
        path = path / f"map_index={ti['map_index']}"
    return path / f"attempt={max(ti.get('try_number') or 1, 1)}.log"


def wait_for_dag(client: AirflowClient, dag_id: str, timeout: float = DAG_PARSE_TIMEOUT_S) -> dict[str, Any]:
    """Return the DAG once the dag-processor has parsed it; raise with import errors on timeout."""
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        dag = client.get_dag(dag_id)
        if dag is not None:
            return dag
        if time.monotonic() > deadline:
            errors = client.import_errors()
            listing = "".join(f"\n  {e['filename']}: {e['stack_trace'].strip().splitlines()[-1]}" for e in errors)
            raise AirflowApiError(
                f"DAG {dag_id!r} not known to Airflow at {client.base_url} after {timeout:.0f} s"
                + (f"; import errors:{listing}" if errors else "; no import errors: is the dag-processor running?")
            )
        if not announced:
            print(f"waiting for the dag-processor to parse {dag_id} ...", flush=True)
            announced = True
        time.sleep(POLL_INTERVAL_S)


def start_run(client: AirflowClient, dag_id: str, ds: date) -> str:
    """Run dag_id for ds: follow an active run for that date, re-run a finished one, else trigger."""
    existing = client.runs_for_date(dag_id, _midnight(ds))
    if existing:
        run = existing[0]
        if run["state"] in FINISHED and not client.task_instances(dag_id, run["dag_run_id"]):
            # a run created without tasks (e.g. before a start_date change) cannot be cleared into one
            print(f"{dag_id} has an empty {run['state']} run for {ds} ({run['dag_run_id']}); replacing it", flush=True)
            client.delete_run(dag_id, run["dag_run_id"])
        elif run["state"] in FINISHED:
            print(f"{dag_id} already ran for {ds} ({run['dag_run_id']}: {run['state']}); clearing it to run again",
                  flush=True)
            client.clear_run(dag_id, run["dag_run_id"])
            return run["dag_run_id"]
        else:
            print(f"{dag_id} already has a {run['state']} run for {ds}: following {run['dag_run_id']}", flush=True)
            return run["dag_run_id"]
    run = client.trigger(dag_id, ds)
    print(f"triggered {dag_id} for {ds}: run {run['dag_run_id']}", flush=True)
    return run["dag_run_id"]


def run_seconds(run: dict[str, Any]) -> float | None:
    """A finished run's wall time from its start_date and end_date (ISO stamps), or None."""
    if not run.get("start_date") or not run.get("end_date"):
        return None
    return (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])).total_seconds()


def eta_note(last_s: float | None, elapsed: float) -> str:
    """The ETA part of a progress line: what is left of the last successful run's time, when there was one.

    Only an estimate: a run that searches (weekly, docs/model.md) or reads a bigger day takes longer."""
    if last_s is None:
        return ""
    left = last_s - elapsed
    if left >= 0:
        return f" (ETA {left:.0f}s: the last successful run took {last_s:.0f}s)"
    return f" (past the last successful run's {last_s:.0f}s by {-left:.0f}s)"


def _progress(tis: list[dict[str, Any]]) -> str:
    by_state: dict[str, list[str]] = {}
    for ti in sorted(tis, key=lambda t: t.get("start_date") or "~"):
        by_state.setdefault(ti["state"] or "none", []).append(ti["task_id"])
    done = sum(len(ids) for state, ids in by_state.items() if state in TASK_DONE)
    parts = [f"{state}: {', '.join(ids)}" for state, ids in sorted(by_state.items()) if state not in TASK_DONE]
    return f"{done}/{len(tis)} tasks done" + (" | " + " | ".join(parts) if parts else "")


def follow_run(client: AirflowClient, settings: Settings, dag_id: str, run_id: str, timeout: float) -> str:
    """Poll the run until it finishes or timeout; print progress changes; return the final state."""
    started = time.monotonic()
    last_line = ""
    hinted = False
    last_s = client.last_success_seconds(dag_id)
    printed_at = 0.0
    while True:
        run = client.get_run(dag_id, run_id)
        tis = client.task_instances(dag_id, run_id)
        elapsed = time.monotonic() - started
        line = f"{run['state']}: {_progress(tis)}"
        if line != last_line or elapsed - printed_at >= HEARTBEAT_S:
            eta = eta_note(last_s, elapsed) if run["state"] not in FINISHED else ""
            print(f"[{elapsed:5.0f}s] {dag_id} {line}{eta}", flush=True)
            last_line, printed_at = line, elapsed
        if run["state"] in FINISHED:
            if run["state"] == "failed":
                _print_failures(settings, tis)
            if run["state"] == "success" and not tis:
                # Airflow creates no task for a date before the tasks' start_date, and calls that a success
                print(f"  run {run_id} finished without running any task: is its date before the DAG's "
                      f"start_date?", flush=True)
                return "empty"
            return run["state"]
        if run["state"] == "queued" and elapsed > QUEUED_HINT_S and not hinted:
            _explain_queued(client, dag_id, run_id)
            hinted = True
        if elapsed > timeout:
            print(f"timed out after {timeout:.0f} s; run {run_id} is still {run['state']} "
                  f"(see {client.base_url}/dags/{dag_id}/runs/{run_id})", flush=True)
            return "timeout"
        time.sleep(POLL_INTERVAL_S)


def _explain_queued(client: AirflowClient, dag_id: str, run_id: str) -> None:
    active = client.request("GET", f"/dags/{dag_id}/dagRuns", params={"state": "running", "limit": 5})["dag_runs"]
    others = [r["dag_run_id"] for r in active if r["dag_run_id"] != run_id]
    if others:
        print(f"  queued behind {', '.join(others)} (max_active_runs); it starts when that run ends", flush=True)
    else:
        print("  still queued: is the scheduler running? (`feedloop status`)", flush=True)


def _print_failures(settings: Settings, tis: list[dict[str, Any]]) -> None:
    failed = [ti for ti in tis if ti["state"] == "failed"]
    blocked = [ti["task_id"] for ti in tis if ti["state"] == "upstream_failed"]
    for ti in failed:
        print(f"  failed: {ti['task_id']} (try {ti['try_number']}) log: {task_log_path(settings, ti)}", flush=True)
    if blocked:
        print(f"  not run (upstream failed): {', '.join(blocked)}", flush=True)


def run_dag(settings: Settings, dag_id: str, ds: date, timeout: float) -> str:
    """Run dag_id for ds end to end; return 'success', 'failed', 'timeout' or 'empty' (no task ran)."""
    with AirflowClient.from_settings(settings) as client:
        dag = wait_for_dag(client, dag_id)
        run_id = start_run(client, dag_id, ds)
        if dag.get("is_paused"):
            client.set_paused(dag_id, False)
            schedule = dag.get("timetable_summary")
            print(f"unpaused {dag_id}" + (f"; it now also runs on its schedule ({schedule})" if schedule else ""),
                  flush=True)
        started = time.monotonic()
        state = follow_run(client, settings, dag_id, run_id, timeout)
        print(f"{dag_id} run {run_id} for {ds}: {state} in {time.monotonic() - started:.0f}s; "
              f"UI {client.base_url}/dags/{dag_id}", flush=True)
        return state


def run_state_for(settings: Settings, dag_id: str, ds: date) -> str | None:
    """State of dag_id's latest run for logical date ds ('success', 'running', ...), or None."""
    with AirflowClient.from_settings(settings) as client:
        runs = client.runs_for_date(dag_id, _midnight(ds))
        latest = max(runs, key=lambda run: run.get("run_after") or "", default=None)
        return latest["state"] if latest else None


def cmd_run_dag(args) -> int:
    """`feedloop run-dag`: 0 when the run succeeded, 1 when it failed, timed out or could not start."""
    try:
        ds = date.fromisoformat(args.ds)
    except ValueError:
        print(f"feedloop run-dag: --ds must be YYYY-MM-DD, got {args.ds!r}", file=sys.stderr)
        return 1
    try:
        state = run_dag(get_settings(), args.dag_id, ds, args.timeout)
    except AirflowApiError as exc:
        print(f"feedloop run-dag: {exc}", file=sys.stderr)
        return 1
    return 0 if state == "success" else 1


def backfill(settings: Settings, dag_id: str, start: date, end: date, max_active_runs: int, timeout: float) -> dict:
    """Backfill dag_id for every day from start to end (inclusive) through Airflow's backfill API,
    re-running days that already ran; follow until every day finished. Returns {ds: state}."""
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    with AirflowClient.from_settings(settings) as client:
        wait_for_dag(client, dag_id)
        created = client.request("POST", "/backfills", json={
            "dag_id": dag_id, "from_date": _midnight(start).isoformat(), "to_date": _midnight(end).isoformat(),
            "reprocess_behavior": "completed", "max_active_runs": max_active_runs,
        })
        print(f"backfill {created.get('id')} of {dag_id}: {len(days)} days {start}..{end}, "
              f"{max_active_runs} at a time; UI {client.base_url}/dags/{dag_id}", flush=True)
        steps, last = Steps("backfill", len(days), out=sys.stdout), ""
        while True:
            states = {}
            for day in days:
                runs = client.runs_for_date(dag_id, _midnight(day))
                latest = max(runs, key=lambda run: run.get("run_after") or "", default=None)
                states[day.isoformat()] = latest["state"] if latest else "none"
            done = sum(state in FINISHED for state in states.values())
            line = ", ".join(f"{n} {state}" for state, n in sorted(Counter(states.values()).items()))
            if line != last:  # days done of all, elapsed and the ETA from the days done so far
                steps.at(done, line)
                last = line
            if done == len(days) or steps.elapsed() > timeout:
                return states
            time.sleep(POLL_INTERVAL_S)


def cmd_backfill(args) -> int:
    """`feedloop backfill`: 0 when every day of the range succeeded."""
    try:
        start, end = date.fromisoformat(args.from_date), date.fromisoformat(args.to_date)
    except ValueError:
        print("feedloop backfill: --from-date and --to-date must be YYYY-MM-DD", file=sys.stderr)
        return 1
    if end < start:
        print(f"feedloop backfill: --to-date {end} is before --from-date {start}", file=sys.stderr)
        return 1
    try:
        states = backfill(get_settings(), args.dag_id, start, end, args.max_active_runs, args.timeout)
    except AirflowApiError as exc:
        print(f"feedloop backfill: {exc}", file=sys.stderr)
        return 1
    failed = [ds for ds, state in states.items() if state != "success"]
    print(f"feedloop backfill: {len(states) - len(failed)}/{len(states)} days succeeded"
          + (f"; not successful: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
