"""Analysts and the platform log in to HiveServer2 (CUSTOM auth, infra/hive-auth);
nobody else gets in, whatever client they use."""

from __future__ import annotations

import subprocess

import pytest

from feedloop.clients import hive_connection
from infra.binaries import pyspark_home


def _count_one(conn) -> int:
    cursor = conn.cursor()
    cursor.execute("SELECT 1")
    (value,) = cursor.fetchone()
    conn.close()
    return value


def test_platform_and_analyst_logins_work(settings):
    assert _count_one(hive_connection(settings, settings.hive.database)) == 1
    analyst = hive_connection(settings, settings.hive.database, user=settings.hive.analyst_user,
                              password=settings.hive.analyst_password)
    assert _count_one(analyst) == 1


@pytest.mark.parametrize("user,password", [
    ("feedloop-wrong-password", None),
    ("analyst-wrong-password", None),
    ("intruder", "guess"),
    ("empty-password", ""),
])
def test_a_wrong_login_is_refused(settings, user, password):
    if user == "feedloop-wrong-password":
        user, password = settings.hive.user, settings.hive.password + "x"
    elif user == "analyst-wrong-password":
        user, password = settings.hive.analyst_user, settings.hive.password  # the other account's password
    elif user == "empty-password":
        user = settings.hive.analyst_user
    with pytest.raises(Exception) as refused:
        _count_one(hive_connection(settings, settings.hive.database, user=user, password=password))
    assert "login" in str(refused.value).lower() or "auth" in str(refused.value).lower(), repr(refused.value)


def test_a_client_without_a_password_is_refused(settings):
    """PyHive's auth=NONE sends a placeholder password: HiveServer2 with NONE would let it in."""
    from pyhive import hive

    with pytest.raises(Exception):
        _count_one(hive.Connection(host=settings.hive.hs2_host, port=settings.hive.hs2_port, username=settings.hive.user))


def _beeline(settings, *login: str) -> subprocess.CompletedProcess:
    home = pyspark_home()
    return subprocess.run(
        [str(home / "bin" / "beeline"), "-u", f"jdbc:hive2://{settings.hive.hs2_host}:{settings.hive.hs2_port}/default",
         *login, "--outputformat=csv2", "--silent=true", "-e", "select 41 + 1"],
        capture_output=True, text=True, timeout=120, env={"SPARK_HOME": str(home), "PATH": "/usr/bin:/bin"})


def test_beeline_needs_the_analyst_login(settings, tmp_path):
    good = tmp_path / "good"
    good.write_text(settings.hive.analyst_password)
    bad = tmp_path / "bad"
    bad.write_text("not-the-password")

    ok = _beeline(settings, "-n", settings.hive.analyst_user, "-w", str(good))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "42" in ok.stdout.split()

    for login in ([], ["-n", settings.hive.analyst_user, "-w", str(bad)]):
        refused = _beeline(settings, *login)
        assert "42" not in refused.stdout.split(), (login, refused.stdout[-500:])
        assert "wrong Hive user or password" in refused.stdout + refused.stderr or "Error validating" in refused.stdout + refused.stderr, \
            (login, refused.stderr[-2000:])


def test_the_password_file_holds_no_password(settings):
    text = (settings.var / "secrets" / "hive_passwords").read_text()
    assert settings.hive.user in text and settings.hive.analyst_user in text
    assert settings.hive.password not in text and settings.hive.analyst_password not in text
