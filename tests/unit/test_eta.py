"""feedloop.eta: the progress lines the benches and `feedloop backfill` print."""

import io

from feedloop import eta


def test_step_lines_count_and_give_an_eta_from_the_steps_so_far(monkeypatch):
    clock = iter([0.0, 10.0, 20.0, 30.0])
    monkeypatch.setattr(eta.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    steps = eta.Steps("bench.x", 4, out=out)
    first = steps.step("seed 1")
    second = steps.step("seed 2")
    assert first == "[bench.x] 1/4 [00:10 elapsed, ETA 00:30] seed 1"
    assert second == "[bench.x] 2/4 [00:20 elapsed, ETA 00:20] seed 2"
    assert steps.summary("ndcg 0.47") == "[bench.x] done in 00:30: ndcg 0.47"
    assert out.getvalue().splitlines() == [first, second, "[bench.x] done in 00:30: ndcg 0.47"]


def test_without_a_total_there_is_no_eta(monkeypatch):
    clock = iter([0.0, 5.0])
    monkeypatch.setattr(eta.time, "monotonic", lambda: next(clock))
    line = eta.Steps("bench.y", None, out=io.StringIO()).step("batch")
    assert line == "[bench.y] 1 [00:05 elapsed] batch"
    assert "ETA" not in line


def test_at_sets_the_count_for_time_bounded_work(monkeypatch):
    clock = iter([0.0, 60.0])
    monkeypatch.setattr(eta.time, "monotonic", lambda: next(clock))
    line = eta.Steps("bench.chaos", 600, out=io.StringIO()).at(60, "soak")
    assert line == "[bench.chaos] 60/600 [01:00 elapsed, ETA 09:00] soak"
