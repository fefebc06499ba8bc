"""DAG integrity: the dags/ folder parses cleanly and cheaply, with the agreed shape.

Parsing runs in a subprocess with its own AIRFLOW_HOME and a SQLite URL, so the
test needs no service and never touches a real Airflow installation, and so
sys.modules shows exactly what parsing the DAG files imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from feedloop.settings import REPO_ROOT

DAGS_DIR = REPO_ROOT / "dags"
EXPECTED_DAGS = {"feedloop_daily_retrain", "feedloop_hive_maintenance"}
RETRAIN_ORDER = ["wait_for_events_partition", "features", "training_set", "train", "baselines", "evaluate_and_gate",
                 "publish_feeds", "report"]
HEAVY_MODULES = ("tensorflow", "pyspark", "mlflow", "keras")

PARSE_SCRIPT = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "tags": sorted(dag.tags or []),
        "start_date": dag.start_date.isoformat() if dag.start_date else None,
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "tasks": {
            t.task_id: {"retries": t.retries, "retry_delay_s": t.retry_delay.total_seconds(),
                        "backoff": bool(t.retry_exponential_backoff), "downstream": sorted(t.downstream_task_ids),
                        "upstream": sorted(t.upstream_task_ids), "operator": type(t).__name__,
                        "bash_command": getattr(t, "bash_command", None),
                        "application": getattr(t, "application", None),
                        "application_args": getattr(t, "application_args", None)}
            for t in dag.tasks
        },
    }
print(json.dumps({
    "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
    "dags": dags,
    "heavy_imported": [m for m in sys.argv[2].split(",") if m in sys.modules],
}))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
    })
    result = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(DAGS_DIR), ",".join(HEAVY_MODULES)],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, f"DagBag parse crashed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_import_errors(parsed):
    assert parsed["import_errors"] == {}


def test_expected_dags_present(parsed):
    assert EXPECTED_DAGS <= set(parsed["dags"])


def test_every_dag_has_tags(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        assert "feedloop" in dag["tags"], f"{dag_id} lacks the feedloop tag"


def test_every_task_retries_at_least_twice(parsed):
    for dag_id, dag in parsed["dags"].items():
        for task_id, task in dag["tasks"].items():
            assert task["retries"] >= 2, f"{dag_id}.{task_id} retries={task['retries']}"


def test_static_start_date_and_no_catchup(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert dag["start_date"], f"{dag_id} has no start_date"
        # A start_date computed from now() would land within the last day or so.
        start = datetime.fromisoformat(dag["start_date"])
        assert (start.hour, start.minute, start.second, start.microsecond) == (0, 0, 0, 0), (
            f"{dag_id} start_date {start} is not a fixed midnight: computed at parse time?"
        )
        assert dag["catchup"] is False, f"{dag_id} would backfill every day since start_date"


def test_static_start_date_in_source():
    for path in DAGS_DIR.glob("*.py"):
        source = path.read_text()
        for forbidden in ("now()", "today()", "utcnow()", "Variable.get", "days_ago"):
            assert forbidden not in source, f"{path.name} calls {forbidden} at parse time"


def test_daily_retrain_task_order(parsed):
    dag = parsed["dags"]["feedloop_daily_retrain"]
    assert set(dag["tasks"]) == set(RETRAIN_ORDER)
    chain = [t for t in RETRAIN_ORDER if t != "baselines"]
    for upstream, downstream in zip(chain, chain[1:]):
        assert downstream in dag["tasks"][upstream]["downstream"]
        assert upstream in dag["tasks"][downstream]["upstream"]
    # the baselines (MLflow runs for comparison only) run beside train .. publish_feeds; the report waits
    assert sorted(dag["tasks"]["training_set"]["downstream"]) == ["baselines", "train"]
    assert dag["tasks"]["baselines"]["upstream"] == ["training_set"]
    assert dag["tasks"]["baselines"]["downstream"] == ["report"]
    assert sorted(dag["tasks"]["report"]["upstream"]) == ["baselines", "publish_feeds"]
    assert dag["tasks"]["wait_for_events_partition"]["operator"] == "BashSensor"
    assert dag["max_active_runs"] == 2  # a sensor-waiting run must not block another day


def test_retrain_tasks_pass_ds(parsed):
    for task_id, task in parsed["dags"]["feedloop_daily_retrain"]["tasks"].items():
        assert task["bash_command"].startswith("feedloop "), task_id
        assert "--ds {{ ds }}" in task["bash_command"], task_id


def test_parsing_imports_no_heavy_modules(parsed):
    assert parsed["heavy_imported"] == []


def test_tasks_outlast_a_scheduler_and_a_metastore_restart(parsed):
    # a scheduler kill kills the running task; a metastore restart takes minutes (docs/chaos.md):
    # 4 retries, 1, 2, 4, 8 min apart
    for dag_id, dag in parsed["dags"].items():
        for task_id, task in dag["tasks"].items():
            if task["operator"] == "BashSensor":
                continue
            assert task["retries"] >= 4 and task["backoff"] and task["retry_delay_s"] >= 60, (dag_id, task_id, task)
