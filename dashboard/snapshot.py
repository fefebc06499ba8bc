"""The dashboard's figures, as pure functions of what the sources returned: no I/O here.

:mod:`dashboard.collect` reads the sources (the progress files and checkpoints that
`feedloop status` and the benches read, Kafka's end offsets, the API's ``/metrics``,
MLflow's registry, Hive's ``served_feeds`` and ``events``, `feedloop status`'s rows);
these functions turn those readings into the JSON the page draws.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from serving.metrics import DURATION

RATE_WINDOW_S = 10.0  # a rate is the counters' growth over the last this many seconds
FEED_ENDPOINT_PREFIX = "/v1/feeds/"
FEED_SOURCES = ("user", "segment", "trending", "popular")


class CounterHistory:
    """Timestamped readings of monotonic counters (since an app's start), kept for ``keep_s``.

    A counter that falls means the app restarted and counts from zero again: the readings
    before the fall are dropped, so a restart never shows as a negative rate.
    """

    def __init__(self, keep_s: float = 900.0) -> None:
        self.keep_s = keep_s
        self.samples: deque[tuple[float, dict[str, float]]] = deque()

    def add(self, t: float, counters: dict[str, float]) -> None:
        if self.samples and t <= self.samples[-1][0]:
            return  # the same reading (a progress file not rewritten since)
        if self.samples and any(counters.get(k, 0) < v for k, v in self.samples[-1][1].items()):
            self.samples.clear()
        self.samples.append((t, dict(counters)))
        while self.samples and self.samples[0][0] < t - self.keep_s:
            self.samples.popleft()

    def rates(self, now: float, window_s: float = RATE_WINDOW_S) -> dict[str, float] | None:
        """Per-second growth of each counter over ``[now - window_s, now]``; None with fewer than two readings."""
        if len(self.samples) < 2:
            return None
        latest_t, latest = self.samples[-1]
        start = now - window_s
        base_t, base = self.samples[0]
        for t, values in self.samples:
            if t > start:
                break
            base_t, base = t, values
        if base_t == latest_t:  # nothing new within the window
            return {k: 0.0 for k in latest}
        span = window_s if base_t <= start else max(now - base_t, 1e-3)
        return {k: max(0.0, (v - base.get(k, 0)) / span) for k, v in latest.items()}


def sink_counters(progress: dict) -> dict[str, float]:
    """The counters of the events sink's progress record: valid, rejected (the DLQ), and one per event type."""
    totals = progress.get("since_start", {})
    counters = {"valid": totals.get("valid", 0), "rejected": totals.get("rejected", 0)}
    counters.update({f"type:{k}": v for k, v in (totals.get("by_type") or {}).items()})
    return counters


def events_panel(rates: dict[str, float] | None, progress: dict | None, now: float) -> dict:
    """Events in per second (valid, by type) and DLQ per second, from the sink's counters' rates."""
    if progress is None:
        return {"ok": False, "error": "the events sink has processed no batch yet (no var/run/stream-events.json)"}
    rates = rates or {}
    totals = progress.get("since_start", {})
    types = sorted({k.split(":", 1)[1] for k in rates if k.startswith("type:")} | set(totals.get("by_type") or {}))
    by_type = {t: round(rates.get(f"type:{t}", 0.0), 2) for t in types}
    return {"ok": True, "events_per_s": round(rates.get("valid", 0.0), 2), "dlq_per_s": round(rates.get("rejected", 0.0), 2),
            "by_type_per_s": by_type, "total_valid": totals.get("valid", 0), "total_dlq": totals.get("rejected", 0),
            "last_batch": progress.get("batch_id"), "last_batch_age_s": round(now - progress.get("updated_at", now), 1)}


def freshness_panel(events: dict | None, learner: dict | None, now: float) -> dict:
    """Event -> Redis aggregates (the sink's last batch) and click -> segment feed (the learner's last batch).

    The sink records how old the batch's newest event was when its aggregates reached Redis;
    the learner records how old its batch's newest click or dwell was when the batch began, and
    how long the batch took (fine-tune and republication), so a click reached its segment's feed
    about ``lag_s + seconds`` after it happened. ``python -m bench.freshness`` measures the
    second end to end, with bursts on a new item.
    """
    out: dict = {"ok": True}
    if events is not None:
        out["event_to_redis_s"] = events.get("redis_lag_s")
        out["event_to_redis_age_s"] = round(now - events.get("updated_at", now), 1)
    if learner is not None and learner.get("lag_s") is not None:
        out["click_to_feed_s"] = round(learner["lag_s"] + (learner.get("seconds") or 0.0), 2)
        out["click_to_feed_age_s"] = round(now - learner.get("updated_at", now), 1)
        out["learner_reason"] = learner.get("reason")
    if events is None and learner is None:
        return {"ok": False, "error": "neither the events sink nor the online learner has processed a batch yet"}
    return out


def query_lag(end_offsets: dict[int, int], committed: dict[int, int] | None) -> int | None:
    """Records in the topic that the query has not committed yet (None before its first commit)."""
    if committed is None:
        return None
    return sum(max(0, end - committed.get(partition, 0)) for partition, end in end_offsets.items())


def lag_panel(queries: list[dict]) -> dict:
    """``queries``: ``{"query", "topic", "end": {partition: offset}, "committed": {...} | None, "state"}``."""
    rows = [{"query": q["query"], "topic": q["topic"], "state": q.get("state", "?"),
             "lag": query_lag(q["end"], q["committed"]), "end": sum(q["end"].values())} for q in queries]
    return {"ok": True, "queries": rows}


def alias_marks(aliases: dict[str, dict | None]) -> dict[str, str]:
    """Served model version -> its alias: the champion's number, the online state's ``<v>+online.<n>``
    (the online alias's ``online_version`` tag) and its registered number, and the challenger's."""
    marks: dict[str, str] = {}
    for alias in ("challenger", "online", "champion"):  # the champion's mark wins a tie
        version = aliases.get(alias)
        if version:
            marks[str(version["version"])] = alias
            if version.get("online_version"):
                marks[version["online_version"]] = alias
    return marks


def mark_of(model_version: str, marks: dict[str, str]) -> str:
    if model_version in marks:
        return marks[model_version]
    base = model_version.split("+online.", 1)[0]
    return "online" if base != model_version and marks.get(base) == "champion" else ""


def ctr_panel(rows: Iterable[tuple], aliases: dict[str, dict | None], since: str) -> dict:
    """``rows``: (model_version, segment, impressions, clicks) from Hive; CTR and the alias of each version."""
    marks = alias_marks(aliases)
    out = []
    for version, segment, impressions, clicks in rows:
        impressions, clicks = int(impressions or 0), int(clicks or 0)
        out.append({"model_version": str(version), "segment": segment, "impressions": impressions, "clicks": clicks,
                    "ctr": round(clicks / impressions, 4) if impressions else None,
                    "alias": mark_of(str(version), marks)})
    out.sort(key=lambda r: (-r["impressions"], r["model_version"], r["segment"] or ""))
    return {"ok": True, "since": since, "rows": out}


def champion_panel(versions: list[dict], aliases: dict[str, dict | None], limit: int = 15) -> dict:
    """The registry's trained versions, newest first: day, NDCG@10, the gate's decision and reason, aliases.

    ``versions``: ``{"version", "tags", "created_ms"}``. Versions the online learner registered
    (tag ``online_version``) are left out but for the one holding ``online``.
    """
    holders: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        if version:
            holders.setdefault(str(version["version"]), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: -int(v["version"])):
        tags = v.get("tags", {})
        number = str(v["version"])
        if tags.get("online_version") and number not in holders:
            continue
        ndcg = tags.get("ndcg10")
        rows.append({"version": number, "ds": tags.get("ds"), "ndcg10": float(ndcg) if ndcg else None,
                     "gate": tags.get("gate"), "reason": tags.get("gate_reason"),
                     "online_version": tags.get("online_version"), "aliases": sorted(holders.get(number, [])),
                     "created_ms": v.get("created_ms")})
    champion = aliases.get("champion")
    return {"ok": True, "champion": str(champion["version"]) if champion else None,
            "online": (aliases.get("online") or {}).get("online_version") or
                      (str(aliases["online"]["version"]) if aliases.get("online") else None),
            "challenger": str(aliases["challenger"]["version"]) if aliases.get("challenger") else None,
            "versions": rows[:limit]}


def feed_source_counts(families) -> dict[str, float]:
    """Feed requests answered so far, by source, from the API's parsed ``/metrics`` (prometheus_client's
    ``text_string_to_metric_families``): the latency histogram's ``_count`` of the feed routes."""
    counts = {s: 0.0 for s in FEED_SOURCES}
    for family in families:
        if family.name != DURATION[0]:
            continue
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("endpoint", "").startswith(FEED_ENDPOINT_PREFIX):
                source = sample.labels.get("source", "none")
                counts[source] = counts.get(source, 0.0) + sample.value
    return counts


def sources_panel(counts: dict[str, float], rates: dict[str, float] | None) -> dict:
    total = sum(counts.values())
    return {"ok": True, "total": total,
            "sources": [{"source": s, "served": counts.get(s, 0.0), "share": round(counts.get(s, 0.0) / total, 3) if total else 0.0,
                         "per_s": round((rates or {}).get(s, 0.0), 2)} for s in sorted(counts, key=lambda s: -counts[s])]}


def health_panel(rows: list[dict] | None) -> dict:
    """`feedloop status`'s rows (infra.stack.status_rows); None when supervisord does not answer."""
    if rows is None:
        return {"ok": False, "error": "supervisord is not running (start with `make up`)"}
    return {"ok": True, "healthy": sum(1 for r in rows if r["healthy"]), "services": len(rows),
            "rows": [{k: r[k] for k in ("service", "state", "healthy", "address")} for r in rows]}
