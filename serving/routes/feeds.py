"""Feeds: ``/v1/feeds/users/{user_id}``, ``/v1/feeds/segments/{segment}``, ``/v1/trending``, ``/v1/popular``.

The two feed endpoints are the hot path (``python -m bench.serving``). They read their
query by hand instead of through FastAPI's parameter injection, which cost a third of
the framework's requests/s; their parameters are documented in OpenAPI all the same
(schemas.USER_FEED_PARAMS), and bad input gets the same 422. They are also served by
plain Starlette routes placed first (:func:`serving.app.serve_plain`), so they take
only the ``Request`` and reach the shared clients through :func:`serving.state.services`.

Every feed page served by them is logged to Kafka for attribution, fire-and-forget
(:mod:`serving.served_log`).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple
from urllib.parse import unquote_plus

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from feature_store import online
from serving.catalogues import check_categories
from serving.errors import BadInput, json_response
from serving.filtered import resolve_filtered
from serving.metrics import FEED_FALLBACKS, label_source
from serving.pages import decode_cursor, iso, live_page, now_ms, published_page, usable
from serving.schemas import (
    DEFAULT_LIMIT,
    MAX_CATEGORIES,
    MAX_CATEGORY_LEN,
    MAX_CURSOR_LEN,
    MAX_EXCLUDE,
    MAX_ID_LEN,
    MAX_LIMIT,
    SEGMENT_FEED_PARAMS,
    USER_FEED_PARAMS,
    FeedPage,
    Ranking,
    errors,
)
from serving.served_log import ServedLog, served_record
from serving.state import Services, Svc, services
from serving.store import UNKNOWN_SEGMENT, FeedStore, fallback_chain

TRENDING_WINDOWS = ("1m", "10m")
NO_IDS: frozenset[str] = frozenset()
HOT_PATHS = ("/v1/feeds/users/{user_id}", "/v1/feeds/segments/{segment}")

router = APIRouter(tags=["feeds"])


# -- the feed endpoints' query, read by hand ------------------------------------------


def parse_query(raw: bytes) -> dict[str, str]:
    """The query string as Starlette's ``request.query_params`` reads it (the last value of a
    repeated name wins), at a tenth of its cost."""
    out: dict[str, str] = {}
    if raw:
        for part in raw.decode("latin-1").split("&"):
            name, _, value = part.partition("=")
            if "%" in part or "+" in part:
                name, value = unquote_plus(name), unquote_plus(value)
            if name:
                out[name] = value
    return out


def _limit(raw: str | None, found: list[dict[str, str]]) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    digits = raw.strip()
    if not (digits.isascii() and digits.lstrip("+-").isdigit() and len(digits) <= 20):
        found.append({"field": "limit", "location": "query",
                      "message": "Input should be a valid integer, unable to parse string as an integer"})
        return DEFAULT_LIMIT
    limit = int(digits)
    if not 1 <= limit <= MAX_LIMIT:
        bound = "greater than or equal to 1" if limit < 1 else f"less than or equal to {MAX_LIMIT}"
        found.append({"field": "limit", "location": "query", "message": f"Input should be {bound}"})
    return limit


def _cursor(cursor: str | None, found: list[dict[str, str]]) -> tuple[str | None, int]:
    if cursor is not None and len(cursor) > MAX_CURSOR_LEN:
        found.append({"field": "cursor", "location": "query",
                      "message": f"String should have at most {MAX_CURSOR_LEN} characters"})
    elif cursor is not None:
        try:
            return decode_cursor(cursor)
        except ValueError as exc:
            found.append({"field": "cursor", "location": "query", "message": str(exc)})
    return None, 0


def id_list(raw: str | None, name: str, most: int, longest: int, found: list[dict[str, str]]) -> list[str]:
    """A comma-separated list (``category``, ``exclude``): every part non-empty and at most
    ``longest`` characters, at most ``most`` parts; problems go to ``found``."""
    if raw is None:
        return []
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) > most:
        found.append({"field": name, "location": "query", "message": f"at most {most} comma-separated values"})
    elif not all(parts):
        found.append({"field": name, "location": "query", "message": "empty value in the comma-separated list"})
    elif max(map(len, parts)) > longest:
        found.append({"field": name, "location": "query", "message": f"values have at most {longest} characters"})
    return parts


class FeedQuery(NamedTuple):
    ident: str
    limit: int
    pinned: str | None
    offset: int
    categories: list[str]  # lower case, sorted, each once; [] for no filter
    exclude: frozenset[str]


def feed_query(request: Request, id_name: str) -> FeedQuery:
    """The query of a feed request; the same checks and messages as FastAPI's declared parameters
    (see schemas.USER_FEED_PARAMS). Raises :class:`BadInput` listing every bad field."""
    found: list[dict[str, str]] = []
    ident = request.path_params[id_name]
    if len(ident) > MAX_ID_LEN:
        found.append({"field": id_name, "location": "path",
                      "message": f"String should have at most {MAX_ID_LEN} characters"})
    query = parse_query(request.scope["query_string"])
    limit = _limit(query.get("limit"), found)
    pinned, offset = _cursor(query.get("cursor"), found)
    categories = id_list(query.get("category"), "category", MAX_CATEGORIES, MAX_CATEGORY_LEN, found)
    exclude = id_list(query.get("exclude"), "exclude", MAX_EXCLUDE, MAX_ID_LEN, found)
    if found:
        raise BadInput(found)
    # without a filter (the usual request) no set is built: 1 µs of the hot path
    return FeedQuery(ident, limit, pinned, offset, sorted({c.lower() for c in categories}) if categories else [],
                     frozenset(exclude) if exclude else NO_IDS)


async def known_categories(svc: Services, categories: list[str]) -> dict[str, Any]:
    """What the filtered feeds test items against: the item ids of ``categories`` in the current
    catalogue, their numbers in it and its version (:func:`serving.filtered.resolve_filtered`'s
    ``allowed``, ``codes``, ``catalogue``); raises :class:`BadInput` naming an unknown category."""
    index = await svc.catalogues.get(svc.store)
    found = index.category_filter(categories) if index is not None else None
    if found is None:
        check_categories(categories, index)  # raises, naming the unknown category
    return found


# -- the fallback chain ---------------------------------------------------------------


async def _live_candidate(store: FeedStore, source: str, window: str | None, key: str, size: int, rows: list,
                          pinned: str | None, offset: int, limit: int, exclude: frozenset[str]) -> dict[str, Any]:
    reset = pinned is not None and pinned != f"{source}:{window or 'all'}"
    if reset and offset:
        rows = await store.zrevrange(key, 0, limit + len(exclude))
    return live_page(source, window, rows, size, 0 if reset else offset, reset, limit, exclude)


async def resolve_user_page(store: FeedStore, user_id: str, pinned: str | None, offset: int,
                            limit: int, client_exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The first source, in fallback order, that has something for this user: own feed,
    segment feeds (:func:`serving.store.fallback_chain`), trending (1m, 10m), popular.

    A feed whose unseen items are all gone is skipped on a fresh start, but a cursor
    into it runs to its end rather than jumping to another feed.
    """
    segment, exclude, own = await store.user_view(user_id)
    if client_exclude:
        exclude = exclude | client_exclude
    first: dict[str, Any] | None = None
    if own is not None:
        body = published_page(own, "user", user_id, pinned, offset, limit, exclude)
        if usable(body, pinned, offset):
            return body
        first = body

    chain = fallback_chain(segment or UNKNOWN_SEGMENT)
    for ident, feed in zip(chain, await store.feeds([("seg", s) for s in chain])):
        if feed is not None:
            body = published_page(feed, "segment", ident, pinned, offset, limit, exclude)
            if usable(body, pinned, offset):
                return body
            first = first or body

    live = [("trending", w, online.trending_key(w)) for w in TRENDING_WINDOWS]
    live.append(("popular", None, online.popular_key()))
    pages = await store.zset_pages([key for _, _, key in live], offset, limit + len(exclude))
    for (source, window, key), (size, rows) in zip(live, pages):
        if size:
            body = await _live_candidate(store, source, window, key, size, rows, pinned, offset, limit, exclude)
            if usable(body, pinned, offset):
                return body
            first = first or body
    # Nothing published at all yet: an empty popular page says so.
    return first or live_page("popular", None, [], 0, 0, False, limit, exclude)


