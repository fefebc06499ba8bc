"""`feedloop dashboard`: one page that shows the loop moving, on ``bind_host:dashboard.port``.

A Starlette app: ``/`` the page (``dashboard/static/``: HTML, a small script that asks for
``/api/snapshot`` every ``dashboard.refresh_s`` seconds and draws with SVG), ``/api/snapshot``
the figures as JSON (:class:`dashboard.collect.Collector`), ``/healthz`` for the supervisor's
health check. Every route but ``/healthz`` asks for HTTP basic auth with
``dashboard.admin_user`` / ``dashboard.admin_password`` (generated under var/secrets, printed
by ``feedloop demo``), as MLflow's UI does.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dashboard.collect import Collector
from feedloop.settings import Settings, get_settings

STATIC = Path(__file__).resolve().parent / "static"
OPEN_PATHS = ("/healthz",)


class BasicAuth:
    """HTTP basic auth on every path but :data:`OPEN_PATHS`; refuses all when no password is set."""

    def __init__(self, app, user: str, password: str) -> None:
        self.app = app
        self.user = user.encode()
        self.password = password.encode()

    def allowed(self, header: bytes | None) -> bool:
        if not self.password or not header or not header.lower().startswith(b"basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        return secrets.compare_digest(user, self.user) & secrets.compare_digest(password, self.password)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            if not self.allowed(dict(scope["headers"]).get(b"authorization")):
                response = PlainTextResponse("login required (dashboard.admin_user / dashboard.admin_password)", 401,
                                             headers={"WWW-Authenticate": 'Basic realm="feedloop dashboard"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings, collector: Collector | None = None) -> BasicAuth:
    """The dashboard app; its collector's threads start with the app and stop with it."""
    collector = collector or Collector(settings)

    @asynccontextmanager
    async def lifespan(app):
        collector.start()
        yield
        collector.stop()

    async def page(request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def api_snapshot(request) -> Response:
        body = collector.snapshot()
        body["refresh_s"] = settings.dashboard.refresh_s
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def healthz(request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/", page), Route("/api/snapshot", api_snapshot), Route("/healthz", healthz),
                            Mount("/static", StaticFiles(directory=STATIC), name="static")], lifespan=lifespan)
    app.state.collector = collector
    return BasicAuth(app, settings.dashboard.admin_user, settings.dashboard.admin_password)


def main(args=None) -> int:
    """``feedloop dashboard`` (the supervised service ``dashboard``)."""
    import os

    import uvicorn

    # a panel whose MLflow is down says so within seconds, instead of MLflow's client retrying for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    settings = get_settings()
    print(f"dashboard on http://{settings.bind_host}:{settings.dashboard.port} "
          f"(login {settings.dashboard.admin_user})", flush=True)
    uvicorn.run(create_app(settings), host=settings.bind_host, port=settings.dashboard.port, access_log=False,
                timeout_graceful_shutdown=5)
    return 0
