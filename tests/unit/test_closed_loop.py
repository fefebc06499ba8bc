"""bench.closed_loop runs end to end on a tiny world and reports what it measured, per seed and over seeds."""

from __future__ import annotations

import json

import pytest

from bench import closed_loop


def test_z_score_of_two_proportions():
    assert closed_loop.z_score(300, 1000, 200, 1000) == pytest.approx(5.164, abs=0.001)  # 0.1 / sqrt(0.25 * 0.75 * 2 / 1000)
    assert closed_loop.z_score(100, 1000, 100, 1000) == 0.0
    assert closed_loop.z_score(0, 0, 5, 10) == 0.0


def _result(seed: int, learner: float, frozen: float, z: float) -> dict:
    return {"seed": seed, "ctr_learner_after_drift": learner, "ctr_frozen_after_drift": frozen, "z_after_drift": z,
            "seconds": 1.0, **{k: 0.0 for k in closed_loop.SUMMARISED if k not in ("ctr_learner_after_drift",
                                                                                "ctr_frozen_after_drift",
                                                                                "z_after_drift")}}


def test_seeds_are_summarised_by_mean_and_std_and_beating_needs_every_seed():
    results = [_result(7, 0.28, 0.20, 20.0), _result(11, 0.26, 0.20, 15.0), _result(23, 0.24, 0.20, 10.0)]
    summary = closed_loop.summarise(results)
    assert summary["seeds"] == [7, 11, 23] and summary["per_seed"] == results
    assert summary["mean"]["ctr_learner_after_drift"] == pytest.approx(0.26)
    assert summary["std"]["ctr_learner_after_drift"] == pytest.approx(0.02)  # sample std (ddof 1)
    assert summary["beats_every_seed"]
    # one seed where the learner is ahead but not significantly, one where it is behind: not every seed
    assert not closed_loop.summarise(results + [_result(5, 0.21, 0.20, 1.5)])["beats_every_seed"]
    assert not closed_loop.summarise(results + [_result(5, 0.19, 0.20, 3.0)])["beats_every_seed"]


def test_a_tiny_run_reports_both_arms_curves_and_the_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    from feedloop.settings import get_settings

    get_settings.cache_clear()
    try:
        code = closed_loop.main(["--users", "300", "--items", "120", "--history-actions", "4000", "--rounds", "4",
                                 "--drift-round", "2", "--visits", "20", "--organic", "100", "--trend-items", "10",
                                 "--seeds", "7", "--no-mlflow"])
    finally:
        get_settings.cache_clear()
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["seeds"] == [7] and set(summary["mean"]) == set(closed_loop.SUMMARISED)
    result = summary["per_seed"][0]
    for key in ("ctr_learner", "ctr_frozen", "ctr_learner_after_drift", "ctr_frozen_after_drift"):
        assert 0.0 < result[key] < 1.0, (key, result)
    assert result["impressions"] == 2 * 20 * 4 * closed_loop.FEED_LIMIT
    assert result["trend_share_frozen_after_drift"] == 0.0  # the frozen feeds predate the trend
    assert result["updates_accepted"] + result["updates_refused"] == 4 and result["resets"] == 0
    assert (tmp_path / "bench" / "closed_loop_seed7.png").stat().st_size > 10_000
