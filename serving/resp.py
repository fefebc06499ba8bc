"""A small asyncio Redis client for the API's reads: one connection, pipelined, bounded.

Why not redis-py here: its sync client blocks the event loop for each round trip, and
its asyncio client costs more CPU per call than a whole FastAPI request; with either, a
feed lookup took about twice the server CPU it takes with this client (docs/serving.md).
This client writes the commands of all concurrent requests on one connection, one write
per event-loop turn, and resolves the replies in order.

It speaks RESP2 and decodes every bulk string as UTF-8 (like redis-py's
``decode_responses=True``) and raises redis-py's exception classes, so callers handle
errors the same way:

* ``redis.exceptions.TimeoutError`` when the oldest command waits longer than
  ``timeout_s`` (the connection is then dropped, failing every command on it);
* ``redis.exceptions.ConnectionError`` when Redis cannot be reached or goes away;
  the next call connects again;
* ``redis.exceptions.ResponseError`` for other error replies, as the redis-py subclass its
  parser picks by the reply's first word (``NoScriptError``, ``ReadOnlyError``, ...);
* a ``ConnectionError`` as well for the replies that say the server cannot serve now
  (``LOADING`` its data after a restart, ``BUSY`` running a script, ``READONLY`` replica,
  ``MASTERDOWN``): the caller fails fast and tries again later, as when Redis is down, so
  the API answers 503 and its circuit breaker opens.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rex

Reply = Any


class _Incomplete(Exception):
    """The buffer ends inside a reply."""


class BusyError(rex.ResponseError, rex.ConnectionError):
    """-BUSY: a script or function is running; redis-py has no class for it."""


class ReadOnlyError(rex.ReadOnlyError, rex.ConnectionError):
    """-READONLY: a replica, which refuses writes (and a script that writes)."""


class MasterDownError(rex.MasterDownError, rex.ConnectionError):
    """-MASTERDOWN: a replica cut off from its master, serving no stale data."""


# The first word of an error reply -> its class: redis-py's (redis/_parsers/base.py), except
# that the server-state errors are ConnectionErrors too (rex.BusyLoadingError already is).
ERROR_CLASSES: dict[str, type[rex.RedisError]] = {
    "LOADING": rex.BusyLoadingError,
    "BUSY": BusyError,
    "READONLY": ReadOnlyError,
    "MASTERDOWN": MasterDownError,
    "NOSCRIPT": rex.NoScriptError,
    "OOM": rex.OutOfMemoryError,
    "EXECABORT": rex.ExecAbortError,
    "NOAUTH": rex.AuthenticationError,
    "WRONGPASS": rex.AuthenticationError,
    "NOPERM": rex.NoPermissionError,
    "TRYAGAIN": rex.TryAgainError,
    "CLUSTERDOWN": rex.ClusterDownError,
    "CROSSSLOT": rex.ClusterCrossSlotError,
}


def error_class(message: str) -> type[rex.RedisError]:
    """The exception class of an error reply (``message`` without the leading ``-``)."""
    code = message.split(" ", 1)[0]
    if code == "ERR" and "max number of clients reached" in message:
        return rex.ConnectionError  # as redis-py: the server is full, not the command wrong
    return ERROR_CLASSES.get(code, rex.ResponseError)


class _ErrorReply:
    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def exception(self) -> rex.RedisError:
        return error_class(self.message)(self.message)


def encode(args: Sequence[Any]) -> bytes:
    """One command in the RESP wire format."""
    if any(type(a) is bytes for a in args):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)
    parts = [f"*{len(args)}\r\n"]
    for arg in args:
        text = arg if type(arg) is str else str(arg)
        parts.append(f"${len(text) if text.isascii() else len(text.encode('utf-8'))}\r\n{text}\r\n")
    return "".join(parts).encode("utf-8")


def parse(buf: bytes, pos: int = 0) -> tuple[Reply, int]:
    """The reply starting at ``pos`` and where the next one starts; ``_Incomplete`` if cut short."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1:end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if stop + 2 > len(buf):
            raise _Incomplete
        return buf[end + 2:stop].decode("utf-8", "replace"), stop + 2
    if kind == 42:  # * array
        count = int(buf[pos + 1:end])
        if count < 0:
            return None, end + 2
        pos = end + 2
        items = []
        append = items.append
        for _ in range(count):
            if buf[pos:pos + 1] == b"$":  # bulk strings inline: most array items are
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    raise _Incomplete
                size = int(buf[pos + 1:end])
                if size < 0:
                    append(None)
                    pos = end + 2
                    continue
                stop = end + 2 + size
                if stop + 2 > len(buf):
                    raise _Incomplete
                append(buf[end + 2:stop].decode("utf-8", "replace"))
                pos = stop + 2
            else:
                item, pos = parse(buf, pos)
                append(item)
        return items, pos
    if kind == 58:  # : integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 43:  # + simple string
        return buf[pos + 1:end].decode("utf-8", "replace"), end + 2
    if kind == 45:  # - error
        return _ErrorReply(buf[pos + 1:end].decode("utf-8", "replace")), end + 2
    raise rex.InvalidResponse(f"unexpected RESP type byte {bytes([kind])!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[asyncio.Future, float]] = deque()
        self.buf = b""
        self.closed = False
        self.outgoing: list[bytes] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failure: Exception | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()

    def send(self, data: bytes, count: int) -> list[asyncio.Future]:
        """Queue ``data`` (``count`` commands); one write per event-loop turn carries every
        command queued in it, so concurrent requests share the system calls."""
        loop = self.loop
        now = time.monotonic()
        futures = [loop.create_future() for _ in range(count)]
        self.pending.extend([(f, now) for f in futures])
        if not self.outgoing:
            loop.call_soon(self._flush)
        self.outgoing.append(data)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout_s, self._check)
        return futures

    def _flush(self) -> None:
        data, self.outgoing = self.outgoing, []
        if not self.closed:
            self.transport.write(data[0] if len(data) == 1 else b"".join(data))

    def _check(self) -> None:
        self._watchdog = None
        if not self.pending or self.closed:
            return
        waited = time.monotonic() - self.pending[0][1]
        if waited >= self.timeout_s:
            self._fail(rex.TimeoutError(f"Redis did not answer within {self.timeout_s:g}s"))
            self.transport.abort()
            return
        self._watchdog = self.loop.call_later(self.timeout_s - waited, self._check)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        pending = self.pending
        try:
            while pos < len(buf):
                reply, pos = parse(buf, pos)
                future = pending.popleft()[0]
                if future.done():
                    continue
                if isinstance(reply, _ErrorReply):
                    future.set_exception(reply.exception())
                else:
                    future.set_result(reply)
        except _Incomplete:
            pass
        except (IndexError, ValueError, rex.InvalidResponse) as exc:  # a reply with no command, or garbage
            self._fail(rex.ConnectionError(f"bad reply from Redis: {exc}"))
            self.transport.abort()
            return
        self.buf = buf[pos:]

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        self.failure = exc
        while self.pending:
            future = self.pending.popleft()[0]
            if not future.done():
                future.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._fail(self.failure or rex.ConnectionError(f"connection to Redis lost: {exc or 'closed by server'}"))


