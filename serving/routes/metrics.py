"""Operations: ``/metrics``, the Prometheus text format (see :mod:`serving.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from serving.state import Svc

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
async def metrics_text(svc: Svc):
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)
