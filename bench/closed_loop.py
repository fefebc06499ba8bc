"""`python -m bench.closed_loop`: click-through of feeds with the online learner on, against the frozen champion,
while the simulated users' tastes drift.

One run, one seed, one simulated world (:mod:`sources.simulator`: users with
hidden preferences, the click model by preference and position):

1. **history**: a week of organic user actions before the run; the champion is
   trained on them with the daily job's model and settings (the same pairs, weights,
   time split and towers), and its segment feeds are published: what the frozen
   arm shows for the whole run (feeds change only at the next daily retrain);
2. **rounds**: each round is one micro-batch of the learner (a minute of event
   time). The users are split in two arms by id (even / odd, so every segment is in
   both): each round ``--visits`` feed visits per arm, each user shown the top 10
   of their segment's feed (learner arm: the online state's feed, republished
   after every accepted update; frozen arm: the champion's), clicking by their
   hidden preference and the position; plus ``--organic`` organic actions (views,
   clicks, dwell the users sought themselves);
3. **the learner** (:class:`models.online.OnlineLearner`, the streaming job's code
   and settings: flood caps, replay, bounded steps, the prequential judge, the
   holdout's catastrophe bound) learns from every click and dwell of the round,
   both arms' and organic, as the streaming job does from the events topic, and
   republishes the touched segments' feeds (:func:`models.online_service.segment_feeds`);
4. **drift** at ``--drift-round``: a new trend: ``--trend-items`` new items in a
   new category are released, and the users whose top interest is one of
   ``--trend-interests`` categories come to prefer it over everything (weight 4
   against 3 for a top interest), while their old top interest cools to 0.7.
   What users declared (their segment) does not change.

Kafka, Spark and Redis are not in this loop (``bench.freshness`` times that path
on the running stack); the learning, guardrail and feed computation are the
streaming job's own code. The CTR curves go to ``var/bench/closed_loop.png`` and
MLflow (the stack's server when it answers, else ``var/bench/mlflow.db``). The last
line is one JSON object with ``ctr_learner``, ``ctr_frozen`` (whole run) and the
same after the drift, their ratio and a two-proportion z score, for each seed
(``--seeds``, default three), then their mean ± standard deviation and whether the
learner beats the frozen champion after the drift on every seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from feedloop.eta import Steps

FEED_LIMIT = 10
ROUND_MS = 60_000
TREND_CATEGORY = "viral"
TREND_WEIGHT = 4.0
COOLED_WEIGHT = 0.7
EVENT_COLUMNS = ["user_id", "item_id", "event_type", "ts", "dwell_ms"]
DEFAULT_SEEDS = "7,11,23"
# the figures summarised over seeds (mean ± std)
SUMMARISED = ("ctr_learner", "ctr_frozen", "ctr_learner_after_drift", "ctr_frozen_after_drift",
              "ratio_learner_to_frozen", "ratio_after_drift", "z_after_drift", "updates_accepted",
              "updates_refused", "resets")


def log(message: str) -> None:
    print(f"[closed-loop] {message}", file=sys.stderr, flush=True)


def _frame(events: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{k: e.get(k) for k in EVENT_COLUMNS} for e in events], columns=EVENT_COLUMNS)


def _learnable(events: list[dict]) -> pd.DataFrame:
    from models.online_service import LEARN_TYPES

    return _frame([e for e in events if e["event_type"] in LEARN_TYPES and e.get("item_id")])


def _feed_for(feeds: dict[str, list[str]], segment: str) -> list[str]:
    from feature_store.segments import fallbacks

    return next((feeds[s] for s in fallbacks(segment) if s in feeds), [])


def _feeds(model, version: str, segments: list[str], catalogue: pd.DataFrame) -> dict[str, list[str]]:
    from models.online_service import segment_feeds

    return {key[1]: feed.items[:FEED_LIMIT] for key, feed in segment_feeds(model, version, segments, catalogue,
                                                                            FEED_LIMIT).items()}


def z_score(clicks_a: int, shown_a: int, clicks_b: int, shown_b: int) -> float:
    """Two-proportion z statistic of CTR a against CTR b (pooled variance)."""
    if not shown_a or not shown_b:
        return 0.0
    pooled = (clicks_a + clicks_b) / (shown_a + shown_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / shown_a + 1 / shown_b))
    return (clicks_a / shown_a - clicks_b / shown_b) / se if se else 0.0


def beats(result: dict) -> bool:
    """The learner beats the frozen champion: higher CTR after the drift, z above 2."""
    return result["ctr_learner_after_drift"] > result["ctr_frozen_after_drift"] and result["z_after_drift"] > 2


def summarise(results: list[dict]) -> dict:
    """Per-seed results, their mean and standard deviation (ddof 1), and whether the learner beat every seed."""
    def stats(key):
        values = np.array([r[key] for r in results], dtype=np.float64)
        return round(float(values.mean()), 4), round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 4)

    summary = {key: stats(key) for key in SUMMARISED}
    return {"seeds": [r["seed"] for r in results], "per_seed": results,
            "mean": {k: v[0] for k, v in summary.items()}, "std": {k: v[1] for k, v in summary.items()},
            "beats_every_seed": all(beats(r) for r in results),
            "seconds": round(sum(r["seconds"] for r in results), 1),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}  # the machine's load while it ran (shared, noisy)


def plot(rounds: pd.DataFrame, drift_round: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(rounds["round"], rounds["ctr_learner"], marker="o", ms=3, label="online learner")
    ax.plot(rounds["round"], rounds["ctr_frozen"], marker="o", ms=3, label="frozen champion")
    ax.plot(rounds["round"], rounds["ctr_random"], ls=":", color="grey", label="random feed (expected)")
    ax.axvline(drift_round - 0.5, color="red", ls="--", lw=1, label="drift: new trend")
    ax.set_xlabel("round (one learner micro-batch = 1 min of event time)")
    ax.set_ylabel("feed CTR (clicks / impressions)")
    ax.set_title("Closed loop: feed CTR with the online learner vs the frozen champion")
    ax.legend(loc="center right", bbox_to_anchor=(1.0, 0.32))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _reachable(uri: str, timeout_s: float = 2.0) -> bool:
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return False
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 80), timeout=timeout_s):
            return True
    except OSError:
        return False


def log_to_mlflow(settings, params: dict, result: dict, rounds: pd.DataFrame, png: Path) -> str:
    """One MLflow run (experiment ``<experiment>-bench``) with the figures, the curves and the plot."""
    import mlflow

    uri = settings.mlflow_uri if _reachable(settings.mlflow_uri) else \
        f"sqlite:///{(settings.var / 'bench' / 'mlflow.db').resolve()}"
    if not uri.startswith("http"):
        (settings.var / "bench").mkdir(parents=True, exist_ok=True)
        log(f"MLflow server at {settings.mlflow_uri} does not answer; logging to {uri}")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"{settings.mlflow.experiment}-bench")
    with mlflow.start_run(run_name="closed_loop") as run:
        mlflow.set_tag("benchmark", "closed_loop")
        mlflow.log_params(params)
        mlflow.log_metrics({k: float(v) for k, v in result.items() if isinstance(v, (int, float))
                            and not isinstance(v, bool)})
        for row in rounds.itertuples():
            mlflow.log_metrics({"round_ctr_learner": row.ctr_learner, "round_ctr_frozen": row.ctr_frozen},
                               step=int(row.round))
        mlflow.log_artifact(str(png))
        rounds.to_csv(png.with_suffix(".csv"), index=False)
        mlflow.log_artifact(str(png.with_suffix(".csv")))
        return f"{uri} run {run.info.run_id}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.closed_loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--history-actions", type=int, default=60_000, help="organic actions before the run")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--drift-round", type=int, default=8)
    parser.add_argument("--visits", type=int, default=150, help="feed visits per arm per round")
    parser.add_argument("--organic", type=int, default=600, help="organic actions per round")
    parser.add_argument("--trend-items", type=int, default=30)
    parser.add_argument("--trend-interests", default="comedy,drama,action,sci-fi",
                        help="users whose top interest is one of these adopt the trend")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS, help="comma-separated: one run (one world) per seed")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the runs to MLflow")
    args = parser.parse_args(argv)
    if not 0 < args.drift_round < args.rounds:
        parser.error("--drift-round must fall inside the run (0 < drift-round < rounds)")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds names no seed")

    results, steps = [], Steps("bench.closed_loop", len(seeds) * args.rounds)  # a step: one round of one seed
    for n, seed in enumerate(seeds):
        log(f"seed {seed} ({n + 1}/{len(seeds)})")
        results.append(run(args, seed, steps))
    summary = summarise(results)
    mean, std = summary["mean"], summary["std"]
    steps.summary(f"{len(seeds)} seeds: after the drift, CTR with the learner "
        f"{mean['ctr_learner_after_drift']:.4f} ± {std['ctr_learner_after_drift']:.4f} vs frozen champion "
        f"{mean['ctr_frozen_after_drift']:.4f} ± {std['ctr_frozen_after_drift']:.4f} (ratio "
        f"{mean['ratio_after_drift']:.3f} ± {std['ratio_after_drift']:.3f}); the learner beats it on "
        + ("every seed" if summary["beats_every_seed"] else
           f"{sum(beats(r) for r in results)} of {len(results)} seeds"))
    print(json.dumps(summary))
    return 0


def run(args, seed: int, steps: Steps | None = None) -> dict:
    """One seed's world, champion and rounds; returns its figures (and writes its plot, and its MLflow run)."""
    import tensorflow as tf

    steps = steps or Steps("bench.closed_loop", args.rounds)  # one seed alone (the unit tests)

    from feedloop.settings import get_settings
    from models import data
    from models.online import OnlineLearner
    from models.online_service import GUARD_USERS, learner_settings
    from models.two_tower import TowerConfig, TwoTower
    from sources.simulator import Item, Simulator, make_catalogue

    started = time.time()
    settings = get_settings()
    ms = settings.model
    tf.keras.utils.set_random_seed(seed)
    t0 = 1_790_000_000_000  # a fixed event-time origin: the same run for the same seed
    users, items = make_catalogue(args.users, args.items, seed, now_ms=t0)
    sim = Simulator(users, items, seed, now_ms=t0)

    # 1. history and the champion ---------------------------------------------------------
    history_start = t0 - 7 * 86_400_000
    step_ms = (t0 - history_start) // args.history_actions
    history = [e for n in range(args.history_actions) for e in sim.events_for_action(history_start + n * step_ms)]
    pairs = data.positive_pairs(_frame(history))
    train, holdout = data.time_split(pairs)
    user_table = pd.DataFrame({"user_id": [u.user_id for u in users], "gender": [u.gender for u in users],
                               "age": [u.age for u in users], "interests": [u.interests for u in users]})
    user_features = data.user_features(user_table)
    item_table = pd.DataFrame({"item_id": [i.item_id for i in items], "category": [i.category for i in items]})
    catalogue = data.catalogue(item_table, train, holdout)
    log(f"history: {len(history):,} events from {args.history_actions:,} actions -> {len(train):,} training pairs, "
        f"{len(holdout):,} held out; training the champion ({ms.epochs} epochs, the daily settings)")
    champion = TwoTower(TowerConfig.from_settings(ms))
    champion.fit(train, user_features, catalogue, ms.epochs, ms.batch_size, ms.learning_rate, log=lambda _: None)
    with tempfile.TemporaryDirectory() as tmp:  # the learner fine-tunes its own copy
        online_model = TwoTower.load(champion.save(Path(tmp) / "champion"))
    guard_users = holdout["user_id"].drop_duplicates().sample(frac=1.0, random_state=0).head(GUARD_USERS)
    guard_holdout = holdout[holdout["user_id"].isin(set(guard_users))]
    learner = OnlineLearner(online_model, "1", user_features, catalogue, train, guard_holdout, champion=champion,
                            log=log, **learner_settings(settings))
    log(f"champion: holdout recall@10 {learner.guard_score:.4f} ({time.time() - started:.0f}s)")

    segment_of = dict(zip(user_features["user_id"], user_features["segment"]))
    segments = sorted(set(segment_of.values()))
    frozen_feeds = _feeds(champion, "1", segments, catalogue)
    learner_feeds = dict(frozen_feeds)
    arms = {"learner": [u for n, u in enumerate(users) if n % 2 == 0],
            "frozen": [u for n, u in enumerate(users) if n % 2 == 1]}
    pick = random.Random(seed + 3)
    trend_interests = {c.strip() for c in args.trend_interests.split(",") if c.strip()}

    # 2-4. the rounds ----------------------------------------------------------------------
    rows = []
    trend_ids: set[str] = set()
    for r in range(args.rounds):
        now = t0 + r * ROUND_MS
        if r == args.drift_round:
            trend = [Item(f"t{j:04d}", f"Viral #{j}", TREND_CATEGORY, ["new"], 9.99, now)
                     for j in range(args.trend_items)]
            trend_ids = {i.item_id for i in trend}
            sim.release(trend)
            for interest in sorted(trend_interests):
                sim.drift([u for u in users if u.interests and u.interests[0] == interest],
                          {TREND_CATEGORY: TREND_WEIGHT, interest: COOLED_WEIGHT})
            adopters = sum(1 for u in users if u.interests and u.interests[0] in trend_interests)
            log(f"round {r}: drift: {len(trend)} '{TREND_CATEGORY}' items released; {adopters} users "
                f"(top interest in {sorted(trend_interests)}) now prefer them")
        events, stats = [], {}
        for arm, feeds in (("learner", learner_feeds), ("frozen", frozen_feeds)):
            shown = clicked = trend_shown = 0
            random_ctr = 0.0
            for _ in range(args.visits):
                user = pick.choice(arms[arm])
                page_items = _feed_for(feeds, segment_of[user.user_id])
                page = {"items": [{"item_id": i, "position": p} for p, i in enumerate(page_items)],
                        "model_version": arm}
                visit = sim.feed_visit(user, page, now + pick.randrange(ROUND_MS))
                events += visit
                shown += len(page_items)
                clicked += sum(1 for e in visit if e["event_type"] == "click")
                trend_shown += sum(1 for i in page_items if i in trend_ids)
                random_ctr += sim.random_feed_ctr(user, list(range(len(page_items)))) * len(page_items)
            stats[arm] = (shown, clicked, trend_shown, random_ctr)
        for _ in range(args.organic):
            events += sim.events_for_action(now + pick.randrange(ROUND_MS))
        learnable = _learnable(events)
        result = learner.update(data.positive_pairs(learnable)) if not learnable.empty else None
        if result is not None and result.publish:
            learner_feeds.update(_feeds(learner.model, learner.version, result.segments, learner.catalogue))
        (ls, lc, lt, lr), (fs, fc, ft, fr) = stats["learner"], stats["frozen"]
        rows.append({"round": r, "ctr_learner": lc / ls if ls else 0.0, "ctr_frozen": fc / fs if fs else 0.0,
                     "ctr_random": (lr + fr) / (ls + fs) if ls + fs else 0.0,
                     "shown_learner": ls, "clicks_learner": lc, "shown_frozen": fs, "clicks_frozen": fc,
                     "trend_share_learner": lt / ls if ls else 0.0, "trend_share_frozen": ft / fs if fs else 0.0,
                     "accepted": bool(result and result.accepted), "reset": bool(result and result.reset),
                     "version": learner.version, "guard": learner.guard_score,
                     "prequential_online": result.prequential_online if result else None,
                     "prequential_champion": result.prequential_champion if result else None})
        row = rows[-1]
        steps.step(f"seed {seed} round {r + 1}/{args.rounds}: CTR learner {row['ctr_learner']:.3f} "
            f"vs frozen {row['ctr_frozen']:.3f}; "
            f"trend share {row['trend_share_learner']:.2f} vs {row['trend_share_frozen']:.2f}; "
            f"{len(learnable)} click/dwell events; "
            + (f"{result.reason} -> {learner.version}, {len(result.segments)} segment feeds republished"
               if result and result.publish else (result.reason if result else "nothing to learn"))
            + f"; holdout recall {learner.guard_score:.4f} ({result.seconds if result else 0:.1f}s)")

    # summary ------------------------------------------------------------------------------
    rounds = pd.DataFrame(rows)
    after = rounds[rounds["round"] >= args.drift_round]
    before = rounds[rounds["round"] < args.drift_round]

    def ctr(frame, arm):
        shown = int(frame[f"shown_{arm}"].sum())
        return (int(frame[f"clicks_{arm}"].sum()) / shown) if shown else 0.0

    z_after = z_score(int(after["clicks_learner"].sum()), int(after["shown_learner"].sum()),
                      int(after["clicks_frozen"].sum()), int(after["shown_frozen"].sum()))
    result = {
        "ctr_learner": round(ctr(rounds, "learner"), 4), "ctr_frozen": round(ctr(rounds, "frozen"), 4),
        "ctr_learner_after_drift": round(ctr(after, "learner"), 4),
        "ctr_frozen_after_drift": round(ctr(after, "frozen"), 4),
        "ctr_learner_before_drift": round(ctr(before, "learner"), 4),
        "ctr_frozen_before_drift": round(ctr(before, "frozen"), 4),
        "ratio_learner_to_frozen": round(ctr(rounds, "learner") / max(ctr(rounds, "frozen"), 1e-9), 3),
        "ratio_after_drift": round(ctr(after, "learner") / max(ctr(after, "frozen"), 1e-9), 3),
        "z_after_drift": round(z_after, 2),
        "ctr_random_feed": round(float((rounds["ctr_random"] * (rounds["shown_learner"] + rounds["shown_frozen"])).sum()
                                       / max((rounds["shown_learner"] + rounds["shown_frozen"]).sum(), 1)), 4),
        "trend_share_learner_after_drift": round(float(after["trend_share_learner"].mean()), 3),
        "trend_share_frozen_after_drift": round(float(after["trend_share_frozen"].mean()), 3),
        "updates_accepted": int(rounds["accepted"].sum()), "updates_refused": learner.refusals,
        "resets": learner.rollbacks, "halted": learner.halted,
        "holdout_recall_champion": round(learner.base_score, 4),
        "holdout_recall_final": round(learner.guard_score, 4),
        "final_version": learner.version, "rounds": args.rounds, "drift_round": args.drift_round,
        "impressions": int(rounds["shown_learner"].sum() + rounds["shown_frozen"].sum()), "seed": seed,
        "seconds": round(time.time() - started, 1),
    }
    result["learner_wins"] = beats(result)
    png = plot(rounds, args.drift_round, settings.var / "bench" / f"closed_loop_seed{seed}.png")
    log(f"plot: {png}")
    if not args.no_mlflow:
        params = {**{k: v for k, v in vars(args).items() if k not in ("no_mlflow", "seeds")}, "seed": seed}
        log(f"MLflow: {log_to_mlflow(settings, params, result, rounds, png)}")
    log(f"seed {seed} done in {result['seconds']:.0f}s: CTR with the learner {result['ctr_learner']:.4f} vs frozen "
        f"champion {result['ctr_frozen']:.4f} (after the drift {result['ctr_learner_after_drift']:.4f} vs "
        f"{result['ctr_frozen_after_drift']:.4f}, z {result['z_after_drift']}); {result['updates_accepted']} "
        f"updates accepted, {learner.refusals} refused, {learner.rollbacks} resets to the champion")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
