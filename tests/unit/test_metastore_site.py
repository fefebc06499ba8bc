"""The metastore's backend: hive-site.xml per backend, the Derby guard, the JDBC driver, the start order."""

import stat
import xml.etree.ElementTree as ET

import pytest

from feedloop.settings import SettingsError, load_settings
from infra import commands, hive
from infra.errors import ServiceError
from infra.registry import BY_NAME


@pytest.fixture(autouse=True)
def jar_cache(isolated, monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_JAR_CACHE", str(tmp_path / "jars"))
    monkeypatch.setenv("FEEDLOOP_POSTGRES__PASSWORD", "feedloop-db-password")
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_PASSWORD", "hive-db-password")
    driver = tmp_path / "jars" / hive.POSTGRES_JDBC_DIR / "postgresql-42.7.4.jar"
    driver.parent.mkdir(parents=True)
    driver.touch()
    return tmp_path


def site(settings) -> dict[str, str]:
    path = hive.write_hive_site(settings) / "hive-site.xml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return {p.findtext("name"): p.findtext("value") for p in ET.parse(path).getroot()}


def make_derby_metastore(settings) -> None:
    hive.derby_dir(settings).mkdir(parents=True)
    (hive.derby_dir(settings) / "service.properties").write_text("derby.serviceProtocol=org.apache.derby.database.Database\n")


def test_a_new_var_dir_gets_the_metastore_on_the_stacks_postgres(isolated):
    settings = load_settings()
    props = site(settings)
    assert props["javax.jdo.option.ConnectionURL"] == "jdbc:postgresql://127.0.0.1:5432/metastore"
    assert props["javax.jdo.option.ConnectionDriverName"] == "org.postgresql.Driver"
    assert props["javax.jdo.option.ConnectionUserName"] == "hive"
    assert props["javax.jdo.option.ConnectionPassword"] == "hive-db-password"
    assert props["datanucleus.schema.autoCreateAll"] == "true"
    assert props["hive.metastore.schema.verification"] == "false"
    # every table at start: one created mid-transaction waited forever on PostgreSQL's locks (infra.hive)
    assert (props["datanucleus.autoStartMechanism"], props["datanucleus.autoStartMetaDataFiles"]) == ("MetaData", "package.jdo")
    assert BY_NAME["metastore"].needs(settings) == ["postgres"]
    classpath = hive.metastore_classpath(settings, isolated / "pyspark-jars").split(":")
    assert classpath[-1].endswith("postgres-jdbc/postgresql-42.7.4.jar")
    assert not hive.derby_dir(settings).exists()


def test_derby_keeps_the_embedded_database_without_a_password(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB", "derby")
    settings = load_settings()
    props = site(settings)
    assert props["javax.jdo.option.ConnectionURL"] == f"jdbc:derby:;databaseName={hive.derby_dir(settings)};create=true"
    assert "javax.jdo.option.ConnectionPassword" not in props
    assert BY_NAME["metastore"].needs(settings) == []
    assert "postgres-jdbc" not in hive.metastore_classpath(settings, hive.derby_dir(settings))


def test_auto_keeps_an_existing_derby_metastore_and_says_so():
    settings = load_settings()
    make_derby_metastore(settings)
    assert hive.metastore_backend(settings) == "derby"
    assert site(settings)["javax.jdo.option.ConnectionURL"].startswith("jdbc:derby:")
    assert "stays on Derby" in hive.metastore_notice(settings)


def test_postgres_asked_for_beside_a_derby_metastore_fails_naming_both_ways_out(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB", "postgres")
    settings = load_settings()
    make_derby_metastore(settings)
    with pytest.raises(ServiceError) as err:
        hive.write_hive_site(settings)
    assert str(hive.derby_dir(settings)) in str(err.value) and "FEEDLOOP_HIVE__METASTORE_DB=derby" in str(err.value)


def test_an_external_postgres_is_settings_only(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_URL", "jdbc:postgresql://db.example.com:5432/hms?sslmode=require")
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_USER", "hms_owner")
    settings = load_settings()
    props = site(settings)
    assert props["javax.jdo.option.ConnectionURL"] == "jdbc:postgresql://db.example.com:5432/hms?sslmode=require"
    assert props["javax.jdo.option.ConnectionUserName"] == "hms_owner"
    assert not hive.metastore_on_local_postgres(settings)  # feedloop creates no database there ...
    assert BY_NAME["metastore"].needs(settings) == []  # ... and starts no Postgres for it


def test_the_feedloop_user_brings_its_own_password(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_USER", "feedloop")
    props = site(load_settings())
    assert props["javax.jdo.option.ConnectionPassword"] == "feedloop-db-password"


def test_a_password_with_xml_characters_survives(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_PASSWORD", "a<b&c>\"d'")
    assert site(load_settings())["javax.jdo.option.ConnectionPassword"] == "a<b&c>\"d'"


def test_a_missing_password_or_driver_is_named(monkeypatch, isolated):
    monkeypatch.delenv("FEEDLOOP_HIVE__METASTORE_DB_PASSWORD")
    with pytest.raises(ServiceError, match="FEEDLOOP_HIVE__METASTORE_DB_PASSWORD"):
        hive.write_hive_site(load_settings())
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_PASSWORD", "x")
    monkeypatch.setenv("FEEDLOOP_JAR_CACHE", str(isolated / "empty"))
    with pytest.raises(ServiceError, match="make install"):
        commands.service_command(load_settings(), "metastore")


def test_a_url_that_is_not_postgres_is_refused(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_HIVE__METASTORE_DB_URL", "jdbc:mysql://db:3306/hms")
    with pytest.raises(SettingsError, match="hive.metastore_db_url"):
        load_settings()


def test_the_cluster_profile_puts_the_metastore_on_postgres(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_PROFILE", "cluster")
    assert load_settings().hive.metastore_db == "postgres"
