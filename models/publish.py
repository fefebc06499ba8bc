"""Publish feeds from the champion model to Redis, and report on the latest retrain.

``main(args)`` (``feedloop publish --ds``) loads ``models:/feedloop-two-tower``'s
``champion`` version from the MLflow registry, reads users, items and the last
7 days of events from Hive, and writes:

* every user's profile (``segment, gender, age, interests``), so the API can map
  a user without a personal feed to a segment feed;
* one feed per segment present among users, plus each one's coarser fallbacks
  (down to ``any|any|any``), scored by the query tower with no user id;
* one feed per user active in the last 7 days, without the items they already
  engaged with;
* for every segment feed, one feed per category (``segcat:<segment>~<category>``): the
  segment's best ``model.category_feed_size`` items of that category, for the largest
  ``model.category_feeds_max`` categories; the candidates of ``?category=`` on the feed
  endpoints (docs/serving.md, memory sizing);

all as one publication (:func:`feature_store.online.publish_feeds`), flipped atomically.
:func:`publish_feeds_from_model` is the core, callable with pandas DataFrames.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import redis

from feature_store import online
from feature_store.catalogue import categories_key, with_category_codes
from feature_store.segments import ANY, fallbacks
from feedloop import clients
from feedloop.settings import Settings, get_settings
from models import data
from models.train import CHAMPION, aliased_version, configure_mlflow

ACTIVE_DAYS = 7
# Profiles are rewritten by every daily publish; the TTL lets deleted users age out
# while surviving a week of failed retrains.
PROFILE_TTL_S = 8 * 24 * 3600
SUMMARY_TTL_S = 30 * 24 * 3600
BATCH_REDIS_TIMEOUT_S = 30.0  # a batch job may wait; the API keeps the short timeout
USER_CHUNK = 4096
ROOT_SEGMENT = "|".join((ANY, ANY, ANY))


def publication_summary_key() -> str:
    """Hash describing the latest publication (for ``feedloop report``)."""
    return online.key("publication", "latest")


@dataclass
class PublishResult:
    publication: str
    model_version: str
    segment_feeds: int
    user_feeds: int
    profiles: int

    def summary(self) -> str:
        return (
            f"published {self.segment_feeds + self.user_feeds:,} feeds ({self.segment_feeds:,} segments, "
            f"{self.user_feeds:,} users) and {self.profiles:,} profiles from feedloop-two-tower "
            f"v{self.model_version}, publication {self.publication}"
        )


# ------------------------------------------------------------------ pure-ish core
def feed_segments(user_features: pd.DataFrame, extra: Iterable[str] = ()) -> list[str]:
    """Every segment among users (and ``extra``) plus their fallbacks, sorted."""
    present = set(user_features["segment"]) | set(extra) | {ROOT_SEGMENT}
    return sorted({s for seg in present for s in fallbacks(seg)})


def category_feeds(segments: list[str], seg_scores: np.ndarray, item_ids: np.ndarray, categories: np.ndarray,
                   size: int, max_categories: int, model_version: str,
                   now_ms: int) -> dict[tuple[str, str], online.Feed]:
    """Each segment's best ``size`` items within each of the ``max_categories`` largest categories
    (``categories``: lower case, one per item), ``{(CATEGORY_FEED, "<segment>~<category>"): Feed}``."""
    if size <= 0 or max_categories <= 0 or len(segments) == 0:
        return {}
    names, counts = np.unique(categories, return_counts=True)
    chosen = names[np.argsort(-counts, kind="stable")][:max_categories]
    out: dict[tuple[str, str], online.Feed] = {}
    for category in chosen:
        cols = np.flatnonzero(categories == category)
        scores = seg_scores[:, cols]
        for segment, row, ranked in zip(segments, scores, data.top_k(scores, None, size)):
            out[(online.CATEGORY_FEED, online.category_feed_ident(segment, str(category)))] = online.Feed(
                items=item_ids[cols[ranked]].tolist(), model_version=model_version, generated_at_ms=now_ms,
                scores=row[ranked].astype(float).tolist())
    return out


def build_feeds(
    model,
    model_version: str,
    user_features: pd.DataFrame,
    catalogue: pd.DataFrame,
    recent: pd.DataFrame,
    feed_size: int,
    log: Callable[[str], None] = print,
    category_size: int = 0,
    max_categories: int = 0,
) -> dict[tuple[str, str], online.Feed]:
    """Segment feeds, their per-category feeds (with ``category_size``) and active users' feeds,
    ``{(kind, id): Feed}``.

    ``recent``: ``user_id, item_id, event_type`` (and ``ts``) of the last days; its users
    are the active ones, their positive items (latest first) are the query tower's
    history, and they are left out of their own feed.
    """
    now_ms = int(time.time() * 1000)
    item_ids = catalogue["item_id"].tolist()
    item_vectors = model.item_embeddings(item_ids, catalogue["category"].tolist())
    item_array = np.asarray(item_ids, dtype=object)

    def feed(row_scores: np.ndarray, ranked: np.ndarray) -> online.Feed:
        return online.Feed(items=item_array[ranked].tolist(), model_version=model_version, generated_at_ms=now_ms,
                           scores=row_scores[ranked].astype(float).tolist())

    active = sorted(recent["user_id"].dropna().astype(str).unique())
    active_segments = data.segments_for(active, user_features)
    segments = feed_segments(user_features, active_segments)
    feeds: dict[tuple[str, str], online.Feed] = {}
    seg_scores = model.query_embeddings([""] * len(segments), segments) @ item_vectors.T
    for segment, scores, ranked in zip(segments, seg_scores, data.top_k(seg_scores, None, feed_size)):
        feeds[("seg", segment)] = feed(scores, ranked)
    log(f"scored {len(segments):,} segment feeds over {len(item_ids):,} items")
    by_category = category_feeds(segments, seg_scores, item_array, catalogue["category"].to_numpy(dtype=object),
                                 category_size, max_categories, model_version, now_ms)
    feeds.update(by_category)
    if by_category:
        log(f"built {len(by_category):,} per-category segment feeds of up to {category_size} items")

    index = {item: n for n, item in enumerate(item_ids)}
    positives = recent[recent["event_type"].isin(data.POSITIVE_TYPES)]
    # every active user's history (their latest positives, as in training) and seen items in one pass
    # each, not one pass over all the positives per chunk (14.5 of 22.8 s for 20,000 users)
    all_histories = model.user_histories(positives, active)
    all_seen = data.index_lists(positives, active, index)
    for start in range(0, len(active), USER_CHUNK):
        users = active[start:start + USER_CHUNK]
        histories = all_histories[start:start + USER_CHUNK]
        scores = model.query_embeddings(users, active_segments[start:start + USER_CHUNK], histories) @ item_vectors.T
        seen = all_seen[start:start + USER_CHUNK]
        ranked = data.top_k(scores, seen, feed_size)
        for user, row_scores, row, row_seen in zip(users, scores, ranked, seen):
            feeds[("user", user)] = feed(row_scores, row[~np.isin(row, row_seen)])
        log(f"scored user feeds {start + len(users):,}/{len(active):,}")
    return feeds


def new_items(items: pd.DataFrame, days: int, now_ms: int | None = None) -> list[str]:
    """Item ids created in the last ``days``, newest first (exploration candidates)."""
    if "created_at" not in items or items.empty:
        return []
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    created = pd.to_numeric(items["created_at"], errors="coerce")
    fresh = items[created >= now_ms - days * 86_400_000]
    return fresh.sort_values("created_at", ascending=False)["item_id"].astype(str).tolist()


def age_and_explore(client: redis.Redis, feeds: dict, items: pd.DataFrame, recent: pd.DataFrame,
                    settings: Settings) -> dict:
    """Apply feature_store.feeds.refresh_feed against the feeds now in Redis."""
    from feature_store.feeds import refresh_feed

    ms = settings.model
    # per-category feeds are published as scored: exploration slots would put other categories in them
    refs = [ref for ref in feeds if ref[0] != online.CATEGORY_FEED]
    previous = online.read_feeds(client, refs)
    candidates = new_items(items, ms.new_item_days)
    positives = recent[recent["event_type"].isin(data.POSITIVE_TYPES)]
    seen = positives.groupby("user_id")["item_id"].agg(set).to_dict() if not positives.empty else {}
    refreshed = {
        ref: refresh_feed(feeds[ref], prev, seen.get(ref[1], ()) if ref[0] == "user" else (), candidates,
                          ms.aging_keep_share, ms.exploration_slots, ms.feed_size)
        for ref, prev in zip(refs, previous)
    }
    return {ref: refreshed.get(ref, feed) for ref, feed in feeds.items()}


def write_profiles(client: redis.Redis, user_features: pd.DataFrame, chunk: int = 1000) -> int:
    """Write each user's profile hash (``segment, gender, age, interests``); returns how many."""
    rows = user_features.to_dict("records")
    for start in range(0, len(rows), chunk):
        pipe = client.pipeline(transaction=False)
        for row in rows[start:start + chunk]:
            profile_key = online.user_profile_key(row["user_id"])
            pipe.hset(profile_key, mapping={
                "segment": row["segment"],
                "gender": row["gender"] or "",
                "age": "" if row["age"] is None else str(row["age"]),
                "interests": ",".join(row["interests"]),
            })
            pipe.expire(profile_key, PROFILE_TTL_S)
        pipe.execute()
    return len(rows)


