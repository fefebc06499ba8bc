"""Items: ``GET /v1/items``, catalogue search (the search itself is :mod:`serving.items`)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from serving import items as catalogue_search
from serving.errors import BadInput, json_response
from serving.pages import decode_cursor, encode_cursor
from serving.schemas import DEFAULT_LIMIT, MAX_CURSOR_LEN, ItemPage, errors
from serving.state import Svc

MAX_ITEMS_LIMIT = 100
CURSOR_PREFIX = "items@"  # an items cursor pins the catalogue version, not a feed

router = APIRouter(tags=["items"])


@router.get(
    "/v1/items", response_model=ItemPage, responses=errors(422, 503),
    summary="Search the catalogue",
    description=(
        "Items by `category`, price range (`min_price` ≤ price ≤ `max_price`) and text: `q` matches "
        "items whose title or keywords contain each of its words (any case). Cheapest first. With `q`, "
        "at most 2000 candidates are read per request, so a page may be short and still have a "
        "`next_cursor`."
    ),
)
async def search_items(
    svc: Svc,
    category: str | None = Query(None, min_length=1, max_length=64, examples=["comedy"]),
    min_price: float | None = Query(None, ge=0, allow_inf_nan=False),
    max_price: float | None = Query(None, ge=0, allow_inf_nan=False),
    q: str | None = Query(None, min_length=1, max_length=100, description="words to find", examples=["epic"]),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_ITEMS_LIMIT),
    cursor: str | None = Query(None, max_length=MAX_CURSOR_LEN, description="`next_cursor` of the previous page"),
):
    if min_price is not None and max_price is not None and min_price > max_price:
        return BadInput.one("max_price", f"must be at least min_price ({min_price:g})").response()
    try:
        pinned, offset = decode_cursor(cursor)
    except ValueError as exc:
        return BadInput.one("cursor", str(exc)).response()
    if pinned is not None and not pinned.startswith(CURSOR_PREFIX):
        return BadInput.one("cursor", "not a cursor of /v1/items").response()
    page = await catalogue_search.search(
        svc.store, category=category, min_price=min_price, max_price=max_price, text=q, limit=limit,
        offset=offset, pinned=pinned[len(CURSOR_PREFIX):] if pinned else None,
    )
    nxt = encode_cursor(f"{CURSOR_PREFIX}{page.version}", page.next_offset) if page.next_offset is not None else None
    return json_response({"items": page.items, "catalogue_version": page.version, "next_cursor": nxt,
                          "cursor_reset": page.reset, "scanned": page.scanned})
