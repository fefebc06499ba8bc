"""--ds is exactly YYYY-MM-DD and a real day, for every job, with an error that names it."""

from __future__ import annotations

import argparse

import pytest

from feedloop.cli import build_parser
from feedloop.dates import iso_day
from spark import maintenance
from spark.features import parse_ds

BAD = ["20261130", "2026-W48-1", "2026-11-30T00:00", "2026-02-30", "2026-13-01", "26-11-30",
       "2026-11-30' OR '1'='1", "2026-11-30 ", ""]


def test_a_day_is_kept_as_written():
    assert iso_day("2026-11-30") == "2026-11-30"
    assert iso_day("2024-02-29") == "2024-02-29"


@pytest.mark.parametrize("value", BAD)
def test_anything_else_is_refused_naming_the_format(value):
    with pytest.raises(argparse.ArgumentTypeError, match="--ds"):
        iso_day(value)


@pytest.mark.parametrize("command", ["compact", "retention", "analyze", "train", "gate", "publish", "features"])
def test_every_job_command_refuses_a_bad_ds(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--ds", "2026-11-30' OR '1'='1"])
    assert exit_.value.code == 2
    assert "--ds must be a date written YYYY-MM-DD" in capsys.readouterr().err


@pytest.mark.parametrize("job", [maintenance.compact, maintenance.retention, maintenance.analyze])
def test_maintenance_jobs_check_ds_before_starting_spark(job):
    with pytest.raises(argparse.ArgumentTypeError, match="YYYY-MM-DD"):
        job(argparse.Namespace(ds="2026-11-30'; DROP TABLE events; --", keep_days=1))


def test_spark_job_entry_points_refuse_a_bad_ds():
    assert parse_ds(["--ds", "2026-11-30"]) == "2026-11-30"
    with pytest.raises(SystemExit):
        parse_ds(["--ds", "2026/11/30"])
