import pytest

from feedloop.settings import SettingsError, load_settings


pytestmark = pytest.mark.usefixtures("isolated")  # tests/unit/conftest.py


def test_defaults_are_one_machine_on_loopback():
    s = load_settings()
    assert s.bind_host == "127.0.0.1"
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.hive.metastore_uri == "thrift://127.0.0.1:9083"
    assert s.spark.master.startswith("local")


def test_env_overrides_yaml(isolated, monkeypatch):
    (isolated / "feedloop.yaml").write_text("kafka:\n  bootstrap: a:1\nspark:\n  master: spark://m:7077\n")
    monkeypatch.setenv("FEEDLOOP_KAFKA__BOOTSTRAP", "b1:9092,b2:9092")
    s = load_settings()
    assert s.kafka.bootstrap == "b1:9092,b2:9092"
    assert s.spark.master == "spark://m:7077"


def test_bad_value_names_setting_and_env_source(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_REDIS__PORT", "70000")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "redis.port" in str(err.value) and "env FEEDLOOP_REDIS__PORT" in str(err.value)


def test_bad_value_names_yaml_file(isolated):
    (isolated / "feedloop.yaml").write_text("spark:\n  master: bogus\n")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "spark.master" in str(err.value) and "feedloop.yaml" in str(err.value)


def test_unknown_setting_is_named(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_KAFKA__BOOTSTRAPP", "x:1")
    with pytest.raises(SettingsError, match="unknown setting kafka.bootstrapp"):
        load_settings()


def test_secrets_are_refused_in_the_yaml_file(isolated):
    (isolated / "feedloop.yaml").write_text("redis:\n  password: hunter2\n")
    with pytest.raises(SettingsError, match="FEEDLOOP_REDIS__PASSWORD"):
        load_settings()


def test_generated_secrets_are_read_and_env_wins(isolated, monkeypatch):
    from feedloop.settings import generate_local_secrets

    generate_local_secrets()
    generated = load_settings().redis.password
    assert len(generated) >= 16
    monkeypatch.setenv("FEEDLOOP_REDIS__PASSWORD", "from-env")
    assert load_settings().redis.password == "from-env"


def test_a_profile_layers_under_the_yaml_file_and_env(isolated, monkeypatch):
    from feedloop import settings as mod

    profiles = isolated / "profiles"
    profiles.mkdir()
    (profiles / "wide.yaml").write_text("spark:\n  shuffle_partitions: 16\n  driver_memory: 3g\n")
    monkeypatch.setattr(mod, "PROFILES_DIR", profiles)
    (isolated / "feedloop.yaml").write_text("profile: wide\nspark:\n  driver_memory: 2g\n")
    s = load_settings()
    assert (s.profile, s.spark.shuffle_partitions, s.spark.driver_memory) == ("wide", 16, "2g")
    monkeypatch.setenv("FEEDLOOP_PROFILE", "single")
    s = load_settings()
    assert (s.profile, s.spark.shuffle_partitions) == ("single", 4)


def test_the_running_stacks_profile_is_remembered_and_an_unknown_one_is_named(isolated, monkeypatch):
    from feedloop.settings import profile_file

    profile_file().parent.mkdir(parents=True)
    profile_file().write_text("cluster\n")
    assert load_settings().profile == "cluster"
    monkeypatch.setenv("FEEDLOOP_PROFILE", "galaxy")
    with pytest.raises(SettingsError, match="unknown profile 'galaxy'.*cluster"):
        load_settings()
