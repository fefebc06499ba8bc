"""The Hive side: metastore config and launcher, HiveServer2 logins, the DDL in hive/ddl/."""

from __future__ import annotations

import os
from pathlib import Path

from feedloop import clients
from feedloop.clients import hive_connection
from feedloop.settings import REPO_ROOT, Settings, get_settings
from infra.errors import ServiceError


def hive_conf_dir(settings: Settings) -> Path:
    return settings.var / "hive-conf"


# Where the PostgreSQL JDBC driver lands: infra/pom.xml, profile metastore-postgres, run by infra/install.sh.
POSTGRES_JDBC_DIR = "postgres-jdbc"

# Connections per DataNucleus pool (the metastore opens two, HikariCP's minimum idle is the maximum): the
# metastore's callers are a handful of Spark drivers, and Postgres (max_connections=100) also serves Airflow.
METASTORE_POOL_SIZE = 5


def derby_dir(settings: Settings) -> Path:
    return settings.var / "metastore_db"


def _has_derby_metastore(settings: Settings) -> bool:
    return (derby_dir(settings) / "service.properties").exists()  # Derby writes it when it creates a database


def metastore_backend(settings: Settings) -> str:
    """``derby`` or ``postgres``: ``hive.metastore_db``, with ``auto`` resolved against the var dir.

    ``auto`` keeps a var dir's existing Derby metastore (its tables would vanish from sight on an
    empty Postgres one; nothing migrates them); an explicit ``postgres`` beside one fails, naming both ways out.
    """
    chosen = settings.hive.metastore_db
    if chosen == "auto":
        return "derby" if _has_derby_metastore(settings) else "postgres"
    if chosen == "postgres" and _has_derby_metastore(settings) and not settings.hive.metastore_db_url:
        raise ServiceError(
            f"hive.metastore_db is postgres, but {derby_dir(settings)} holds this var dir's Derby metastore, whose "
            "tables would not be seen (they are not migrated): set FEEDLOOP_HIVE__METASTORE_DB=derby (or auto) to "
            "keep using it, or move that directory away to start an empty metastore on PostgreSQL")
    return chosen


def metastore_notice(settings: Settings) -> str | None:
    """What `feedloop up` says when ``auto`` keeps a Derby metastore."""
    if settings.hive.metastore_db == "auto" and metastore_backend(settings) == "derby":
        return (f"  the metastore stays on Derby ({derby_dir(settings)} exists; hive.metastore_db=auto); "
                "PostgreSQL is the default for a new var dir (docs/cluster.md, \"Hive metastore\")")
    return None


def metastore_on_local_postgres(settings: Settings) -> bool:
    """Whether the metastore's database lives on the stack's own PostgreSQL (created by `feedloop up`)."""
    return metastore_backend(settings) == "postgres" and not settings.hive.metastore_db_url


def metastore_db_login(settings: Settings) -> tuple[str, str]:
    """(user, password) of the metastore's database: its own role, or the feedloop user's when named so."""
    hive, pg = settings.hive, settings.postgres
    password = pg.password if hive.metastore_db_user == pg.user else hive.metastore_db_password
    if not password:
        raise ServiceError("the metastore's database password is not set: FEEDLOOP_HIVE__METASTORE_DB_PASSWORD "
                           "(`feedloop up` generates var/secrets/hive__metastore_db_password on one machine)")
    return hive.metastore_db_user, password


def metastore_jdbc_url(settings: Settings) -> str:
    pg = settings.postgres
    return settings.hive.metastore_db_url or f"jdbc:postgresql://{pg.host}:{pg.port}/{settings.hive.metastore_db_name}"


def postgres_jdbc_jar(settings: Settings) -> Path:
    found = sorted((settings.jars / POSTGRES_JDBC_DIR).glob("postgresql-*.jar"))
    if not found:
        raise ServiceError(f"the PostgreSQL JDBC driver is missing from {settings.jars / POSTGRES_JDBC_DIR}: run "
                           "`make install` (Maven resolves it, infra/pom.xml profile metastore-postgres)")
    return found[-1]


def metastore_classpath(settings: Settings, pyspark_jars: Path) -> str:
    """hive-site.xml's directory, pyspark's Hive 2.3 jars, and the JDBC driver Postgres needs."""
    parts = [str(hive_conf_dir(settings)), f"{pyspark_jars}/*"]
    if metastore_backend(settings) == "postgres":
        parts.append(str(postgres_jdbc_jar(settings)))
    return ":".join(parts)


