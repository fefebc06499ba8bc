"""Users: ``GET /v1/users/{user_id}/stats``, a user's recent activity counters."""

from __future__ import annotations

from fastapi import APIRouter, Path

from feature_store import online
from serving.errors import json_response
from serving.schemas import MAX_ID_LEN, UserStats, errors
from serving.state import Svc

router = APIRouter(tags=["users"])


@router.get("/v1/users/{user_id}/stats", response_model=UserStats, responses=errors(422, 503),
            summary="A user's recent activity counters")
async def user_stats(svc: Svc, user_id: str = Path(min_length=1, max_length=MAX_ID_LEN, examples=["u42"])):
    raw = await svc.store.execute("HGETALL", online.user_stats_key(user_id))
    stats: dict[str, float] = {}
    for name, value in zip(raw[::2], raw[1::2]):
        try:
            number = float(value)
        except ValueError:
            continue
        stats[name] = int(number) if number.is_integer() else number
    return json_response({"user_id": user_id, "stats": stats})
