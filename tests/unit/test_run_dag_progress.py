"""`feedloop run-dag`'s progress lines: the ETA from the last successful run, and a run's wall time."""
from infra.airflow_client import eta_note, run_seconds


def test_run_seconds_from_the_api_stamps():
    run = {"start_date": "2026-12-06T12:00:00.5Z", "end_date": "2026-12-06T12:02:30.5Z"}
    assert run_seconds(run) == 150.0
    assert run_seconds({"start_date": "2026-12-06T12:00:00Z", "end_date": None}) is None
    assert run_seconds({}) is None


def test_eta_counts_down_from_the_last_successful_run():
    assert eta_note(150.0, 40.0) == " (ETA 110s: the last successful run took 150s)"
    assert eta_note(150.0, 200.0) == " (past the last successful run's 150s by 50s)"


def test_no_eta_before_a_first_success():
    assert eta_note(None, 40.0) == ""
