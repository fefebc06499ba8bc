"""Cursors and pages of feeds: pure functions, no I/O.

A cursor is opaque to clients: ``base64url("<offset>:<feed_id>")``. It pins the feed
and its publication, so pages never mix two publications; when the pinned feed is no
longer current the next page starts again from the top and says ``cursor_reset``.
``position`` is an item's index in the whole feed (what events report back).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

MAX_OFFSET = 1_000_000


@lru_cache(maxsize=4096)  # feeds of one publication share their generation time
def iso(ms: int) -> str:
    """``ms`` since the epoch as ISO 8601 UTC with milliseconds, e.g. ``2026-01-01T00:00:00.000Z``."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> int:
    return int(time.time() * 1000)


def encode_cursor(feed_id: str, offset: int) -> str:
    """An opaque, URL-safe cursor for ``offset`` within the feed ``feed_id``."""
    raw = f"{offset}:{feed_id}".encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[str | None, int]:
    """``(feed_id, offset)`` from a cursor; a bare integer is an offset with no feed pinned.

    Raises ValueError on anything else.
    """
    if cursor is None or cursor == "":
        return None, 0
    if cursor.isascii() and cursor.isdigit():
        offset = int(cursor)
        if offset > MAX_OFFSET:
            raise ValueError(f"offset larger than {MAX_OFFSET}")
        return None, offset
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor returned by this API") from None
    offset, sep, feed_id = text.partition(":")
    if not sep or not (offset.isascii() and offset.isdigit()) or int(offset) > MAX_OFFSET or not feed_id:
        raise ValueError("not a cursor returned by this API")
    return feed_id, int(offset)


def feed_id_of(kind: str, ident: str, publication: str | None) -> str:
    """What events report as ``feed_id``: kind, id and publication (live rankings have none)."""
    return f"{kind}:{ident}@{publication}" if publication else f"{kind}:{ident}"


def take_page(
    entries: Iterable[tuple[str, float | None]],
    start: int,
    limit: int,
    exclude: frozenset[str] | set[str],
    total: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` items from ``entries`` (which begin at ``start`` of a ranking of
    ``total`` items), skipping ``exclude``; returns the page and the next offset or None.
    """
    page: list[dict[str, Any]] = []
    next_offset: int | None = None
    for i, (item, score) in enumerate(entries, start):
        if item in exclude:
            continue
        page.append({"item_id": item, "score": score, "position": i})
        if len(page) == limit:
            next_offset = i + 1
            break
    if next_offset is not None and next_offset >= total:
        next_offset = None
    return page, next_offset


def usable(body: dict[str, Any], pinned: str | None, offset: int) -> bool:
    """Whether a fallback candidate answers the request: it has items to show, or the
    client is paging through it (then its end is served, not another feed)."""
    continuing = body["feed_id"] == pinned if pinned is not None else offset > 0
    return bool(body["items"]) or continuing


def published_page(feed: dict[str, Any], source: str, ident: str, pinned: str | None, offset: int, limit: int,
                   exclude: frozenset[str]) -> dict[str, Any]:
    """A page of a published feed (as stored by :mod:`feature_store.online`)."""
    publication = str(feed.get("publication") or "") or None
    feed_id = feed_id_of("user" if source == "user" else "seg", ident, publication)
    reset = pinned is not None and pinned != feed_id
    start = 0 if reset else offset
    items = feed["items"]
    scores = feed.get("scores") or []
    if len(scores) < len(items):
        scores = list(scores) + [None] * (len(items) - len(scores))
    page, nxt = take_page(zip(items[start:], scores[start:]), start, limit, exclude, len(items))
    generated = int(feed["generated_at_ms"])
    version = feed.get("model_version")
    return {
        "source": source,
        "segment": ident if source == "segment" else None,
        "window": None,
        "feed_id": feed_id,
        "model_version": None if version is None else str(version),
        "generated_at": iso(generated),
        "generated_at_ms": generated,
        "publication": publication,
        "items": page,
        "next_cursor": encode_cursor(feed_id, nxt) if nxt is not None else None,
        "cursor_reset": reset,
    }


def live_page(source: str, window: str | None, rows: list[tuple[str, float]], size: int, start: int, reset: bool,
              limit: int, exclude: frozenset[str]) -> dict[str, Any]:
    """A page of a live ranking (trending or popular); ``rows`` begin at ``start``."""
    feed_id = feed_id_of(source, window or "all", None)
    page, nxt = take_page(rows, start, limit, exclude, size)
    now = now_ms()
    return {
        "source": source,
        "segment": None,
        "window": window,
        "feed_id": feed_id,
        "model_version": None,
        "generated_at": iso(now),
        "generated_at_ms": now,
        "publication": None,
        "items": page,
        "next_cursor": encode_cursor(feed_id, nxt) if nxt is not None else None,
        "cursor_reset": reset,
    }
