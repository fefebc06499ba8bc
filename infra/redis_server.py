"""redis-server's config file (AOF, password, bind host)."""

from __future__ import annotations

import os
from pathlib import Path

from feedloop.settings import Settings


def redis_conf(settings: Settings) -> Path:
    directory = settings.var / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    rs = settings.redis
    lines = [
        f"bind {settings.bind_host}", f"port {rs.port}", "daemonize no", f"dir {directory}",
        "appendonly yes", "appendfsync everysec", "save \"\"", "protected-mode yes",
        "maxmemory-policy noeviction", "loglevel notice", "logfile \"\"",
    ]
    if rs.password:
        lines.append(f"requirepass {rs.password}")
    path = directory / "redis.conf"
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path

