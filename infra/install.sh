#!/usr/bin/env bash
# Install what feedloop needs and is missing: Debian packages, the virtualenv
# (from requirements.lock, with uv), and the JVM jars (Maven, infra/pom.xml).
# Safe to re-run: each step is skipped when its result is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
JARS=${FEEDLOOP_JAR_CACHE:-$HOME/.cache/feedloop/jars}
say() { printf '[install] %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------
apt_missing=()
command -v redis-server >/dev/null || apt_missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || apt_missing+=(postgresql)
command -v java >/dev/null || apt_missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || apt_missing+=(maven)
command -v ss >/dev/null || apt_missing+=(iproute2)
command -v wrk >/dev/null || apt_missing+=(wrk)
# the browser the dashboard's integration test drives with Playwright (which cannot download its own here)
[ -x /usr/bin/chromium ] || apt_missing+=(chromium)
if [ ${#apt_missing[@]} -gt 0 ]; then
  say "apt-get install ${apt_missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  # Debian's packages may start their own default servers; feedloop runs its own under var/.
  $SUDO service redis-server stop >/dev/null 2>&1 || true
  $SUDO service postgresql stop >/dev/null 2>&1 || true
fi

# --- Python virtualenv -----------------------------------------------------
command -v "$PY" >/dev/null || { echo "install: $PY not found (feedloop needs Python 3.11)" >&2; exit 1; }
if ! command -v uv >/dev/null; then
  say "pip install uv"
  "$PY" -m pip install -q --disable-pip-version-check uv
fi
UV=$(command -v uv || echo "$PY -m uv")
stamp=".venv/.installed-$(cat requirements.lock setup.cfg | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || { say "creating .venv"; $UV venv -q --python "$PY" .venv; }
  say "installing requirements.lock into .venv (first time: a few minutes, ~2.6 GB)"
  $UV pip install -q --python .venv/bin/python -r requirements.lock
  $UV pip install -q --python .venv/bin/python --no-deps -e .
  rm -f .venv/.installed-*; touch "$stamp"
fi

# --- JVM jars ----------------------------------------------------------------
if ! ls "$JARS"/kafka/kafka_2.13-*.jar >/dev/null 2>&1; then
  say "resolving Kafka broker jars from Maven Central into $JARS/kafka"
  mvn -q -B -f infra/pom.xml -P kafka-broker dependency:copy-dependencies \
      -DoutputDirectory="$JARS/kafka" -DincludeScope=runtime
fi
if ! ls "$JARS"/spark-kafka/spark-sql-kafka-*.jar >/dev/null 2>&1; then
  say "resolving Spark's Kafka connector into $JARS/spark-kafka"
  mvn -q -B -f infra/pom.xml -P spark-kafka dependency:copy-dependencies \
      -DoutputDirectory="$JARS/spark-kafka" -DincludeScope=runtime \
      -DincludeArtifactIds=spark-sql-kafka-0-10_2.13,spark-token-provider-kafka-0-10_2.13,kafka-clients,commons-pool2
fi
# The single-node OpenSearch of search.backend: opensearch (infra/opensearch): always resolved, because
# `make test` runs it (tests/integration/test_search_opensearch.py); 45 MB, ~15 s the first time.
# Re-resolved into a clean directory when infra/pom.xml changes (two versions of a jar must not mix).
os_stamp="$JARS/opensearch/.resolved-$(sha256sum infra/pom.xml | cut -c1-16)"
if [ ! -f "$os_stamp" ]; then
  say "resolving OpenSearch's jars from Maven Central into $JARS/opensearch"
  rm -rf "$JARS/opensearch"
  mvn -q -B -f infra/pom.xml -P opensearch dependency:copy-dependencies \
      -DoutputDirectory="$JARS/opensearch" -DincludeScope=runtime
  touch "$os_stamp"
fi
# The Hive metastore's JDBC driver for PostgreSQL (pyspark ships Derby's only); the metastore's classpath adds it.
if ! ls "$JARS"/postgres-jdbc/postgresql-*.jar >/dev/null 2>&1; then
  say "resolving the PostgreSQL JDBC driver into $JARS/postgres-jdbc"
  mvn -q -B -f infra/pom.xml -P metastore-postgres dependency:copy-dependencies \
      -DoutputDirectory="$JARS/postgres-jdbc" -DincludeScope=runtime -DincludeArtifactIds=postgresql
fi
# HiveServer2's password provider (CUSTOM auth), compiled against pyspark's own
# spark-hive-thriftserver jar; rebuilt when its source or the venv changes.
auth_stamp="$JARS/hive-auth/.built-$(cat infra/hive-auth/pom.xml infra/hive-auth/src/main/java/io/feedloop/hive/*.java requirements.lock | sha256sum | cut -c1-16)"
if [ ! -f "$auth_stamp" ] || [ ! -f "$JARS/hive-auth/feedloop-hive-auth.jar" ]; then
  say "building HiveServer2's password provider (infra/hive-auth) into $JARS/hive-auth"
  PYSPARK_JARS=$(.venv/bin/python -c 'import pathlib, pyspark; print(pathlib.Path(pyspark.__file__).parent / "jars")')
  rm -rf "$JARS/hive-auth"
  mvn -q -B -f infra/hive-auth/pom.xml package -Dpyspark.jars="$PYSPARK_JARS" -Dfeedloop.build="$JARS/hive-auth"
  touch "$auth_stamp"
fi
say "ready: .venv, jars in $JARS"
