"""OpenAPI documentation of the feed API: response models, examples, parameters.

Handlers build their JSON directly (orjson); these models document it, and the
tests check that the responses match them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from feedloop.events import (
    EVENT_TYPES,
    INT32_MAX,
    MAX_ID_LEN as EVENT_ID_FIELD_LEN,
    MIN_TS_MS,
    SCHEMA_VERSION,
    UUID_PATTERN,
)

MAX_ID_LEN = 128
MAX_LIMIT = 200
DEFAULT_LIMIT = 20
MAX_CURSOR_LEN = 512
MAX_CATEGORIES = 10  # ?category=a,b on the feeds
MAX_CATEGORY_LEN = 64
MAX_EXCLUDE = 100  # ?exclude=i1,i2 on the feeds


class FeedItem(BaseModel):
    item_id: str
    score: float | None = Field(description="ranking score; null when the publisher gave none")
    position: int = Field(description="0-based index of the item in the whole feed")
    source: str | None = Field(None, description="category-filtered pages: the source this item came from")


class FeedPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user_id": "u42",
        "source": "segment",
        "segment": "F|25-34|comedy",
        "window": None,
        "feed_id": "seg:F|25-34|comedy@1767225600000",
        "model_version": "7",
        "generated_at": "2026-01-01T00:00:00.000Z",
        "generated_at_ms": 1767225600000,
        "publication": "1767225600000",
        "items": [{"item_id": "i981", "score": 0.83, "position": 0}, {"item_id": "i17", "score": 0.79, "position": 2}],
        "next_cursor": "MzpzZWc6RnwyNS0zNHxjb21lZHlAMTc2NzIyNTYwMDAwMA",
        "cursor_reset": False,
    }]})

    user_id: str | None = Field(None, description="present on user feeds")
    source: Literal["user", "segment", "trending", "popular"]
    segment: str | None = Field(None, description="the segment whose feed was served (source=segment)")
    window: str | None = Field(None, description="trending window (source=trending)")
    feed_id: str = Field(description="report this back in events as feed_id")
    model_version: str | None = Field(description="model version that made the feed; null for live rankings")
    generated_at: str
    generated_at_ms: int
    publication: str | None
    items: list[FeedItem]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")
    cursor_reset: bool = Field(
        description="the cursor's feed or publication is no longer current: this page starts again at 0")
    categories: list[str] | None = Field(None, description="category-filtered pages: the categories asked for")
    sources: list[str] | None = Field(None, description="category-filtered pages: the sources of its items, in order")


class Ranking(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "source": "trending", "window": "1m", "generated_at": "2026-01-01T00:00:00.000Z",
        "generated_at_ms": 1767225600000, "items": [{"item_id": "i5", "score": 31.0, "position": 0}],
    }]})

    source: Literal["trending", "popular"]
    window: str | None = None
    generated_at: str
    generated_at_ms: int
    items: list[FeedItem]


class UserStats(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"user_id": "u42", "stats": {"click": 3, "view": 12}}]})

    user_id: str
    stats: dict[str, float] = Field(description="counters by event type over the last minutes; empty when idle")


class Accepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"accepted": 2}]})

    accepted: int


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"error": "invalid request", "field": "limit", "message": "Input should be less than or equal to 200"},
        {"error": "invalid event", "index": 1, "field": "ts", "message": "must be an integer (ms since epoch)"},
        {"error": "redis unavailable", "detail": "Timeout connecting to server", "retry_after_s": 1},
    ]})

    error: str
    field: str | None = None


EVENT_EXAMPLE = {
    "event_id": "4b6f3c1e-8a0e-4d54-9a51-3c2d5f0e7a11", "event_type": "click", "user_id": "u42",
    "item_id": "i981", "ts": 1767225600000, "feed_id": "seg:F|25-34|comedy@1767225600000",
    "position": 0, "model_version": "7", "schema_version": 1,
}
_ID = {"type": "string", "minLength": 1, "maxLength": EVENT_ID_FIELD_LEN}
# Event v1 as feedloop.events validates it: optional fields may be absent or null. The rules
# that tie fields to the event type (item_id unless search, dwell_ms for dwell, a non-blank
# query for search) and ts at most a day ahead are left to the validator, which answers 422
# naming the field.
EVENT_SCHEMA = {
    "type": "object",
    "required": ["event_id", "event_type", "user_id", "ts"],
    "properties": {
        "event_id": {"type": "string", "pattern": f"^{UUID_PATTERN}$", "description": "uuid; makes retries idempotent"},
        "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
        "user_id": _ID,
        "ts": {"type": "integer", "minimum": MIN_TS_MS, "description": "event time, ms since epoch"},
        "item_id": {**_ID, "type": ["string", "null"], "description": "required unless event_type is search"},
        "dwell_ms": {"type": ["integer", "null"], "minimum": 0, "description": "required for dwell events"},
        "query": {"type": ["string", "null"], "description": "required (not blank) for search events"},
        "session_id": {**_ID, "type": ["string", "null"]},
        "feed_id": {**_ID, "type": ["string", "null"]},
        "position": {"type": ["integer", "null"], "minimum": 0, "maximum": INT32_MAX},
        "model_version": {**_ID, "type": ["string", "null"]},
        "schema_version": {"type": ["integer", "null"], "enum": [SCHEMA_VERSION, None]},
    },
    "additionalProperties": True,  # unknown fields are kept in a map, not dropped
}
EVENTS_BODY = {
    "required": True,
    "content": {"application/json": {
        "schema": {"oneOf": [
            {"type": "array", "minItems": 1, "items": EVENT_SCHEMA},
            {"type": "object", "required": ["events"],
             "properties": {"events": {"type": "array", "minItems": 1, "items": EVENT_SCHEMA}}},
        ]},
        "examples": {
            "list": {"summary": "a JSON list of events", "value": [EVENT_EXAMPLE]},
            "wrapped": {"summary": "an object with an events list", "value": {"events": [EVENT_EXAMPLE]}},
        },
    }},
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}




class CatalogueItem(BaseModel):
    item_id: str
    title: str
    category: str
    price: float | None
    keywords: list[str]
    created_at: int | None = Field(description="ms since epoch")


class ItemPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "items": [{"item_id": "i000981", "title": "Epic Comedy #981", "category": "comedy", "price": 12.5,
                   "keywords": ["epic", "family"], "created_at": 1767225600000}],
        "total": 1,
        "facets": {"category": {"comedy": 1}},
        "catalogue_version": "1767225600000",
        "next_cursor": None,
        "cursor_reset": False,
    }]})

    items: list[CatalogueItem] = Field(description="by relevance with q (else by price), or as `sort` asks")
    total: int = Field(description="hits in all (pages end at offset 10,000)")
    facets: dict[str, dict[str, int]] | None = Field(
        description="with `facets=category` and `q`: hits per category, before the category filter")
    catalogue_version: str | None = Field(description="the catalogue version searched; null until one is published")
    next_cursor: str | None = Field(description="pass as ?cursor= (with the same filters) for the next page")
    cursor_reset: bool = Field(description="the cursor's catalogue was replaced: this page starts again at 0")


# Parameters of the feed endpoints, which read the query by hand (see app.py).
def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, example: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "example": example,
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "title": name}}


LIMIT_PARAM = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                     "items per page")
CURSOR_PARAM = _query("cursor", {"type": "string", "maxLength": MAX_CURSOR_LEN},
                      "`next_cursor` of the previous page")
CATEGORY_PARAM = _query("category", {"type": "string", "example": "comedy,drama"},
                        f"only items of these categories (comma-separated, any case, at most {MAX_CATEGORIES}); "
                        "filled from the segment feed, then trending and popular in the categories")
EXCLUDE_PARAM = _query("exclude", {"type": "string", "example": "i981,i17"},
                       f"item ids never to show (comma-separated, at most {MAX_EXCLUDE})")
USER_FEED_PARAMS = [_path("user_id", "u42"), LIMIT_PARAM, CURSOR_PARAM, CATEGORY_PARAM, EXCLUDE_PARAM]
SEGMENT_FEED_PARAMS = [_path("segment", "F|25-34|comedy"), LIMIT_PARAM, CURSOR_PARAM, CATEGORY_PARAM, EXCLUDE_PARAM]