def _log_served(served: ServedLog, body: dict[str, Any], user_id: str | None) -> None:
    if body["items"]:
        served.log(served_record(body, user_id, now_ms()), user_id or body["segment"] or body["feed_id"])


# -- routes ---------------------------------------------------------------------------


@router.get(
    "/v1/feeds/users/{user_id}", response_model=FeedPage, responses=errors(422, 503),
    summary="A user's feed, with fallbacks",
    description=(
        "The user's own feed; else the feed of the user's segment (or its coarser parents); else "
        "trending (1m, then 10m); else popular. `source` says which. Recently seen items are left out."
    ),
    openapi_extra={"parameters": USER_FEED_PARAMS},
)
async def user_feed(request: Request):
    svc = services(request)
    try:
        user_id, limit, pinned, offset, categories, exclude = feed_query(request, "user_id")
        allowed = await known_categories(svc, categories) if categories else None
    except BadInput as exc:
        return exc.response()
    if allowed is None:
        body = await resolve_user_page(svc.store, user_id, pinned, offset, limit, exclude)
    else:
        body = await resolve_filtered(svc.store, categories=categories, user_id=user_id, pinned=pinned,
                                      offset=offset, limit=limit, exclude=exclude, **allowed)
    if body["source"] != "user":
        svc.metrics.inc(*FEED_FALLBACKS, source=body["source"])
    label_source(request, body["source"])
    _log_served(svc.served, body, user_id)
    return json_response({"user_id": user_id, **body})


