"""The API's Redis client maps error replies as redis-py does, and the server-state ones to 503s.

A small RESP server in a thread answers every command with one fixed error reply, over a
real socket: the client, the circuit breaker and the app's error handlers see exactly what
a Redis in that state sends.
"""

from __future__ import annotations

import asyncio
import socketserver
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis.exceptions as rex
from redis._parsers.base import BaseParser

from feedloop.settings import Settings
from serving import resp
from serving.app import create_app
from serving.store import FeedStore, RedisUnavailable

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient asks for httpx2; httpx works
    from fastapi.testclient import TestClient

# What a Redis that cannot serve now answers (redis/src/server.c, replication.c, script.c).
SERVER_STATE_ERRORS = [
    "LOADING Redis is loading the dataset in memory",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "READONLY You can't write against a read only replica.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
]
OTHER_ERRORS = [
    "ERR wrong number of arguments for 'get' command",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "NOSCRIPT No matching script. Please use EVAL.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "EXECABORT Transaction discarded because of previous errors.",
    "NOAUTH Authentication required.",
    "WRONGPASS invalid username-password pair or user is disabled.",
    "NOPERM this user has no permissions to run the 'get' command",
    "ERR max number of clients reached",
]


@pytest.mark.parametrize("message", SERVER_STATE_ERRORS + OTHER_ERRORS)
def test_each_error_reply_has_redis_pys_class(message):
    ours = resp.error_class(message)
    theirs = type(BaseParser.parse_error(message))
    assert issubclass(ours, theirs), f"{message!r}: {ours.__name__} is not a {theirs.__name__}"


@pytest.mark.parametrize("message", SERVER_STATE_ERRORS)
def test_server_state_errors_are_connection_errors(message):
    assert issubclass(resp.error_class(message), rex.ConnectionError)


@pytest.mark.parametrize("message", [m for m in OTHER_ERRORS if not m.startswith(("NOAUTH", "WRONGPASS", "ERR max"))])
def test_command_errors_are_not_connection_errors(message):
    assert not issubclass(resp.error_class(message), rex.ConnectionError)


class _ErrorServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, reply: str) -> None:
        super().__init__(("127.0.0.1", 0), _AnswerEveryCommand)
        self.reply = f"-{reply}\r\n".encode()
        self.received: list[list[str]] = []

    @property
    def commands(self) -> int:
        return len(self.received)


class _AnswerEveryCommand(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        buf = b""
        while data := self.request.recv(65536):
            buf += data
            while True:
                try:
                    command, used = resp.parse(buf)  # a command is a RESP array, as a reply can be
                except resp._Incomplete:
                    break
                buf = buf[used:]
                self.server.received.append(command)
                self.request.sendall(self.server.reply)


@contextmanager
def error_server(reply: str) -> Iterator[_ErrorServer]:
    server = _ErrorServer(reply)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("message", SERVER_STATE_ERRORS)
def test_server_state_error_opens_the_breaker(message):
    with error_server(message) as server:
        async def run():
            store = FeedStore(resp.AsyncRedis("127.0.0.1", server.server_address[1], timeout_s=2), cooldown_s=30)
            with pytest.raises(rex.ConnectionError) as first:
                await store.execute("GET", "k")
            assert str(first.value) == message and not isinstance(first.value, RedisUnavailable)
            with pytest.raises(RedisUnavailable):
                await store.execute("GET", "k")
            await store.close()

        asyncio.run(run())
        assert server.commands == 1  # the breaker answered the second call without asking Redis


def test_a_command_error_leaves_the_breaker_closed():
    with error_server("WRONGTYPE Operation against a key holding the wrong kind of value") as server:
        async def run():
            store = FeedStore(resp.AsyncRedis("127.0.0.1", server.server_address[1], timeout_s=2), cooldown_s=30)
            for _ in range(2):
                with pytest.raises(rex.ResponseError):
                    await store.execute("GET", "k")
            await store.close()

        asyncio.run(run())
        assert server.commands == 2


@pytest.mark.parametrize("message", SERVER_STATE_ERRORS)
def test_server_state_error_is_a_503_from_the_api(message):
    with error_server(message) as server:
        settings = Settings(api={"api_key": "k"}, redis={"port": server.server_address[1], "socket_timeout_s": 2})
        with TestClient(create_app(settings)) as client:
            response = client.get("/v1/feeds/users/u1")
            ready = client.get("/readyz")
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "redis unavailable" and response.headers["Retry-After"]
    assert ready.status_code == 503


def test_acl_user_is_sent_with_auth():
    with error_server("WRONGPASS invalid username-password pair or user is disabled.") as server:
        async def run():
            client = resp.AsyncRedis("127.0.0.1", server.server_address[1], password="pw", username="reader",
                                     timeout_s=2)
            with pytest.raises(rex.AuthenticationError):
                await client.execute("PING")

        asyncio.run(run())
    assert server.received == [["AUTH", "reader", "pw"]]


def test_a_pipeline_sends_already_encoded_commands_as_they_are():
    with error_server("WRONGTYPE Operation against a key holding the wrong kind of value") as server:
        async def run():
            client = resp.AsyncRedis("127.0.0.1", server.server_address[1], timeout_s=2)
            with pytest.raises(rex.ResponseError):
                await client.pipeline([("GET", "a"), resp.encode(("MGET", "b", "c"))])
            await client.close()

        asyncio.run(run())
    assert server.received == [["GET", "a"], ["MGET", "b", "c"]]
