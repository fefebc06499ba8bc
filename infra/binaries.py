"""Where the executables are: this virtualenv, pyspark, Java, PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

from feedloop.settings import Settings
from infra.errors import ServiceError

VENV_BIN = Path(sys.executable).parent


def pyspark_home() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.origin:
        raise ServiceError("pyspark is not installed in this Python; run `make install`")
    return Path(spec.origin).parent


def java_bin() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    found = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not found:
        raise ServiceError("Java not found: install OpenJDK 17 (apt-get install openjdk-17-jdk-headless) or set JAVA_HOME")
    return found


def postgres_bin(settings: Settings, tool: str) -> str:
    if settings.postgres.bin_dir:
        return str(Path(settings.postgres.bin_dir) / tool)
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise ServiceError("PostgreSQL server binaries not found: apt-get install postgresql, or set FEEDLOOP_POSTGRES__BIN_DIR")
    return found[-1]

