"""The DAG's batch steps as Spark Connect clients of the Thrift Server's application, and when a search is skipped."""

import socket

import pandas as pd
import pytest

from feedloop.settings import load_settings
from infra import commands

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture(autouse=True)
def hive_logins(isolated, monkeypatch):
    monkeypatch.setenv("FEEDLOOP_HIVE__PASSWORD", "platform-password")
    monkeypatch.setenv("FEEDLOOP_HIVE__ANALYST_PASSWORD", "analyst-password")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_thrift_server_runs_spark_connect_with_its_token_out_of_the_command_line(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_SPARK__CONNECT_TOKEN", "the-connect-token")
    monkeypatch.setenv("FEEDLOOP_SPARK__CONNECT_PORT", "25002")
    settings = load_settings()
    argv, env, _ = commands.service_command(settings, "thriftserver")
    assert "spark.plugins=org.apache.spark.sql.connect.SparkConnectPlugin" in argv
    assert "spark.connect.grpc.binding.port=25002" in argv
    assert f"spark.connect.grpc.binding.address={settings.bind_host}" in argv
    assert env["SPARK_CONNECT_AUTHENTICATE_TOKEN"] == "the-connect-token"
    assert not any("the-connect-token" in arg for arg in argv)


def test_without_connect_the_thrift_server_is_plain_and_steps_start_their_own_driver(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_SPARK__CONNECT", "false")
    settings = load_settings()
    argv, env, _ = commands.service_command(settings, "thriftserver")
    assert not any("SparkConnectPlugin" in arg for arg in argv)
    assert "SPARK_CONNECT_AUTHENTICATE_TOKEN" not in env


def test_the_cluster_profile_gives_each_step_an_application_of_its_own(monkeypatch):
    monkeypatch.setenv("FEEDLOOP_PROFILE", "cluster")
    assert load_settings().spark.connect is False


def test_a_batch_step_fails_at_once_naming_the_service_when_connect_does_not_answer(monkeypatch):
    from feature_store.offline import batch_spark

    monkeypatch.setenv("FEEDLOOP_SPARK__CONNECT_PORT", str(_free_port()))
    with pytest.raises(ConnectionError, match="thriftserver"):
        batch_spark("feedloop-features", settings=load_settings())


def test_the_connect_url_names_the_step_and_never_the_token(monkeypatch):
    from feedloop.sparkconf import connect_url

    monkeypatch.setenv("FEEDLOOP_SPARK__CONNECT_TOKEN", "secret-token")
    url = connect_url(load_settings(), "feedloop-train")
    assert url == "sc://localhost:15002/;user_agent=feedloop-train"
    monkeypatch.setenv("FEEDLOOP_SPARK__CONNECT_URL", "sc://spark.example:443/;use_ssl=true")
    assert connect_url(load_settings(), "x").startswith("sc://spark.example:443/;use_ssl=true")


def _pairs(n: int) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [f"u{i % 50}" for i in range(n)], "item_id": [f"i{i}" for i in range(n)],
                         "weight": 1.0, "ts": range(n)})


def test_no_search_on_fewer_validation_pairs_than_the_setting():
    from models.tuning import too_small_to_search, validation_split

    model = load_settings().model
    split = validation_split(0.2)
    lines = []
    assert too_small_to_search(_pairs(1000), split, model, lines.append)  # 200 validation pairs
    assert "200 validation pairs" in lines[0]
    assert not too_small_to_search(_pairs(5000), split, model, lines.append)  # 1,000
    assert not too_small_to_search(_pairs(1000), split, model.model_copy(update={"tune_min_validation_pairs": 0}))
