"""The app's shared state, one object on ``app.state.services``, and the dependency that reads it.

Routes never close over the clients: they ask for :data:`Svc` (a FastAPI dependency)
or, in the two hot feed handlers that skip FastAPI's dependency machinery (see
:func:`serving.app.serve_plain`), call :func:`services` on the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Request

from feedloop.settings import Settings
from serving.catalogues import Catalogues
from serving.kafka_producer import EventPublisher
from serving.metrics import Metrics
from serving.served_log import ServedLog
from serving.store import FeedStore


@dataclass(frozen=True)
class Services:
    """What the routes share within one worker process (each worker builds its own)."""

    settings: Settings
    store: FeedStore  # every Redis read, behind the Redis breaker
    publisher: EventPublisher  # events to Kafka, acknowledged, behind the Kafka breaker
    served: ServedLog  # served-feed records to Kafka, fire-and-forget
    metrics: Metrics
    catalogues: Catalogues  # this worker's search index of the current catalogue
    search_http: httpx.AsyncClient | None = None  # search.backend: opensearch (serving/search_remote.py)


def services(request: Request) -> Services:
    """The :class:`Services` of the app serving ``request``."""
    return request.app.state.services


Svc = Annotated[Services, Depends(services)]
