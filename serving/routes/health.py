"""Operations: ``/healthz`` (the process is alive) and ``/readyz`` (Redis answers)."""

from __future__ import annotations

import redis
from fastapi import APIRouter

from serving.errors import json_response, unavailable
from serving.metrics import REDIS_ERRORS
from serving.state import Svc

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz():
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Redis answers; 503 naming the dependency otherwise")
async def readyz(svc: Svc):
    try:
        await svc.store.execute("PING")
    except redis.exceptions.RedisError as exc:
        svc.metrics.inc(*REDIS_ERRORS, kind=type(exc).__name__)
        return unavailable({"status": "unavailable", "error": "redis unavailable", "dependency": "redis",
                            "detail": str(exc)})
    return json_response({"status": "ready", "redis": "ok", "kafka": svc.publisher.state,
                          "served_log": svc.served.state})
