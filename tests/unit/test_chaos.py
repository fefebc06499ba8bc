"""bench.chaos's pure helpers: the kill schedule, feed-read classes and the report arithmetic."""

from bench import chaos


def test_kill_order_covers_every_component_once_per_cycle_and_is_seeded():
    n = len(chaos.COMPONENTS)
    order = chaos.kill_order(13, 2 * n + 3)
    assert sorted(order[:n]) == sorted(chaos.COMPONENTS)
    assert sorted(order[n:2 * n]) == sorted(chaos.COMPONENTS)
    assert all(a != b for a, b in zip(order, order[1:]))
    assert order == chaos.kill_order(13, 2 * n + 3)
    assert order != chaos.kill_order(14, 2 * n + 3)


def test_kill_times_start_after_the_baseline_and_stay_inside_the_soak():
    assert chaos.kill_times(30 * 60, 60, 120) == [60 + 120 * k for k in range(15)]
    assert chaos.kill_times(60, 60, 120) == []
    assert chaos.kill_times(4 * 60, 60, 120) == [60, 180]


def test_classify_read():
    assert chaos.classify_read("200", 3.0) == "200"
    assert chaos.classify_read("503", 0.02) == "503_fast"
    assert chaos.classify_read("503", chaos.GOAL_503_S + 0.01) == "503_slow"
    assert chaos.classify_read("conn_refused", 0.001) == "conn_refused_fast"
    assert chaos.classify_read("conn_refused", 1.5) == "conn_refused_slow"
    assert chaos.classify_read("conn_error", 0.2) == "conn_error_fast"
    assert chaos.classify_read("conn_error", 4.0) == "conn_error_slow"
    assert chaos.classify_read("timeout", 5.0) == "timeout"
    assert chaos.classify_read("500", 0.01) == "status_500"


def test_read_stats_counts_violations_and_latencies_in_the_window():
    reads = [(0.5, "200", 0.010), (1.0, "200", 0.030), (2.0, "503", 0.005), (3.0, "503", 2.0),
             (4.0, "500", 0.01), (5.0, "conn_refused", 0.001), (6.0, "timeout", 5.0), (99.0, "500", 0.01)]
    stats = chaos.read_stats(reads, 0, 10)
    assert stats["reads"] == 7
    assert stats["by_class"] == {"200": 2, "503_fast": 1, "503_slow": 1, "conn_refused_fast": 1,
                                 "status_500": 1, "timeout": 1}
    assert stats["violations"] == 3  # the slow 503, the 500, the timeout
    assert stats["success_share"] == round(2 / 7, 4)
    assert stats["p50_200_ms"] == 20.0
    assert stats["max_503_ms"] == 2000.0
    assert chaos.read_stats(reads, 0, 1.5)["violations"] == 0
    assert chaos.read_stats([], 0, 1)["success_share"] is None


def test_outage_summary_longest_and_unrecovered():
    kills = [{"component": "redis", "killed": True, "down_s": 3.0},
             {"component": "redis", "killed": True, "down_s": 7.5},
             {"component": "kafka", "killed": True, "down_s": None},
             {"component": "api", "killed": False}]
    summary = chaos.outage_summary(kills)
    assert summary["redis"] == {"kills": 2, "longest_s": 7.5, "recovered": True}
    assert summary["kafka"]["recovered"] is False
    assert summary["api"] == {"kills": 0, "longest_s": None, "recovered": None}
    sink = chaos.outage_summary([{"component": "stream-events", "killed": True, "down_s": 10.0, "first_batch_s": 300.0},
                                 {"component": "stream-events", "killed": True, "down_s": 11.0}])["stream-events"]
    assert sink["longest_to_first_batch_s"] == 300.0 and sink["kills_without_batch"] == 1


def test_verdict_needs_every_condition():
    assert chaos.verdict(100, 100, 0, 0, "success", True)
    assert not chaos.verdict(100, 99, 0, 0, "success", True)
    assert not chaos.verdict(100, 101, 1, 0, "success", True)
    assert not chaos.verdict(100, 100, 0, 1, "success", True)
    assert not chaos.verdict(100, 100, 0, 0, "failed", True)
    assert not chaos.verdict(100, 100, 0, 0, "success", False)
    assert not chaos.verdict(100, None, None, 0, "success", True)


def test_days_between():
    day = 86_400_000
    assert chaos.days_between(20 * day + 5, 20 * day + 9) == ["1970-01-21"]
    assert chaos.days_between(20 * day - 1, 20 * day) == ["1970-01-20", "1970-01-21"]