def metastore_db_props(settings: Settings) -> dict[str, str]:
    """The JDO connection of the metastore's backend."""
    if metastore_backend(settings) == "derby":
        return {"javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={derby_dir(settings)};create=true",
                "javax.jdo.option.ConnectionDriverName": "org.apache.derby.jdbc.EmbeddedDriver"}
    user, password = metastore_db_login(settings)
    return {"javax.jdo.option.ConnectionURL": metastore_jdbc_url(settings),
            "javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
            "javax.jdo.option.ConnectionUserName": user,
            "javax.jdo.option.ConnectionPassword": password,
            "datanucleus.connectionPoolingType": "HikariCP",  # its jar is in pyspark's; BoneCP's is not
            "datanucleus.connectionPool.maxPoolSize": str(METASTORE_POOL_SIZE),
            # Every table created at start, not on first use: DataNucleus creates a missing table on a
            # connection of its own, and on PostgreSQL the foreign key of a new table (ALTER TABLE "TBL_PRIVS"
            # ... REFERENCES "TBLS") waits for the lock that the open transaction which needed it holds on
            # "TBLS" (the first CREATE TABLE over HiveServer2 inserted there): a wait that never ends, which
            # PostgreSQL cannot see as a deadlock (the other side waits in the JVM), so the first DDL hung
            # until the client's 10-minute socket timeout. Loading every class of Hive's mapping at start
            # (package.jdo) creates them all before any transaction runs.
            "datanucleus.autoStartMechanism": "MetaData",
            "datanucleus.autoStartMetaDataFiles": "package.jdo"}


def write_hive_site(settings: Settings) -> Path:
    """var/hive-conf/: hive-site.xml (mode 0600: it may hold the database password) and log4j2.properties."""
    from xml.sax.saxutils import escape

    directory = hive_conf_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    props = {
        **metastore_db_props(settings),
        # The schema: DataNucleus creates the tables from the JDO mapping (package.jdo in pyspark's
        # hive-metastore-2.3.10.jar) on first use, on Derby and PostgreSQL alike. Hive's schematool
        # (HiveSchemaTool, in pyspark's hive-beeline jar) cannot: it runs the SQL scripts
        # scripts/metastore/upgrade/<db>/hive-schema-2.3.0.<db>.sql, which ship only in Hive's binary
        # tarball, in none of pyspark's jars. No schematool means no VERSION row to verify, hence verification off.
        "datanucleus.schema.autoCreateAll": "true",
        "hive.metastore.schema.verification": "false",
        "hive.metastore.warehouse.dir": settings.warehouse.as_uri(),
        "hive.async.log.enabled": "false",
        "hive.metastore.event.db.notification.api.auth": "false",
    }
    body = "\n".join(f"  <property><name>{k}</name><value>{escape(v)}</value></property>" for k, v in props.items())
    site = directory / "hive-site.xml"
    tmp = site.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    os.chmod(tmp, 0o600)  # before the password goes in
    tmp.write_text(f"<?xml version=\"1.0\"?>\n<configuration>\n{body}\n</configuration>\n")
    os.replace(tmp, site)
    (directory / "log4j2.properties").write_text(
        "rootLogger.level = WARN\nrootLogger.appenderRef.stdout.ref = console\n"
        "appender.console.type = Console\nappender.console.name = console\n"
        "appender.console.layout.type = PatternLayout\nappender.console.layout.pattern = %d %p %c{1}: %m%n\n"
        "logger.metastore.name = org.apache.hadoop.hive.metastore\nlogger.metastore.level = INFO\n"
    )
    return directory


METASTORE_LAUNCHER = REPO_ROOT / "infra" / "metastore" / "LoopbackMetastore.java"


HIVE_AUTH_CLASS = "io.feedloop.hive.PasswordFileAuthenticator"  # infra/hive-auth, built by `make install`


HIVE_PBKDF2_ITERATIONS = 100_000  # ~40 ms per login in the JVM; logins are per connection, not per query


def hive_logins(settings: Settings) -> dict[str, str]:
    """The accounts the password file lists, with their passwords (:func:`feedloop.clients.hive_password`)."""
    try:
        return {user: clients.hive_password(settings, user) for user in (settings.hive.user, settings.hive.analyst_user)}
    except clients.LoginRefused as exc:
        raise ServiceError(str(exc)) from None


def write_hive_password_file(settings: Settings) -> Path:
    """var/secrets/hive_passwords: one salted PBKDF2-SHA256 hash per login, read by the provider."""
    import hashlib

    path = settings.var / "secrets" / "hive_passwords"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for user, password in hive_logins(settings).items():
        salt = os.urandom(16)
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, HIVE_PBKDF2_ITERATIONS)
        lines.append(f"{user} pbkdf2-sha256 {HIVE_PBKDF2_ITERATIONS} {salt.hex()} {digest.hex()}\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def ddl_statements() -> list[tuple[str, str]]:
    out = []
    for path in sorted((REPO_ROOT / "hive" / "ddl").glob("*.sql")):
        text = "\n".join(line for line in path.read_text().splitlines() if not line.strip().startswith("--"))
        out += [(path.name, stmt.strip()) for stmt in text.split(";") if stmt.strip()]
    return out


def apply_ddl(settings: Settings) -> int:
    conn = hive_connection(settings)
    cursor = conn.cursor()
    statements = ddl_statements()
    for _, stmt in statements:
        cursor.execute(stmt)
    conn.close()
    print(f"  applied {len(statements)} DDL statements from hive/ddl/", flush=True)
    return len(statements)


def cmd_ddl(args) -> int:
    apply_ddl(get_settings())
    return 0

