"""The sink's Redis writes cut into bounded, replayable chunks (pure logic; the real Redis: test_aggregates)."""

from spark.stream_aggregates import (
    BatchAggregates, applied_chunks, batch_commands, chunk_key, chunks, command_groups, marker_key,
)


def agg(order=1):
    return BatchAggregates(
        panes_1m=[(0, "i2", 1.0), (0, "i1", 2.0)][::order], panes_5m=[(0, "i1", 3.0)],
        popular=[("i2", 1.0), ("i1", 2.0)][::order], user_stats=[("u2", "view", 1), ("u1", "click", 2)][::order],
        recent=[("u1", "i1", 5), ("u1", "i2", 7), ("u2", "i1", 3)][::order], events=3)


def test_commands_are_ordered_by_key_so_a_replay_cuts_the_same_chunks():
    assert batch_commands(agg(1)) == batch_commands(agg(-1))
    names = [c[0] for c in batch_commands(agg())]
    # 2+1 pane increments, 2 pane expiries, 2 popular, 2x2 user stats, 2 users x 3 recent commands
    assert len(names) == 3 + 2 + 2 + 4 + 6 and names.count("zadd") == 2


def test_chunks_are_bounded_and_never_none():
    cmds = list(range(10))
    assert chunks(cmds, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunks([], 4) == [[]]  # a batch with nothing to increment still closes (watermark, batch id)


class Store(dict):
    def get(self, key):
        return dict.get(self, key)

    def pipeline(self, transaction=False):
        return Pipe(self)


class Pipe(list):
    def __init__(self, store):
        super().__init__()
        self.store = store

    def get(self, key):
        self.append(key)

    def execute(self):
        return [self.store.get(k) for k in self]


M = marker_key("m")


def test_applied_chunks_reads_the_batch_marker_and_each_groups_partial_marker():
    assert applied_chunks(Store(), M, 0) == [0]
    assert applied_chunks(Store({M: "4"}), M, 4) is None  # applied: skipped
    assert applied_chunks(Store({M: "4"}), M, 3) is None  # older than the last applied
    assert applied_chunks(Store({M: "4", chunk_key(M): "5:2"}), M, 5) == [2]  # two chunks of 5 done
    assert applied_chunks(Store({M: "4", chunk_key(M): b"5:2"}), M, 6) == [0]  # a stale partial of another batch
    # on a Redis Cluster each slot group keeps its own, in its slot
    store = Store({M: "4", chunk_key(M, "u7"): "5:1", chunk_key(M): "5:3"})
    assert applied_chunks(store, M, 5, ["u7", "u9", "live"]) == [1, 0, 3]
    assert chunk_key(M, "u7") == "feedloop:{u7}:agg:batch:m:chunk"


def test_a_single_redis_keeps_one_group_with_the_live_group_closing():
    import redis

    cmds = batch_commands(agg())
    assert command_groups(redis.Redis(port=1), cmds) == [("live", cmds)]
    assert command_groups(redis.Redis(port=1), []) == [("live", [])]


class Recorder(list):
    """A pipeline that records its commands."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.append((name, args))


def stored_newest(batch_max_ts, now):
    from spark.stream_aggregates import _close_batch, watermark_key

    pipe = Recorder()
    _close_batch(pipe, M, 7, BatchAggregates([], [], [], [], [], events=1, max_ts=batch_max_ts), now)
    (script,) = [args for name, args in pipe if name == "execute_command"]
    assert script[2:4] == (1, watermark_key(M))
    return script[4]


def test_the_watermark_never_runs_ahead_of_the_wall_clock():
    from spark.stream_aggregates import read_watermark, watermark_key

    now = 1_800_000_000_000
    hours = 3600 * 1000
    # a batch of events stamped in the past stores its newest event time; one stamped ahead stores now
    assert stored_newest(now - 5_000, now) == now - 5_000
    assert stored_newest(now + 12 * hours, now) == now  # a day simulated up to its end (make demo's)
    # a newest time stored ahead of the clock (before the cap) reads as now: live events stay on time
    assert read_watermark(Store({watermark_key(M): str(now + 12 * hours)}), M, 600_000, now) == now - 600_000
    assert read_watermark(Store({watermark_key(M): str(now - hours)}), M, 600_000, now) == now - hours - 600_000
    assert read_watermark(Store(), M, 600_000, now) < 0  # nothing applied yet: nothing is late
