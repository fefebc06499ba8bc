"""Events: ``POST /v1/events``, a batch of v1 events to Kafka, behind an API key.

Everything is checked before anything is written: the key (401 missing, 403 wrong or
none configured), the body's size (413) and JSON (400), its shape (422 ``events``),
then every event (422 naming the first bad one by ``index`` and ``field``). A valid
batch is written by :class:`serving.kafka_producer.EventPublisher` and answered 202
once the broker acknowledged every record, or 503 when Kafka did not take it in time.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from fastapi import APIRouter, Request, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from feedloop.events import MAX_EVENT_BYTES, validate_dict
from serving.errors import RETRY_AFTER_S, json_response, unavailable
from serving.kafka_producer import KafkaUnavailable
from serving.metrics import EVENTS, KAFKA_ERRORS
from serving.pages import now_ms
from serving.schemas import EVENTS_BODY, Accepted, errors
from serving.state import Svc

MAX_REJECTIONS_LISTED = 20

router = APIRouter(tags=["events"])
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="settings.api.api_key")


def check_events(events: list[Any]) -> list[dict[str, Any]]:
    """Every bad event as ``{index, field, message}``, in order; empty when all are valid."""
    now = now_ms()
    rejected = []
    for index, event in enumerate(events):
        result = validate_dict(event, now)
        if not isinstance(result, dict):
            rejected.append({"index": index, "field": result.field, "message": result.message})
        elif len(orjson.dumps(event)) > MAX_EVENT_BYTES:
            rejected.append({"index": index, "field": "record", "message": f"larger than {MAX_EVENT_BYTES} bytes"})
    return rejected


def _refused_key(given: str | None, expected: str) -> Response | None:
    """The 401/403 for a missing or wrong key (also when none is configured), else None."""
    if not given:
        return json_response({"error": "missing API key", "field": "X-API-Key"}, status_code=401,
                             headers={"WWW-Authenticate": "ApiKey"})
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return json_response({"error": "invalid API key", "field": "X-API-Key"}, status_code=403)
    return None


async def _read_events(request: Request, limit: int) -> list[Any] | Response:
    """The body's events (a list, or ``{"events": [...]}``), or the 413/400/422 that refuses it."""
    too_large = json_response({"error": f"body larger than {limit} bytes", "field": "body"}, status_code=413)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    try:
        payload = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        return json_response({"error": "body is not valid JSON", "field": "body", "message": str(exc)},
                             status_code=400)
    events = payload.get("events") if isinstance(payload, dict) else payload
    if not isinstance(events, list) or not events:
        return json_response({"error": "invalid request", "field": "events",
                              "message": "expected a non-empty JSON list of events, or {\"events\": [...]}"},
                             status_code=422)
    return events


@router.post(
    "/v1/events", status_code=202, response_model=Accepted,
    responses=errors(400, 401, 403, 413, 422, 503),
    summary="Collect a batch of events",
    description=(
        "A JSON list of v1 events, or `{\"events\": [...]}`. All are checked first: the first bad "
        "one answers 422 with its `index` and `field`, and nothing is written. Valid batches are "
        "written to Kafka (key = user_id) and acknowledged by the broker before the 202. A 503 "
        "means Kafka did not take the batch in time: retry it whole (event_id makes it idempotent)."
    ),
    openapi_extra={"requestBody": EVENTS_BODY},
)
async def post_events(request: Request, svc: Svc, api_key: str | None = Security(api_key_header)):
    refused = _refused_key(api_key, svc.settings.api.api_key)
    if refused is not None:
        return refused
    events = await _read_events(request, svc.settings.api.max_body_bytes)
    if isinstance(events, Response):
        return events
    rejected = check_events(events)
    if rejected:
        svc.metrics.inc(*EVENTS, len(events), outcome="rejected")
        return json_response({"error": "invalid event", **rejected[0], "rejected": rejected[:MAX_REJECTIONS_LISTED],
                              "rejected_count": len(rejected)}, status_code=422)
    try:
        accepted = await run_in_threadpool(svc.publisher.publish, events)
    except KafkaUnavailable as exc:
        svc.metrics.inc(*KAFKA_ERRORS)
        return unavailable({"error": "kafka unavailable", "detail": str(exc), "retry_after_s": RETRY_AFTER_S})
    svc.metrics.inc(*EVENTS, accepted, outcome="accepted")
    return json_response({"accepted": accepted}, status_code=202)
