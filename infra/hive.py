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


def write_hive_site(settings: Settings) -> Path:
    directory = hive_conf_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    props = {
        "javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={settings.var / 'metastore_db'};create=true",
        "javax.jdo.option.ConnectionDriverName": "org.apache.derby.jdbc.EmbeddedDriver",
        "datanucleus.schema.autoCreateAll": "true",
        "hive.metastore.schema.verification": "false",
        "hive.metastore.warehouse.dir": settings.warehouse.as_uri(),
        "hive.async.log.enabled": "false",
        "hive.metastore.event.db.notification.api.auth": "false",
    }
    body = "\n".join(f"  <property><name>{k}</name><value>{v}</value></property>" for k, v in props.items())
    (directory / "hive-site.xml").write_text(f"<?xml version=\"1.0\"?>\n<configuration>\n{body}\n</configuration>\n")
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

