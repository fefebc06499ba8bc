"""bench.closed_loop runs end to end on a tiny world and reports what it measured."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tensorflow")

from bench import closed_loop  # noqa: E402


def test_z_score_of_two_proportions():
    assert closed_loop.z_score(300, 1000, 200, 1000) == pytest.approx(5.164, abs=0.001)  # 0.1 / sqrt(0.25 * 0.75 * 2 / 1000)
    assert closed_loop.z_score(100, 1000, 100, 1000) == 0.0
    assert closed_loop.z_score(0, 0, 5, 10) == 0.0


def test_a_tiny_run_reports_both_arms_curves_and_the_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    from feedloop.settings import get_settings

    get_settings.cache_clear()
    try:
        code = closed_loop.main(["--users", "300", "--items", "120", "--history-actions", "4000", "--rounds", "4",
                                 "--drift-round", "2", "--visits", "20", "--organic", "100", "--trend-items", "10",
                                 "--no-mlflow"])
    finally:
        get_settings.cache_clear()
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("ctr_learner", "ctr_frozen", "ctr_learner_after_drift", "ctr_frozen_after_drift"):
        assert 0.0 < result[key] < 1.0, (key, result)
    assert result["impressions"] == 2 * 20 * 4 * closed_loop.FEED_LIMIT
    assert result["trend_share_frozen_after_drift"] == 0.0  # the frozen feeds predate the trend
    assert result["updates_accepted"] + result["updates_rolled_back"] == 4
    assert (tmp_path / "bench" / "closed_loop.png").stat().st_size > 10_000