def publish_feeds_from_model(
    model,
    model_version: str,
    users: pd.DataFrame,
    items: pd.DataFrame,
    recent: pd.DataFrame,
    client: redis.Redis,
    settings: Settings,
    ds: str = "",
    log: Callable[[str], None] = print,
) -> PublishResult:
    """Profiles, then every feed as one publication; ``users``/``items`` as in the Hive tables."""
    user_features = data.user_features(users)
    catalogue = data.catalogue(items)
    if catalogue.empty:
        raise ValueError("the item catalogue is empty: nothing to recommend")
    profiles = write_profiles(client, user_features)
    log(f"wrote {profiles:,} user profiles")
    version = publish_catalogue(client, items, settings, log) if "title" in items else None
    feeds = build_feeds(model, model_version, user_features, catalogue, recent, settings.model.feed_size, log,
                        settings.model.category_feed_size, settings.model.category_feeds_max)
    feeds = age_and_explore(client, feeds, items, recent, settings)
    if version is not None:
        feeds = with_category_codes(feeds, zip(items["item_id"], items["category"]), version,
                                    client.smembers(categories_key(version)))
    publication = online.publish_feeds(client, feeds, ttl_s=settings.redis.feed_ttl_s)
    kinds = pd.Series([kind for kind, _ in feeds]).value_counts()  # (per-category feeds: not counted)
    result = PublishResult(publication, model_version, int(kinds.get("seg", 0)), int(kinds.get("user", 0)), profiles)
    client.hset(publication_summary_key(), mapping={
        "publication": publication, "model_version": model_version, "ds": ds,
        "segment_feeds": result.segment_feeds, "user_feeds": result.user_feeds, "profiles": profiles,
        "published_at_ms": int(time.time() * 1000),
    })
    client.expire(publication_summary_key(), SUMMARY_TTL_S)
    log(result.summary())
    return result


