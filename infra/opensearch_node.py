"""The single-node OpenSearch of ``search.backend: opensearch``: its command line and health.

A launcher run from source (``infra/opensearch/FeedloopOpenSearch.java``) starts a node from the
Maven Central jars (``infra/pom.xml``, profile ``opensearch``) with its state under
``var/opensearch``; it serves only when ``search.url`` is empty (a real cluster set there is
used instead, and nothing is started).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from feedloop.settings import Settings
from infra.binaries import java_bin
from infra.errors import ServiceError

LAUNCHER_DIR = Path(__file__).resolve().parent / "opensearch"
LAUNCHER = LAUNCHER_DIR / "FeedloopOpenSearch.java"
LOG4J = LAUNCHER_DIR / "log4j2.properties"
SERVER_JAR = "opensearch-2.*.jar"
# a distribution's config/jvm.options, the lines that matter to an embedded node on Java 17
JVM_OPTIONS = ["-XX:+UseG1GC", "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8", "-Djna.nosys=true",
               "-Dio.netty.noUnsafe=true", "-Dio.netty.noKeySetOptimization=true",
               "-Dio.netty.recycler.maxCapacityPerThread=0", "-Dlog4j.shutdownHookEnabled=false",
               "-Dlog4j2.disable.jmx=true", "-Djava.locale.providers=SPI,COMPAT", "-XX:+ExitOnOutOfMemoryError"]


def opensearch_jars(settings: Settings) -> Path:
    """The directory of the node's jars; ``ServiceError`` saying how to get them when they are missing."""
    jars = settings.jars / "opensearch"
    if not any(jars.glob(SERVER_JAR)):
        raise ServiceError(f"OpenSearch jars missing under {jars}: run `make install` "
                           "(mvn -f infra/pom.xml -P opensearch, ~100 MB)")
    return jars


def opensearch_command(settings: Settings, home: Path, http_port: int, transport_port: int) -> list[str]:
    """The java command of a node answering on ``http_port`` with its state in ``home``."""
    java = java_bin()
    if not (Path(java).resolve().parent / "javac").exists():
        raise ServiceError(f"OpenSearch's launcher ({LAUNCHER.name}) runs from source, which needs a JDK, not "
                           f"only a JRE, beside {java}: apt-get install openjdk-17-jdk-headless")
    heap = settings.search.heap
    return [java, f"-Xms{heap}", f"-Xmx{heap}", *JVM_OPTIONS, f"-Djava.io.tmpdir={_tmp(home)}",
            f"-Dlog4j2.configurationFile={LOG4J}", "-cp", f"{opensearch_jars(settings)}/*",
            str(LAUNCHER), str(home), settings.bind_host, str(http_port), str(transport_port)]


def _tmp(home: Path) -> Path:
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def service_argv(settings: Settings) -> list[str]:
    """The stack's node (``feedloop up opensearch``): state in var/opensearch, the search ports."""
    return opensearch_command(settings, settings.var / "opensearch", settings.search.port,
                              settings.search.transport_port)


def cluster_healthy(url: str, timeout_s: float = 2.0) -> bool:
    """Whether the cluster at ``url`` answers ``/_cluster/health`` green or yellow (a single node's
    indices are green; yellow: a replica short, every search still answered)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/_cluster/health", timeout=timeout_s) as response:
            return json.loads(response.read()).get("status") in ("green", "yellow")
    except (OSError, ValueError):
        return False
