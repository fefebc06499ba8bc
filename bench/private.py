"""Throwaway processes for benchmarks and tests: a free port, a child in its own process
group (stopped group and all), and a private redis-server that can be stopped, paused
and restarted. The project's own services are never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Private:
    """A child process in its own process group, stopped (group and all) on exit."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, log_path: Path | None = None,
                 cwd: Path = REPO_ROOT) -> None:
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.log_path = log_path
        self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=cwd)
        if log_path:
            out.close()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> "Private":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()



class PrivateRedis:
    """A throwaway redis-server on a fixed free port; can be stopped and restarted.

    No persistence, unless ``appendonly``: then an AOF in ``workdir`` (without the RDB
    preamble, so that loading a large one takes seconds) and DEBUG allowed from localhost.
    """

    def __init__(self, workdir: Path, password: str = "", appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> redis.Redis:
        """Start it; with ``wait``, return once it answers (after loading its AOF)."""
        persistence = (["--appendonly", "yes", "--aof-use-rdb-preamble", "no", "--enable-debug-command", "local"]
                       if self.appendonly else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.workdir), *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password or None, decode_responses=True)
        if not wait:
            return client
        deadline = time.monotonic() + 60
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:  # BusyLoadingError included
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


class PrivateOpenSearch:
    """A throwaway single-node OpenSearch (infra/opensearch) on free ports, its state in ``workdir``;
    can be paused and resumed. ``start`` returns once /_cluster/health answers green or yellow."""

    def __init__(self, workdir: Path, heap: str = "512m") -> None:
        from feedloop.settings import load_settings
        from infra.opensearch_node import opensearch_command

        self.port = free_port()
        self.workdir = workdir
        settings = load_settings()
        settings = settings.model_copy(update={"search": settings.search.model_copy(update={"heap": heap})})
        self.argv = opensearch_command(settings, workdir / "node", self.port, free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Private | None = None
        self.start_s: float | None = None

    def start(self, wait: bool = True, timeout_s: float = 120.0) -> "PrivateOpenSearch":
        self.started_at = time.monotonic()
        self.child = Private(self.argv, log_path=self.workdir / "opensearch.log")
        if wait:
            self.wait(timeout_s)
        return self

    def wait(self, timeout_s: float = 120.0) -> None:
        from infra.opensearch_node import cluster_healthy

        deadline = self.started_at + timeout_s
        while not cluster_healthy(self.url, timeout_s=1.0):
            if self.child.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / "opensearch.log").read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"private OpenSearch did not start (exit {self.child.proc.poll()}):\n{tail}")
            time.sleep(0.2)
        self.start_s = time.monotonic() - self.started_at

    def rss_mb(self) -> float:
        """The node's resident memory (the java process, the group's leader)."""
        with open(f"/proc/{self.child.proc.pid}/status") as status:
            kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return round(kb / 1024, 1)

    def pause(self) -> None:
        os.killpg(self.child.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.child.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.child is not None:
            self.resume()  # in case a test left it stopped
            self.child.stop()

    def __enter__(self) -> "PrivateOpenSearch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
