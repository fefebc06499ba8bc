"""The walking skeleton over real services: event -> Kafka -> Spark -> Hive ->
Airflow-run retrain -> MLflow -> Redis -> feed API."""

from __future__ import annotations

import argparse
import json
import subprocess
import urllib.request

import pytest

from sources import simulator
from spark.partitions import partition_rows, wait_for_rows
from tests.integration.conftest import feedloop_cli

DS = "2026-11-20"
EVENTS = 3000


@pytest.fixture(scope="module")
def day_loaded(settings):
    """One simulated day of events, landed in Hive by the supervised streaming sink."""
    before = partition_rows(settings, "events", DS)
    simulator.main(argparse.Namespace(users=120, items=200, events=EVENTS, rate=0, duration=0, seed=11, ds=DS,
                                      no_catalogue=False))
    # the simulator may emit a few more events than asked (an action's impression/click/dwell)
    return wait_for_rows(settings, DS, before + EVENTS, timeout_s=600)


def test_events_reach_hive_exactly_once(settings, day_loaded):
    from feedloop.clients import hive_connection

    cursor = hive_connection(settings, "feedloop").cursor()
    cursor.execute(f"SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events WHERE dt = '{DS}'")
    total, distinct = cursor.fetchone()
    assert total == distinct == day_loaded


def test_beeline_counts_the_same_as_pyhive(settings, day_loaded, tmp_path):
    from infra.binaries import pyspark_home

    beeline = pyspark_home() / "bin" / "beeline"
    password_file = tmp_path / "analyst_password"
    password_file.write_text(settings.hive.analyst_password)
    out = subprocess.run(
        [str(beeline), "-u", f"jdbc:hive2://{settings.hive.hs2_host}:{settings.hive.hs2_port}", "--outputformat=csv2",
         "-n", settings.hive.analyst_user, "-w", str(password_file),
         "--silent=true", "-e", f"select count(*) from feedloop.events where dt = '{DS}'"],
        capture_output=True, text=True, timeout=120, env={"SPARK_HOME": str(pyspark_home()), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(day_loaded) in out.stdout.split()


@pytest.fixture(scope="module")
def dag_run(settings, day_loaded):
    from infra.airflow_client import cmd_run_dag

    assert cmd_run_dag(argparse.Namespace(dag_id="feedloop_daily_retrain", ds=DS, timeout=1500)) == 0
    return DS


def test_airflow_reports_a_successful_retrain(settings, dag_run):
    from datetime import date

    from infra.airflow_client import run_state_for

    assert run_state_for(settings, "feedloop_daily_retrain", date.fromisoformat(DS)) == "success"


def test_mlflow_registry_has_a_champion(settings, dag_run):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    version = client.get_model_version_by_alias(settings.mlflow.model_name, "champion")
    assert version.name == "feedloop-two-tower" and int(version.version) >= 1


def test_feed_api_serves_a_feed_naming_the_champion(settings, dag_run):
    from mlflow import MlflowClient

    champion = MlflowClient(tracking_uri=settings.mlflow_uri).get_model_version_by_alias(settings.mlflow.model_name, "champion")
    url = f"http://{settings.bind_host}:{settings.api.port}/v1/feeds/users/u000003?limit=10"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["items"], body
    assert body["model_version"] == champion.version
    assert body["source"] in ("user", "segment")


def _table_rows(settings, table: str) -> list:
    from feedloop.clients import hive_connection

    cursor = hive_connection(settings, "feedloop").cursor()
    cursor.execute(f"SELECT * FROM {table} WHERE dt = '{DS}'")
    return sorted(map(repr, cursor.fetchall()))


def test_rerunning_a_day_leaves_identical_tables(settings, dag_run):
    tables = ("user_features", "item_features", "training_examples")
    before = {t: _table_rows(settings, t) for t in tables}
    assert all(before.values()), {t: len(v) for t, v in before.items()}
    feedloop_cli("features", "--ds", DS)
    feedloop_cli("training-set", "--ds", DS)
    assert {t: _table_rows(settings, t) for t in tables} == before


def test_a_broken_training_run_does_not_become_champion(settings, dag_run):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    champion = client.get_model_version_by_alias(settings.mlflow.model_name, "champion")
    # a negative learning rate: the run learns backwards (as a sign bug would) and ranks what users
    # like last. Random weights (learning rate 0) were not certainly worse than this small test
    # champion, which is trained on 3,000 events: the gate once promoted them, by its rule.
    # Tuning off: the search would spend its trials on a setting that cannot learn.
    feedloop_cli("train", "--ds", DS, env={"FEEDLOOP_MODEL__LEARNING_RATE": "-0.05", "FEEDLOOP_MODEL__TUNE": "false"})
    gate = feedloop_cli("gate", "--ds", DS)
    assert "challenger" in gate.stdout, gate.stdout[-2000:]
    assert client.get_model_version_by_alias(settings.mlflow.model_name, "champion").version == champion.version
    broken = client.get_model_version_by_alias(settings.mlflow.model_name, "challenger")
    assert int(broken.version) > int(champion.version)
    assert broken.tags["gate_reason"].startswith("ndcg10")


def test_mlflow_compares_three_models_for_the_day(settings, dag_run):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], f"tags.ds = '{DS}'")
    assert {"two-tower", "popularity", "als"} <= {r.data.tags.get("model_type") for r in runs}
    assert all("ndcg10" in r.data.metrics for r in runs if r.data.tags.get("model_type") in ("popularity", "als"))


def test_a_demo_with_a_champion_skips_the_retrain_and_lands_a_burst(settings, dag_run):
    import re

    from feedloop.cli import champion_version

    champion = champion_version(settings)
    assert champion is not None
    out = feedloop_cli("demo", "--events", "300", "--no-learner", timeout_s=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"champion version {champion} serves the feeds: skipping the retrain" in out.stdout
    # the burst goes out once MLflow and Hive answer (wave 2), before the demo's own steps
    assert out.stdout.index("sending the demo's burst while the rest starts") < out.stdout.index("skipping the retrain")
    assert "feedloop_daily_retrain" not in out.stdout.split("skipping the retrain")[1].split("\n", 1)[1]
    landed = re.search(r"feedloop\.events dt=(\S+): (\d+) rows \((\d+) new\)", out.stdout)
    assert landed, out.stdout[-3000:]
    ds, rows, new = landed.group(1), int(landed.group(2)), int(landed.group(3))
    assert new >= 300
    assert partition_rows(settings, "events", ds) >= rows
    assert re.search(r"user u000001's feed from source '\w+', model version \S+: \['", out.stdout), out.stdout[-2000:]
