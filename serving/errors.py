"""How the API answers errors: JSON bodies with ``error`` (and ``field`` for bad input).

* Bad query or path values: 422 naming the first bad field, every error listed
  (:class:`BadInput`, also raised by the hand-read feed queries).
* Redis down, hung or refusing (connection-class errors, the breaker open): 503 with
  ``Retry-After``; any other Redis error: 500. The same 503 when an OpenSearch search
  backend fails (``search unavailable``).
* Starlette's HTTP errors (404 of an unknown path, 405): ``{"error": detail}``.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.metrics import REDIS_ERRORS

RETRY_AFTER_S = 1
JSON = "application/json"


class ORJSONResponse(JSONResponse):
    """JSON rendered by orjson (FastAPI's own ORJSONResponse is deprecated)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``content`` rendered by orjson (handlers build their bodies as plain dicts)."""
    return Response(orjson.dumps(content), status_code=status_code, headers=headers, media_type=JSON)


def unavailable(body: dict[str, Any]) -> Response:
    """A 503 that tells the client when to retry."""
    return json_response(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


class BadInput(Exception):
    """Bad query or path values: a 422 naming the first bad field, every error listed."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(errors[0]["message"])
        self.errors = errors

    @classmethod
    def one(cls, field: str, message: str, location: str = "query") -> "BadInput":
        return cls([{"field": field, "location": location, "message": message}])

    def response(self) -> Response:
        first = self.errors[0]
        return json_response({"error": "invalid request", "field": first["field"], "message": first["message"],
                              "errors": self.errors}, status_code=422)


def _validation_body(exc: RequestValidationError) -> BadInput:
    found = []
    for e in exc.errors():
        loc = e.get("loc") or ("request",)
        found.append({"field": str(loc[-1]), "location": str(loc[0]), "message": e.get("msg", "")})
    return BadInput(found or [{"field": "request", "location": "request", "message": "invalid request"}])


def count_redis_error(request: Request, exc: Exception) -> None:
    request.app.state.services.metrics.inc(*REDIS_ERRORS, kind=type(exc).__name__)


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    return _validation_body(exc).response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return json_response({"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _redis_down(request: Request, exc: redis.exceptions.RedisError) -> Response:
    count_redis_error(request, exc)
    return unavailable({"error": "redis unavailable", "detail": str(exc), "retry_after_s": RETRY_AFTER_S})


async def _search_down(request: Request, exc: httpx.HTTPError) -> Response:
    return unavailable({"error": "search unavailable", "detail": str(exc) or type(exc).__name__,
                        "retry_after_s": RETRY_AFTER_S})


async def _redis_error(request: Request, exc: redis.exceptions.RedisError) -> Response:
    count_redis_error(request, exc)
    return json_response({"error": "redis error", "detail": str(exc)}, status_code=500)


def install(app: FastAPI) -> None:
    """Register the API's exception handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)
    app.add_exception_handler(redis.exceptions.RedisError, _redis_error)
    app.add_exception_handler(httpx.HTTPError, _search_down)  # search.backend: opensearch