class Script:
    """A Lua script run by SHA1 (loaded on first use, and again after a Redis restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


class AsyncRedis:
    """Commands over one lazily opened, pipelined connection; see the module docstring."""

    def __init__(self, host: str, port: int, password: str | None = None, db: int = 0,
                 timeout_s: float = 0.25, username: str | None = None) -> None:
        self.host, self.port = host, port
        self.username, self.password, self.db = username, password, db
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    @classmethod
    def from_settings(cls, settings) -> "AsyncRedis":
        rs = settings.redis
        return cls(rs.host, rs.port, rs.password or None, rs.db, rs.socket_timeout_s, rs.username or None)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self.timeout_s), self.host, self.port),
                self.timeout_s)
        except asyncio.TimeoutError:
            raise rex.TimeoutError(f"timed out connecting to Redis at {self.host}:{self.port}") from None
        except OSError as exc:
            raise rex.ConnectionError(f"cannot connect to Redis at {self.host}:{self.port}: {exc}") from None
        setup = []
        if self.password:
            # an ACL user when one is named, else the default user (requirepass)
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        if setup:
            futures = protocol.send(b"".join(encode(c) for c in setup), len(setup))
            try:
                for future in futures:
                    await future
            except rex.RedisError as exc:
                protocol.transport.abort()
                if isinstance(exc, rex.ConnectionError):
                    raise  # a wrong password, or a server still LOADING: as they are
                raise rex.AuthenticationError(str(exc)) from None
        return protocol

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        loop = asyncio.get_running_loop()
        if protocol is not None and not protocol.closed:
            if protocol.loop is loop:
                return protocol
            # Made on another event loop (a test client per request): unusable here.
            self._protocol = None
            protocol.closed = True
        if self._connecting is not None and self._connecting.get_loop() is not loop:
            self._connecting = None
        if self._connecting is None:
            self._connecting = loop.create_task(self._connect())
        connecting = self._connecting
        try:
            protocol = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._protocol = protocol
        return protocol

    async def execute(self, *args: Any) -> Reply:
        """One command; its decoded reply."""
        protocol = await self._connection()
        (future,) = protocol.send(encode(args), 1)
        return await future

    async def pipeline(self, commands: Sequence[Sequence[Any] | bytes]) -> list[Reply]:
        """Several commands in one write; their replies in order (the first error is raised). A
        command may be given already encoded (:func:`encode`'s bytes), as a cached one is."""
        if not commands:
            return []
        protocol = await self._connection()
        data = b"".join([c if type(c) is bytes else encode(c) for c in commands])
        futures = protocol.send(data, len(commands))
        # Replies come in order, so once the last one is in, all are: one wait, not one per
        # command (py-spy: part of a filtered feed's pipeline cost; docs/serving.md, "Filtered
        # feeds: items built once").
        try:
            await futures[-1]
        except rex.RedisError:
            pass  # the first failed command's error is raised below, as its reply comes first
        return [f.result() for f in futures]

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any] = ()) -> Reply:
        """Run ``script``; loads it first when Redis does not know it yet."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.execute(*command)
        except rex.NoScriptError:
            await self.execute("SCRIPT", "LOAD", script.source)
            return await self.execute(*command)

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            try:
                protocol.transport.close()
            except RuntimeError:  # its event loop is already closed
                pass
