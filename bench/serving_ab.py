"""`python -m bench.serving_ab`: the feed lookup of two trees of the project, side by side.

Issue 14 asks that the redesign keep ``bench.serving`` within 5% of its figure before the
change, measured on the same machine and day. Two runs of ``bench.serving`` one after the
other do not answer that here: on this shared two-core machine consecutive identical wrk
runs differ by up to 10%, and ``bench.serving`` itself changed (it now alternates the feed
with the filtered feed and search, so its server is warmer and its caches fuller than the
old benchmark's). This benchmark compares like with like:

* the *before* tree is ``git archive`` of a commit (``--before``, by default the last one
  before the redesign) in a temporary directory; the *after* tree is this checkout;
* each tree gets its own private redis-server, seeded by *that tree's*
  ``bench.serving.seed`` with the same arguments (so each API reads the keys it expects),
  and its own uvicorn server (one worker, uvloop, httptools), started from that tree with
  the same interpreter and an environment from ``bench.serving.app_env``;
* both servers are up for the whole run; the rounds alternate the order, ABBA, and each
  round runs wrk on ``GET /v1/feeds/users/{id}?limit=20`` over random users against one
  server, then the other, for ``--duration`` seconds each;
* the figures are the medians over rounds of requests/s and of the server's CPU time per
  request (less noisy than requests/s on a shared machine), and the median of the
  per-round paired ratios (after over before).

The 5% of the issue is printed as a reference (``goal_ratio``); the JSON on the last line
holds both trees' figures, the ratios and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.private import REPO_ROOT, Private, free_port
from bench.serving import FEED_PATH, FEED_TEMPLATE, app_env, log, lua_script, run_wrk, start_redis, wait_until
from feedloop.eta import Steps

BEFORE_DEFAULT = "830740f"  # the last commit before issue 14's redesign (core as a ground floor)
GOAL_RATIO = 0.95  # issue 14: within 5% of the figure before the change (reference)
APP = "serving.app:app_from_settings"
SEED_CODE = ("import sys, redis, bench.serving as b; "
             "print(b.seed(redis.Redis(port=int(sys.argv[1]), decode_responses=True), "
             "int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])))")


def export_tree(ref: str, into: Path) -> Path:
    """``git archive`` of ``ref`` unpacked into ``into`` (a tree of the project as it was)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def tree_env(tree: Path, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env["PYTHONPATH"] = str(tree)
    env.pop("PYTHONSTARTUP", None)
    return env


class Side:
    """One tree: its private redis-server, seeded by its own bench.serving, and its API server."""

    def __init__(self, name: str, tree: Path, workdir: Path, args) -> None:
        self.name, self.tree = name, tree
        workdir.mkdir(parents=True, exist_ok=True)
        redis_port = free_port()
        self.redis = start_redis(redis_port, workdir)
        env = tree_env(tree, app_env(redis_port, workdir))
        seeded = subprocess.run(
            [sys.executable, "-c", SEED_CODE, str(redis_port), str(args.users), str(args.cold_users),
             str(args.segments), str(args.items), str(args.feed_size)],
            cwd=tree, env=env, capture_output=True, text=True, timeout=300)
        if seeded.returncode:
            self.redis.stop()
            raise RuntimeError(f"seeding for {name} failed:\n{seeded.stderr[-2000:]}")
        log(f"{name}: {tree}, redis :{redis_port}, seeded {seeded.stdout.strip()}")
        self.port = free_port()
        argv = [sys.executable, "-m", "uvicorn", APP, "--factory", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                "--log-level", "warning"]
        self.server = Private(argv, env=env, log_path=workdir / "api.log", cwd=tree)
        wait_until(self._ready, f"uvicorn ({name})", self.server)
        self.base = f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}" + FEED_PATH.format(user_id="u000000"),
                                        timeout=1) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def run(self, script: Path, args) -> dict:
        return run_wrk(self.base, args.connections, args.duration, 1, script, self.server.proc.pid)

    def stop(self) -> None:
        self.server.stop()
        self.redis.stop()


def summarise(runs: list[dict]) -> dict:
    rps = [r["rps"] for r in runs]
    cpu = [r["server_cpu_us_per_request"] for r in runs]
    return {
        "rps_median": round(statistics.median(rps), 1),
        "rps_mean": round(statistics.mean(rps), 1),
        "rps_std": round(statistics.stdev(rps), 1) if len(rps) > 1 else 0.0,
        "cpu_us_per_request_median": round(statistics.median(cpu), 1),
        "p99_ms_median": round(statistics.median(r["p99_ms"] for r in runs), 3),
        "errors": sum(r["errors"] for r in runs),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.serving_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE_DEFAULT, help=f"git ref of the baseline (default {BEFORE_DEFAULT})")
    parser.add_argument("--rounds", type=int, default=10, help="ABBA rounds (default 10)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--users", type=int, default=1000, help="users with a feed (default 1000)")
    parser.add_argument("--cold-users", type=int, default=200, help="users with a profile only (default 200)")
    parser.add_argument("--segments", type=int, default=100, help="exact segments with a feed (default 100)")
    parser.add_argument("--items", type=int, default=5000, help="catalogue size (default 5000)")
    parser.add_argument("--feed-size", type=int, default=50)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    n_ids = args.users + args.cold_users
    load_before = os.getloadavg()
    steps = Steps("bench.serving_ab", 2 + args.rounds)
    with tempfile.TemporaryDirectory(prefix="feedloop-ab-") as tmp:
        workdir = Path(tmp)
        before_tree = export_tree(args.before, workdir / "before-tree")
        sides: dict[str, Side] = {}
        try:
            sides["before"] = Side("before", before_tree, workdir / "before", args)
            sides["after"] = Side("after", REPO_ROOT, workdir / "after", args)
            script = lua_script(workdir / "feed.lua", FEED_TEMPLATE, n_ids)
            for side in sides.values():  # warm both: imports, connections, caches
                side.run(script, argparse.Namespace(connections=args.connections, duration=3))
            steps.step("both servers up and warm")
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for n in range(args.rounds):
                order = ("before", "after") if n % 4 in (0, 3) else ("after", "before")
                for name in order:
                    runs[name].append(sides[name].run(script, args))
                steps.step(f"round {n + 1}: before {runs['before'][-1]['rps']:,.0f} req/s, "
                           f"after {runs['after'][-1]['rps']:,.0f} req/s")
        finally:
            for side in sides.values():
                side.stop()
    before, after = summarise(runs["before"]), summarise(runs["after"])
    paired = [a["rps"] / b["rps"] for a, b in zip(runs["after"], runs["before"])]
    paired_cpu = [b["server_cpu_us_per_request"] / a["server_cpu_us_per_request"]
                  for a, b in zip(runs["after"], runs["before"])]
    result = {
        "benchmark": "serving_ab",
        "route": FEED_PATH,
        "before_ref": args.before,
        "before": before,
        "after": after,
        "ratio_rps_of_medians": round(after["rps_median"] / before["rps_median"], 3),
        "ratio_rps_paired_median": round(statistics.median(paired), 3),
        "cpu_ratio_before_over_after_paired_median": round(statistics.median(paired_cpu), 3),
        "goal_ratio_reference": GOAL_RATIO,
        "meets_goal": statistics.median(paired) >= GOAL_RATIO,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "connections": args.connections,
        "items": args.items,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    cpu_ratio = result["cpu_ratio_before_over_after_paired_median"]
    steps.summary(f"after/before {result['ratio_rps_paired_median']:.3f} req/s (paired median of {args.rounds}), "
                  f"CPU per request before/after {cpu_ratio:.3f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
