"""In-process CPU per request of the API's metrics, old code against new, interleaved (docs/serving.md, "Metrics").

wrk through uvicorn (bench/serving.py) cannot tell a few microseconds apart on a shared
2-core machine, so this calls the code directly, in one process per variant and round:

* ``observe``: ``Metrics.observe`` alone (what the middleware adds to every request);
* ``app``: a whole user-feed request through the ASGI app (``create_app``), Redis answers
  canned (the user's own 50-item feed), the served-feed log queueing to a closed Kafka
  port (fewer records than its queue holds), gc set as in ``app_from_settings``.

Each measurement is the minimum over ``--reps`` repetitions of ``--n`` calls (process CPU
time); rounds alternate the variants and the report gives each variant's median over
the rounds. A variant is ``name=path``: ``path`` goes first on PYTHONPATH (e.g. a
``git archive`` of the commit before); ``name`` ending in ``+mp`` runs with
``PROMETHEUS_MULTIPROC_DIR`` set to a fresh directory, as ``feedloop serve`` does::

    git archive HEAD~1 | tar -x -C /tmp/before
    python -m bench.metrics_cost old=/tmp/before new=. new+mp=.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from feedloop.eta import Steps

USER = "u42"


class CannedRedis:
    """The user's own feed, every time (the common case: one round trip)."""

    def __init__(self) -> None:
        from feature_store.online import Feed

        feed = Feed(items=[f"i{i}" for i in range(50)], model_version="7", scores=[1.0 / (i + 1) for i in range(50)],
                    publication="1767225600000")
        self.answer = ["F|25-34|comedy", "i1\0i2", feed.to_json()]

    async def evalsha(self, script, keys, args=()):
        return self.answer

    async def pipeline(self, commands):
        raise AssertionError("not on the common path")

    async def execute(self, *command):
        raise AssertionError("not on the common path")

    async def close(self):
        pass


def _cpu_per_call(fn, n: int, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        started = time.process_time()
        fn(n)
        best = min(best, (time.process_time() - started) / n)
    return best * 1e6


def measure_observe(n: int, reps: int) -> float:
    from serving.metrics import Metrics

    metrics = Metrics()

    def run(count: int) -> None:
        observe = metrics.observe
        for i in range(count):
            observe("/v1/feeds/users/{user_id}", "user", 200, 0.0003 + (i & 7) * 0.001)

    run(100)
    return _cpu_per_call(run, n, reps)


def measure_app(n: int, reps: int) -> float:
    from feedloop.settings import Settings
    from serving.app import GC_THRESHOLDS, create_app
    from serving.served_log import ServedLog

    settings = Settings(redis={"port": 1}, kafka={"bootstrap": "127.0.0.1:1"})
    served = ServedLog("127.0.0.1:1", settings.kafka.served_topic, queue_max_messages=100_000)
    app = create_app(settings, served_log=served, redis_client=CannedRedis())
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": f"/v1/feeds/users/{USER}", "raw_path": f"/v1/feeds/users/{USER}".encode(),
             "query_string": b"limit=20", "root_path": "", "headers": [(b"host", b"bench")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def requests(count: int) -> None:
        for _ in range(count):
            await app(dict(scope), receive, send)
        assert sent[0]["status"] == 200, sent[0]
        sent.clear()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(requests(200))
    try:
        return _cpu_per_call(lambda count: loop.run_until_complete(requests(count)), n, reps)
    finally:
        served.close(0)


def child(args) -> None:
    what = {"observe": measure_observe, "app": measure_app}[args.what]
    print(json.dumps({"us": what(args.n, args.reps)}))


def run_variant(spec: str, args) -> float:
    name, _, path = spec.partition("=")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDLOOP_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = str(Path(path).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        if name.endswith("+mp"):
            env["PROMETHEUS_MULTIPROC_DIR"] = tmp
        out = subprocess.run([sys.executable, "-m", "bench.metrics_cost", "--child", "--what", args.what,
                              "--n", str(args.n), "--reps", str(args.reps)],
                             env=env, cwd=path, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["us"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=["new=."], help="name=path (name ending +mp: multiprocess mode)")
    parser.add_argument("--what", choices=("observe", "app"), default="app")
    parser.add_argument("--n", type=int, default=200, help="calls per repetition")
    parser.add_argument("--reps", type=int, default=25, help="repetitions per round (the minimum is kept)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    results: dict[str, list[float]] = {spec.partition("=")[0]: [] for spec in args.variants}
    load = [os.getloadavg()[0]]
    steps = Steps("bench.metrics_cost", args.rounds * len(args.variants))
    for round_no in range(args.rounds):
        order = args.variants if round_no % 2 == 0 else args.variants[::-1]
        for spec in order:
            results[spec.partition("=")[0]].append(run_variant(spec, args))
            steps.step(f"round {round_no + 1}, {spec.partition('=')[0]}: {results[spec.partition('=')[0]][-1]:.2f} µs")
    load.append(os.getloadavg()[0])
    report = {name: {"median_us": round(statistics.median(v), 2), "rounds_us": [round(x, 2) for x in v]}
              for name, v in results.items()}
    steps.summary(", ".join(f"{name} {r['median_us']} µs per {args.what} call (median of {args.rounds})"
                            for name, r in report.items()))
    print(json.dumps({"what": args.what, "n": args.n, "reps": args.reps, "rounds": args.rounds,
                      "loadavg_1m": load, **report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