def publish_catalogue(client: redis.Redis, items: pd.DataFrame, settings: Settings,
                      log: Callable[[str], None] = print) -> str:
    """The catalogue as a new version in Redis (GET /v1/items, the filtered feeds), and with
    ``search.backend: opensearch`` in the cluster too, before the version becomes current."""
    from feature_store import search_engine
    from feature_store.catalogue import write_catalogue

    search = settings.search
    if search.backend == "opensearch":
        version = search_engine.write_indexed_catalogue(client, items.to_dict("records"), search.endpoint,
                                                        search.index_prefix, log=log)
    else:
        version = write_catalogue(client, items.to_dict("records"))
    log(f"wrote the catalogue of {len(items):,} items, version {version} (GET /v1/items)")
    return version


# ------------------------------------------------------------------ thin layers
def batch_redis(settings: Settings) -> redis.Redis:
    """A Redis client for batch writes: the settings' server, a longer timeout."""
    slow = settings.redis.model_copy(update={"socket_timeout_s": max(settings.redis.socket_timeout_s,
                                                                       BATCH_REDIS_TIMEOUT_S)})
    return clients.redis_client(settings.model_copy(update={"redis": slow}))


def load_champion(settings: Settings):
    """(version, TwoTower) of the registry's champion; raises when there is none."""
    from models.two_tower import load_registered

    client = configure_mlflow(settings)
    name = settings.mlflow.model_name
    champion = aliased_version(client, name, CHAMPION)
    if champion is None:
        raise RuntimeError(f"no '{CHAMPION}' alias on registered model {name} at {settings.mlflow_uri}: "
                           f"run `feedloop train --ds ...` first")
    print(f"loading models:/{name}/{champion.version} (@{CHAMPION})")
    return str(champion.version), load_registered(name, champion.version)


