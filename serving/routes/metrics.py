"""Operations: ``/metrics``, the Prometheus text format, summed over the workers (see :mod:`serving.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from serving.metrics import CONTENT_TYPE
from serving.state import Svc

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
async def metrics_text(svc: Svc):
    svc.served.poll()  # this worker's pending delivery reports, into the counts
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)
