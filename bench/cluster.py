"""`python -m bench.cluster`: the ingest drain and the daily DAG on the single-node stack and on the
cluster profile, in one run, side by side (docs/cluster.md, "What the cluster costs").

Each profile gets a whole stack of its own (`feedloop up`, under ``var/bench-cluster/<profile>``,
every port +10000), one after the other, so the two never share the cores. On each:

1. ``up``: every service started and healthy, timed;
2. drain: ``stream-events`` stopped, ``--events`` simulated events of one day (and its
   catalogue) into Kafka with the simulator's producer (acks=all, idempotent), then the sink
   started and timed until every event is in Hive and in the Redis aggregates (the drain of
   ``bench.ingest``); the CPU of every process of the stack during the drain, per event;
3. DAG: ``feedloop_daily_retrain`` for that day through Airflow, timed, with each task's time;
4. memory: the RSS of each member (a supervised service with all its children: a Spark worker
   includes its executors), sampled every 2 s from ``up`` to the end: the peak and the mean;
5. ``down``, and the var dir removed (``--keep`` keeps it).

On two cores the cluster is not faster; what this measures is the overhead of the same code on
more members, and the CPU per event and memory per member to plan hardware with. Ends with one
JSON object on its last line: both profiles' figures, cluster/single ratios, loadavg.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.ingest import drain, loadavg, rnd
from bench.stacks import shifted_env
from feedloop.eta import Steps

REPO = Path(__file__).resolve().parents[1]
DAG_ID = "feedloop_daily_retrain"
PORT_SHIFT = 10_000  # the bench stacks' shift (bench.ingest's too: the two benches do not run at once)
PROFILES = ("single", "cluster")


def log(message: str) -> None:
    print(f"[bench.cluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class MemorySampler(threading.Thread):
    """RSS of each supervised service, its children included, every ``every_s``: peak and mean in MB."""

    def __init__(self, settings, every_s: float = 2.0):
        super().__init__(daemon=True)
        self.settings, self.every_s = settings, every_s
        self.samples: dict[str, list[float]] = {}
        self.stop_event = threading.Event()

    def sample(self) -> None:
        import psutil

        from infra.supervision import supervisor

        try:
            infos = supervisor(self.settings).getAllProcessInfo()
        except Exception:  # supervisord restarting: skip this sample
            return
        for info in infos:
            if not info.get("pid"):
                continue
            try:
                proc = psutil.Process(info["pid"])
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.Error:
                continue
            self.samples.setdefault(info["name"], []).append(rss / 2**20)

    def run(self) -> None:
        while not self.stop_event.wait(self.every_s):
            self.sample()

    def stop(self) -> dict:
        self.stop_event.set()
        self.join(10)
        out = {name: {"peak_mb": round(max(v)), "mean_mb": round(sum(v) / len(v))}
               for name, v in sorted(self.samples.items())}
        out["_all_peak_mb"] = round(sum(m["peak_mb"] for m in out.values()))
        return out


def simulate_day(settings, ds: str, events: int) -> dict:
    """``events`` simulated events of ``ds`` (and the catalogue) into Kafka, the sink stopped."""
    from sources import simulator
    from sources.simulator import DEMO_ITEMS, DEMO_USERS

    started = time.perf_counter()
    simulator.main(argparse.Namespace(users=DEMO_USERS, items=DEMO_ITEMS, events=events, rate=0, duration=0,
                                      seed=7, ds=ds, no_catalogue=False))
    seconds = time.perf_counter() - started
    return {"events": events, "seconds": round(seconds, 1), "per_s": round(events / seconds)}


def run_dag(settings, ds: str, timeout_s: float) -> dict:
    """The daily DAG for ``ds`` through Airflow's REST API: state, seconds, each task's seconds."""
    from datetime import date

    from infra.airflow_client import AirflowClient, follow_run, start_run, wait_for_dag

    with AirflowClient.from_settings(settings) as client:
        dag = wait_for_dag(client, DAG_ID)
        started = time.time()
        run_id = start_run(client, DAG_ID, date.fromisoformat(ds))
        if dag.get("is_paused"):
            client.set_paused(DAG_ID, False)
        state = follow_run(client, settings, DAG_ID, run_id, timeout_s)
        seconds = time.time() - started
        tasks = {ti["task_id"]: rnd(ti.get("duration"), 1) for ti in client.task_instances(DAG_ID, run_id)}
    return {"state": state, "seconds": round(seconds, 1), "tasks": tasks}


def one_profile(profile: str, events: int, var_dir: Path, dag_timeout_s: float, keep: bool) -> dict:
    """Up, drain, DAG, memory and down on one profile's stack (this process's environment)."""
    from feedloop.settings import get_settings
    from infra.stack import down, up
    from infra.supervision import supervisor

    get_settings.cache_clear()
    if var_dir.exists():
        down(get_settings())  # a run that did not finish
        shutil.rmtree(var_dir)
    result: dict = {"profile": profile, "loadavg_start": loadavg()}
    started = time.time()
    memory, steps = None, Steps(f"bench.cluster {profile}", 4)  # up, produce, drain, DAG
    try:
        log(f"{profile}: feedloop up under {var_dir} (ports +{PORT_SHIFT})")
        settings = up()
        result["up_s"] = round(time.time() - started, 1)
        get_settings.cache_clear()
        settings = get_settings()
        memory = MemorySampler(settings)
        memory.start()
        steps.step(f"up in {result['up_s']}s; {events:,} events of one day into Kafka, the sink stopped")
        ds = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        supervisor(settings).stopProcess("stream-events", True)
        result["produce"] = simulate_day(settings, ds, events)
        steps.step(f"produced {result['produce']}; draining")
        drained = drain(settings, events, timeout_s=1800)
        cpu_s = sum(drained["cpu"]["stack_cpu_s"].values())
        result["drain"] = {"hive_per_s": drained["hive"]["per_s"], "redis_per_s": drained["redis"]["per_s"],
                           "hive_all_s": drained["hive"]["all_s"], "first_batch_s": drained["hive"]["first_batch_s"],
                           "in_hive": drained["hive"]["events"], "stack_cpu_s": drained["cpu"]["stack_cpu_s"],
                           "stack_cpu_ms_per_event": rnd(1000 * cpu_s / events, 4)}
        steps.step(f"drain {result['drain']['hive_per_s']} events/s into Hive, "
            f"{result['drain']['stack_cpu_ms_per_event']} CPU-ms per event; running {DAG_ID} for {ds}")
        result["loadavg_dag"] = loadavg()
        result["dag"] = run_dag(settings, ds, dag_timeout_s)
        steps.step(f"DAG {result['dag']['state']} in {result['dag']['seconds']}s")
    finally:
        if memory is not None:
            result["memory"] = memory.stop()
        log(f"{profile}: down")
        down(get_settings())
        if not keep:
            shutil.rmtree(var_dir, ignore_errors=True)
    result["loadavg_end"] = loadavg()
    return result


def ratio(cluster, single) -> float | None:
    return round(cluster / single, 3) if cluster and single else None


def summary(single: dict, cluster: dict) -> dict:
    pick = {
        "up_s": lambda r: r.get("up_s"),
        "drain_hive_events_per_s": lambda r: r.get("drain", {}).get("hive_per_s"),
        "drain_stack_cpu_ms_per_event": lambda r: r.get("drain", {}).get("stack_cpu_ms_per_event"),
        "dag_s": lambda r: r.get("dag", {}).get("seconds"),
        "memory_all_peak_mb": lambda r: r.get("memory", {}).get("_all_peak_mb"),
    }
    return {name: {"single": f(single), "cluster": f(cluster), "cluster_vs_single": ratio(f(cluster), f(single))}
            for name, f in pick.items()}


def child(profile: str, args: argparse.Namespace) -> int:
    var_dir = Path(args.var_dir) / profile
    os.environ.update(shifted_env(var_dir, PORT_SHIFT))
    os.environ.pop("FEEDLOOP_KAFKA__BOOTSTRAP", None)
    os.environ["FEEDLOOP_PROFILE"] = profile  # "single": the defaults, whatever feedloop.yaml names
    if not args.tune:  # the same train step on both, without the hyperparameter search (minutes per trial)
        os.environ["FEEDLOOP_MODEL__TUNE"] = "false"
    print(json.dumps(one_profile(profile, args.events, var_dir, args.dag_timeout, args.keep)))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events of the day drained, then trained on")
    parser.add_argument("--dag-timeout", type=float, default=2400)
    parser.add_argument("--var-dir", default=str(REPO / "var" / "bench-cluster"))
    parser.add_argument("--keep", action="store_true", help="keep each profile's var dir (logs, data)")
    parser.add_argument("--tune", action="store_true", help="the DAG's train step with its hyperparameter search "
                        "(the shipped setting; off by default: it multiplies the DAG's time on both profiles alike)")
    parser.add_argument("--only", choices=PROFILES, help=argparse.SUPPRESS)  # one profile, in a child process
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only:
        return child(args.only, args)
    results, started, steps = {}, time.time(), Steps("bench.cluster", len(PROFILES))
    for profile in PROFILES:  # each in its own process: settings, clients and imports start clean
        argv_child = [sys.executable, "-m", "bench.cluster", "--only", profile, "--events", str(args.events),
                      "--dag-timeout", str(args.dag_timeout), "--var-dir", args.var_dir]
        argv_child += ["--keep"] * args.keep + ["--tune"] * args.tune
        out = subprocess.run(argv_child, cwd=REPO, stdout=subprocess.PIPE, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        results[profile] = json.loads(lines[-1]) if out.returncode == 0 and lines else {"error": out.returncode}
        steps.step(f"{profile}: " + (f"exit {out.returncode}" if "error" in results[profile] else
                                     f"DAG {results[profile].get('dag', {}).get('state')}"))
    single, cluster = results["single"], results["cluster"]
    ok = all(r.get("dag", {}).get("state") == "success" and (r.get("drain", {}).get("in_hive") or 0) >= args.events
             for r in (single, cluster))
    steps.summary(f"drain {single.get('drain', {}).get('hive_per_s')} vs "
        f"{cluster.get('drain', {}).get('hive_per_s')} events/s, DAG {single.get('dag', {}).get('seconds')} vs "
        f"{cluster.get('dag', {}).get('seconds')} s (single vs cluster), ok={ok}")
    print(json.dumps({"bench": "cluster", "ok": ok, "events": args.events, "baseline": "single (same run)",
                      "dag_tune": args.tune,
                      "summary": summary(single, cluster), "single": single, "cluster": cluster,
                      "loadavg": loadavg()}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