def read_publish_inputs(spark, ds: str, database: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(users, items, the last 7 days' events) from Hive, as pandas."""
    from pyspark.sql import functions as F

    start = (date.fromisoformat(ds) - timedelta(days=ACTIVE_DAYS - 1)).isoformat()
    users = spark.table(f"{database}.users").select("user_id", "gender", "age", "interests")
    items = spark.table(f"{database}.items").select("item_id", "title", "category", "keywords", "price", "created_at")
    recent = (
        spark.table(f"{database}.events")
        .where(F.col("dt").between(start, ds) & F.col("user_id").isNotNull())
        .groupBy("user_id", "item_id", "event_type")
        .agg(F.max("ts").alias("ts"))  # the latest time of each, to order the users' histories
    )
    return users.toPandas(), items.toPandas(), recent.toPandas()


def main(args) -> int:
    """``feedloop publish --ds YYYY-MM-DD``."""
    from feature_store.offline import batch_spark
    from models.train import window_start

    settings = get_settings()
    window_start(args.ds)  # validates the date
    version, model = load_champion(settings)
    client = batch_redis(settings)
    client.ping()  # fail before the Spark read when Redis is down
    spark = batch_spark("feedloop-publish", settings=settings)
    try:
        users, items, recent = read_publish_inputs(spark, args.ds, settings.hive.database)
    finally:
        spark.stop()
    print(f"read {len(users):,} users, {len(items):,} items, {recent['user_id'].nunique():,} active users")
    publish_feeds_from_model(model, version, users, items, recent, client, settings, args.ds)
    return 0


def _when(ms: object) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        return "unknown"


def report(args) -> int:
    """``feedloop report --ds``: the day's training run, the champion and its metrics, the live feeds."""
    settings = get_settings()
    client = configure_mlflow(settings)
    name = settings.mlflow.model_name
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    if experiment is not None:
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.ds = '{args.ds}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        for run in runs:
            tags = run.data.tags
            print(f"training {args.ds}: run {run.info.run_id} -> v{tags.get('registered_version', '?')} "
                  f"{tags.get('gate', '?')} ({tags.get('gate_reason', '')})")
        if not runs:
            print(f"training {args.ds}: no run in experiment {settings.mlflow.experiment}")

    champion = aliased_version(client, name, CHAMPION)
    if champion is None:
        print(f"champion: none registered for {name}")
    else:
        metrics = client.get_run(champion.run_id).data.metrics
        shown = ", ".join(f"{m} {metrics[m]:.4f}" for m in ("recall10", "ndcg10", "popularity_ndcg10") if m in metrics)
        print(f"champion: {name} v{champion.version} (trained on {champion.tags.get('ds', '?')}): {shown}; "
              f"{settings.mlflow_uri.rstrip('/')}/#/models/{name}/versions/{champion.version}")

    try:
        redis_client = clients.redis_client(settings)
        latest = redis_client.hgetall(publication_summary_key())
        root = online.read_feed(redis_client, "seg", ROOT_SEGMENT)
    except redis.RedisError as exc:
        print(f"feeds: Redis at {settings.redis.host}:{settings.redis.port} unreachable ({exc})")
        return 0
    if not latest:
        print("feeds: nothing published")
    else:
        live = "live" if root is not None and root.publication == latest.get("publication") else "expired or replaced"
        print(f"feeds: publication {latest['publication']} at {_when(latest.get('published_at_ms'))} "
              f"from v{latest.get('model_version')} (ds {latest.get('ds') or '?'}): {latest.get('segment_feeds')} "
              f"segment and {latest.get('user_feeds')} user feeds, {latest.get('profiles')} profiles; {live}")
        if champion is not None and latest.get("model_version") != str(champion.version):
            print(f"feeds: WARNING published from v{latest.get('model_version')}, champion is v{champion.version}")
    return 0
