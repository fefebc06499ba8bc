"""The API's Redis client on a Redis Cluster (``redis.cluster: true``): redis-py's asyncio
``RedisCluster`` behind :class:`serving.resp.AsyncRedis`'s interface.

:mod:`serving.resp` speaks to one server over one connection and does not follow
``MOVED``/``ASK`` redirections, so on a cluster the API uses this client instead. It costs
more CPU per request than :mod:`serving.resp` (redis-py's asyncio client; the comparison is
in docs/serving.md); every call of the API's :class:`serving.store.FeedStore` touches keys of
one hash tag, so each goes to one node (a pipeline, to one per node). docs/cluster.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.exceptions as rex

from serving.resp import Script

# Replies the API reads as RESP gives them (as serving/resp.py returns every reply), where
# redis-py would make them a dict, a (cursor, dict) pair or (member, score) pairs.
RAW_REPLIES = ("HGETALL", "HSCAN", "ZREVRANGE")


class ClusterRedis:
    """:class:`serving.resp.AsyncRedis`'s interface over ``redis.asyncio.RedisCluster``."""

    def __init__(self, client) -> None:
        self.client = client
        for name in RAW_REPLIES:  # the client's own dict, shared with its nodes and pipelines
            client.response_callbacks.pop(name, None)

    @classmethod
    def from_settings(cls, settings) -> "ClusterRedis":
        from redis.asyncio.cluster import RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        rs = settings.redis
        return cls(RedisCluster(
            host=rs.host, port=rs.port, username=rs.username or None, password=rs.password or None,
            socket_timeout=rs.socket_timeout_s, socket_connect_timeout=rs.socket_timeout_s,
            retry=Retry(NoBackoff(), 1), decode_responses=True, protocol=2))  # RESP2, as serving/resp.py

    async def execute(self, *args: Any) -> Any:
        return await self.client.execute_command(*args)

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except rex.NoScriptError:  # loaded on the node that answered NOSCRIPT (a new or failed-over one)
            await self.client.eval(script.source, len(keys), *keys, *args)
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)

    async def close(self) -> None:
        await self.client.aclose()
