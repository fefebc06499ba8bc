"""`python -m bench.freshness`: seconds from a burst of clicks on a new item to that item in a segment's feed.

Runs against the running stack (`make up`, and a champion: run the DAG once) and
starts the online learner under the supervisor if it is not running
(`feedloop up stream-learner`). Each trial:

1. picks a segment S among the biggest of the users table, and a brand-new item id;
2. sends ``--clicks`` clicks on it from S's users to Kafka (one burst, timestamp t0);
3. polls Redis every 0.1 s until the item is in S's published feed (the learner's
   fine-tune and republication), and, in the same trial, until it is in
   ``trending:1m`` (the streaming aggregates, which learn nothing: the baseline).

A burst whose item is not in the feed within ``--timeout`` seconds is a **miss**.
The last line is one JSON object: ``trials``, ``reached``, ``misses``, ``hit_share``,
``p50_s`` and ``p95_s`` of the bursts that reached the feed, the same for trending
and their ratio, ``loadavg`` (``os.getloadavg()`` at the end: the machine's load
while measured), the learner's state after the run, and whether the goal (at least
95% of bursts in the feed, p95 at most 5 s) is met. One warm-up trial is run
first and not counted: a learner's first batch after it starts loads TensorFlow,
the champion and the holdout (~40 s), and a learner that runs has not
necessarily had a batch yet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

import numpy as np

from feedloop import clients
from feedloop.eta import Steps

GOAL_HIT_SHARE = 0.95
GOAL_P95_S = 5.0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def segments_by_size(settings) -> list[tuple[str, list[str]]]:
    from feature_store.segments import segment_of
    from feedloop.clients import hive_connection

    cursor = hive_connection(settings, settings.hive.database).cursor()
    cursor.execute("SELECT user_id, gender, age, interests FROM users")
    groups: dict[str, list[str]] = {}
    for user_id, gender, age, interests in cursor.fetchall():
        interests = json.loads(interests) if isinstance(interests, str) else list(interests or [])
        groups.setdefault(segment_of(gender, age, interests), []).append(user_id)
    return sorted(groups.items(), key=lambda kv: -len(kv[1]))


def ensure_learner(settings) -> bool:
    """Start the learner under the supervisor if needed; True when it was just started (cold)."""
    from infra.stack import up
    from infra.supervision import process_states

    states = process_states(settings)
    if states.get("stream-learner") != "RUNNING":
        log("starting the online learner (feedloop up stream-learner)")
        up(["stream-learner"], settings)
        return True
    return False


def trial(settings, client, producer, segment: str, fans: list[str], clicks: int, timeout_s: float) -> dict:
    from feature_store import online
    from feedloop.events import new_event

    item = f"fresh-{uuid.uuid4().hex[:10]}"
    started = time.time()
    for n in range(clicks):
        producer.send(settings.kafka.events_topic, new_event("click", fans[n % len(fans)], item, position=0))
    producer.flush()
    seen: dict[str, float] = {}
    while time.time() - started < timeout_s and not ("feed" in seen and "trending" in seen):
        if "feed" not in seen:
            feed = online.read_feed(client, "seg", segment)
            if feed is not None and item in feed.items:
                seen["feed"] = time.time() - started
                seen["version"] = feed.model_version
        if "trending" not in seen and client.zscore(online.trending_key("1m"), item) is not None:
            seen["trending"] = time.time() - started
        time.sleep(0.1)
    return {"item": item, "segment": segment, **seen}


def _learner_progress(settings) -> dict:
    from feedloop.progress import read_progress

    return read_progress(settings, "stream-learner") or {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--clicks", type=int, default=40, help="clicks per burst")
    parser.add_argument("--timeout", type=float, default=30, help="seconds a burst may take; later: a miss")
    parser.add_argument("--segments", type=int, default=5, help="rotate over the N biggest segments")
    args = parser.parse_args(argv)

    from feature_store import online
    from feedloop.clients import make_producer
    from feedloop.settings import get_settings

    settings = get_settings()
    cold = ensure_learner(settings)
    client = clients.redis_client(settings)
    producer = make_producer(settings)
    groups = segments_by_size(settings)[:args.segments]
    if not groups:
        print("bench.freshness: the users table is empty: run `feedloop simulate` and the DAG first", file=sys.stderr)
        return 2
    # a learner's first batch loads TensorFlow, the champion and the holdout: not freshness
    warm = trial(settings, client, producer, groups[0][0], groups[0][1][:10], args.clicks, max(args.timeout, 180))
    log(f"warm-up trial (not counted): feed {warm.get('feed', 'timeout')} s")
    results, steps = [], Steps("bench.freshness", args.trials)
    for n in range(args.trials):
        segment, fans = groups[n % len(groups)]
        result = trial(settings, client, producer, segment, fans[:10], args.clicks, args.timeout)
        if "feed" not in result:  # a miss: what the learner said about its last batch
            result["learner_reason"] = _learner_progress(settings).get("reason")
        results.append(result)
        steps.step(f"{segment}: feed "
            + (f"{result['feed']:.2f} s ({result['version']})" if "feed" in result else
               f"MISS (not in the feed after {args.timeout:g} s; learner: {result['learner_reason']})")
            + f", trending {result.get('trending', 'timeout')} s")
    producer.close()
    feed = [r["feed"] for r in results if "feed" in r]
    trending = [r["trending"] for r in results if "trending" in r]

    def pct(values, q):
        return round(float(np.percentile(values, q)), 2) if values else None

    hit_share = len(feed) / len(results) if results else 0.0
    progress = _learner_progress(settings)
    out = {
        "trials": len(results), "reached": len(feed), "misses": len(results) - len(feed),
        "hit_share": round(hit_share, 3), "p50_s": pct(feed, 50), "p95_s": pct(feed, 95),
        "trending_p50_s": pct(trending, 50), "trending_p95_s": pct(trending, 95),
        "ratio_p50_to_trending": round(pct(feed, 50) / pct(trending, 50), 2) if feed and trending else None,
        "goal_hit_share": GOAL_HIT_SHARE, "goal_p95_s": GOAL_P95_S,
        "meets_goal": bool(feed) and hit_share >= GOAL_HIT_SHARE and pct(feed, 95) <= GOAL_P95_S,
        "clicks_per_burst": args.clicks, "timeout_s": args.timeout, "learner_was_cold": cold,
        "last_batch_seconds": progress.get("seconds"), "learner_version": progress.get("version"),
        "learner_resets": progress.get("resets"), "learner_alert": progress.get("alert") or None,
        "missed": [{"segment": r["segment"], "learner_reason": r.get("learner_reason")}
                   for r in results if "feed" not in r],
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    steps.summary(f"{out['reached']}/{out['trials']} bursts reached the feed ({out['misses']} misses), p50 "
                  f"{out['p50_s']} s, p95 {out['p95_s']} s (goal, reference: >= {GOAL_HIT_SHARE:.0%} within "
                  f"p95 {GOAL_P95_S} s); trending p50 {out['trending_p50_s']} s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