@router.get(
    "/v1/feeds/segments/{segment}", response_model=FeedPage, responses=errors(404, 422, 503),
    summary="A segment's feed",
    description="The current feed of exactly this segment (e.g. `F|25-34|comedy`); 404 when none is published.",
    openapi_extra={"parameters": SEGMENT_FEED_PARAMS},
)
async def segment_feed(request: Request):
    svc = services(request)
    try:
        segment, limit, pinned, offset, categories, exclude = feed_query(request, "segment")
        allowed = await known_categories(svc, categories) if categories else None
    except BadInput as exc:
        return exc.response()
    label_source(request, "segment")
    if allowed is None:
        (feed,) = await svc.store.feeds([("seg", segment)])
        body = published_page(feed, "segment", segment, pinned, offset, limit, exclude) if feed else None
    else:
        body = await resolve_filtered(svc.store, categories=categories, segment=segment, pinned=pinned,
                                      offset=offset, limit=limit, exclude=exclude, **allowed)
    if body is None:
        return json_response({"error": f"no feed published for segment {segment!r}", "field": "segment",
                              "segment": segment}, status_code=404)
    _log_served(svc.served, body, None)
    return json_response(body)


async def _ranking(store: FeedStore, key: str, source: str, window: str | None, limit: int) -> Response:
    rows = await store.zrevrange(key, 0, limit)
    now = now_ms()
    return json_response({
        "source": source, "window": window, "generated_at": iso(now), "generated_at_ms": now,
        "items": [{"item_id": m, "score": s, "position": i} for i, (m, s) in enumerate(rows)],
    })


@router.get("/v1/trending", response_model=Ranking, responses=errors(422, 503), summary="Items trending in a window")
async def trending(
    request: Request,
    svc: Svc,
    window: Literal["1m", "10m"] = Query("1m", description="1m tumbling or 10m sliding window"),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
):
    label_source(request, "trending")
    return await _ranking(svc.store, online.trending_key(window), "trending", window, limit)


@router.get("/v1/popular", response_model=Ranking, responses=errors(422, 503), summary="All-time popular items")
async def popular(request: Request, svc: Svc, limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)):
    label_source(request, "popular")
    return await _ranking(svc.store, online.popular_key(), "popular", None, limit)
