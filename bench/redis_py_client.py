"""bench.serving's variant of the API: its Redis reads through redis-py's asyncio client, against `serving/resp.py`.

Same interface as :class:`serving.resp.AsyncRedis` (``execute``, ``pipeline``, ``evalsha``,
``close``) over one ``redis.asyncio.Redis`` with its connection pool; redis-py parses
replies with hiredis when the ``hiredis`` package is importable, in pure Python otherwise.

    python -m bench.serving --app bench.redis_py_client:app_from_settings

(docs/serving.md has the figures). Not used by the running API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.exceptions as rex
from fastapi import FastAPI

from feedloop.settings import get_settings
from serving.resp import Script


class RedisPyAsync:
    """:class:`serving.resp.AsyncRedis`'s interface over ``redis.asyncio.Redis``."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings) -> "RedisPyAsync":
        rs = settings.redis
        return cls(redis.asyncio.Redis(
            host=rs.host, port=rs.port, username=rs.username or None, password=rs.password or None, db=rs.db,
            socket_timeout=rs.socket_timeout_s, socket_connect_timeout=rs.socket_timeout_s,
            decode_responses=True, retry_on_timeout=False))

    async def execute(self, *args: Any) -> Any:
        return await self.client.execute_command(*args)

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except rex.NoScriptError:
            await self.client.script_load(script.source)
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)

    async def close(self) -> None:
        await self.client.aclose()


def app_from_settings() -> FastAPI:
    """Factory for uvicorn: the API with this client instead of serving/resp.py."""
    from serving.app import create_app

    settings = get_settings()
    return create_app(settings, redis_client=RedisPyAsync.from_settings(settings))
