"""Items: ``GET /v1/items``, catalogue search over the worker's index (:mod:`serving.search_index`,
kept current by :mod:`serving.catalogues`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query

from feature_store.search_engine import index_name
from serving import search_remote
from serving.catalogues import check_categories
from serving.errors import BadInput, json_response
from serving.pages import decode_cursor, encode_cursor
from serving.schemas import DEFAULT_LIMIT, MAX_CURSOR_LEN, ItemPage, errors
from serving.search_index import words
from serving.state import Svc

MAX_ITEMS_LIMIT = 100
MAX_QUERY_LEN = 100
MAX_OFFSET = 10_000  # deeper pages are a crawl, not a search
CURSOR_PREFIX = "items@"  # an items cursor pins the catalogue version, not a feed

router = APIRouter(tags=["items"])


def check_filters(q: str | None, min_price: float | None, max_price: float | None) -> None:
    """Raise :class:`BadInput` naming the field of an empty query or inverted price bounds."""
    if q is not None and not words(q):
        raise BadInput.one("q", "must contain at least one letter or digit")
    if min_price is not None and max_price is not None and min_price > max_price:
        raise BadInput.one("max_price", f"must be at least min_price ({min_price:g})")


def _offset(cursor: str | None) -> tuple[str | None, int]:
    try:
        pinned, offset = decode_cursor(cursor)
    except ValueError as exc:
        raise BadInput.one("cursor", str(exc)) from None
    if pinned is not None and not pinned.startswith(CURSOR_PREFIX):
        raise BadInput.one("cursor", "not a cursor of /v1/items")
    if offset > MAX_OFFSET:
        raise BadInput.one("cursor", f"pages end at offset {MAX_OFFSET}")
    return (pinned[len(CURSOR_PREFIX):] if pinned else None), offset


@router.get(
    "/v1/items", response_model=ItemPage, responses=errors(422, 503),
    summary="Search the catalogue",
    description=(
        "Full-text search over titles and keywords (BM25, a title match ranks above a keyword match; "
        "one typo per word of 3+ letters and a prefix of the last word are tolerated), with facets: "
        "`category` (comma-separated, any case), price range (`min_price` ≤ price ≤ `max_price`). "
        "Ordered by relevance with `q`, else by price; `sort=price` / `price_desc` on request. "
        "`facets=category` counts the hits per category (text queries). Every page comes from one "
        "catalogue version (`catalogue_version`)."
    ),
)
async def search_items(
    svc: Svc,
    category: str | None = Query(None, min_length=1, max_length=640, examples=["comedy,drama"]),
    min_price: float | None = Query(None, ge=0, allow_inf_nan=False),
    max_price: float | None = Query(None, ge=0, allow_inf_nan=False),
    q: str | None = Query(None, max_length=MAX_QUERY_LEN, description="words to find", examples=["epic comdy"]),
    sort: Literal["relevance", "price", "price_desc"] | None = Query(None, description="default: relevance with q"),
    facets: Literal["category"] | None = Query(None, description="`category`: count the hits per category (with q)"),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_ITEMS_LIMIT),
    cursor: str | None = Query(None, max_length=MAX_CURSOR_LEN, description="`next_cursor` of the previous page"),
):
    categories = sorted({c.strip().lower() for c in category.split(",") if c.strip()}) if category else []
    try:
        check_filters(q, min_price, max_price)
        pinned, offset = _offset(cursor)
        index = await svc.catalogues.get(svc.store)
        check_categories(categories, index)
    except BadInput as exc:
        return exc.response()
    if index is None:
        return json_response({"items": [], "total": 0, "facets": None, "catalogue_version": None,
                              "next_cursor": None, "cursor_reset": False})
    reset = pinned is not None and pinned != index.version
    start = 0 if reset else offset
    if svc.search_http is not None:  # search.backend: opensearch, the index of the same version
        hits = await search_remote.search(
            svc.search_http, index_name(svc.settings.search.index_prefix, index.version), q, categories=categories,
            min_price=min_price, max_price=max_price, sort=sort, limit=limit, offset=start,
            facets=facets == "category")
    else:
        hits = index.search(q, categories=categories, min_price=min_price, max_price=max_price, sort=sort,
                            limit=limit, offset=start, facets=facets == "category")
    more = start + len(hits.items) < min(hits.total, MAX_OFFSET)
    nxt = encode_cursor(f"{CURSOR_PREFIX}{index.version}", start + limit) if more and hits.items else None
    return json_response({"items": hits.items, "total": hits.total,
                          "facets": {"category": hits.facets} if hits.facets is not None else None,
                          "catalogue_version": index.version, "next_cursor": nxt, "cursor_reset": reset})
