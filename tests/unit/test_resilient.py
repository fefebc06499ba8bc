"""The streaming apps' driver loop rides out a Kafka or metastore outage (pure logic, fake queries)."""

import pytest
from pyspark.errors import StreamingQueryException

from spark import resilient
from spark.resilient import dependency_of, run_resilient, wait_for

KAFKA_POSITION = ("[STREAM_FAILED] Query events_to_hive_and_redis terminated with exception: Timeout of 60000ms "
                  "expired before the position for partition feedback.events-0 could be determined")
KAFKA_FETCH = ("Job aborted due to stage failure: Lost task 1.0: java.util.concurrent.TimeoutException: Cannot fetch "
               "record for offset 1234 in 120000 milliseconds")
METASTORE = "MetaException(message:Could not connect to meta store using any of the URIs provided. Connection refused)"


def test_failures_name_the_dependency_they_wait_for():
    assert dependency_of(KAFKA_POSITION) == "kafka"
    assert dependency_of(KAFKA_FETCH) == "kafka"
    assert dependency_of(METASTORE) == "metastore"
    assert dependency_of("java.lang.OutOfMemoryError: Java heap space") is None


def test_wait_for_backs_off_and_says_what_it_waits_for():
    answers = iter([False, False, False, True])
    now = [0.0]
    slept, logged = [], []

    def sleep(s):
        slept.append(s)
        now[0] += s

    waited = wait_for("kafka", lambda: next(answers), log=logged.append, sleep=sleep, clock=lambda: now[0])
    assert slept == [1, 2, 4] and waited == 7
    assert all("waiting for kafka" in line for line in logged)
    assert resilient.backoff(50) == 30  # capped


class Query:
    def __init__(self, progress=None):
        self.isActive, self.lastProgress, self.stopped = True, progress, False

    def stop(self):
        self.isActive, self.stopped = False, True


class Streams:
    def __init__(self, outcomes):
        self.outcomes, self.resets = list(outcomes), 0

    def awaitAnyTermination(self):
        outcome = self.outcomes.pop(0)
        if outcome:
            raise StreamingQueryException(message=outcome)

    def resetTerminated(self):
        self.resets += 1


class Spark:
    def __init__(self, outcomes):
        self.streams = Streams(outcomes)


def run(outcomes, progress=None, checks=None):
    spark, started, logged = Spark(outcomes), [], []

    def start():
        started.append([Query(progress), Query(progress)])
        return started[-1]

    checks = checks or {"kafka": lambda: True, "metastore": lambda: True}
    run_resilient(spark, start, settings=None, app="stream-events", log=logged.append, checks=checks)
    return spark, started, logged


def test_a_kafka_timeout_restarts_the_queries_in_the_same_session_once_kafka_answers():
    answers = iter([True])
    spark, started, logged = run([KAFKA_POSITION, None], checks={"kafka": lambda: next(answers)})
    assert len(started) == 2 and all(q.stopped for q in started[0]) and spark.streams.resets == 1
    assert any("waiting for kafka" in line for line in logged)
    assert any("restarting the queries from their checkpoints" in line for line in logged)


def test_any_other_failure_still_ends_the_app():
    with pytest.raises(StreamingQueryException):
        run(["java.lang.OutOfMemoryError: Java heap space"])


def test_a_query_that_keeps_failing_without_a_trigger_ends_the_app():
    n = resilient.MAX_RESTARTS_WITHOUT_PROGRESS
    with pytest.raises(StreamingQueryException):
        run([KAFKA_FETCH] * (n + 1) + [None])
    _, started, _ = run([KAFKA_FETCH] * (n + 1) + [None], progress={"batchId": 1})  # progress resets the count
    assert len(started) == n + 2


def test_the_kafka_probe_is_a_valid_consumer_config_and_answers_false_fast(monkeypatch):
    import socket
    import time

    from kafka import KafkaConsumer
    from kafka.errors import KafkaConfigurationError

    from feedloop.settings import load_settings

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("FEEDLOOP_KAFKA__BOOTSTRAP", f"127.0.0.1:{port}")
    settings = load_settings()
    started = time.time()
    with pytest.raises(Exception) as err:  # no broker: a timeout, never an option kafka-python refuses
        KafkaConsumer(**resilient.probe_config(settings))
    assert not isinstance(err.value, KafkaConfigurationError), err.value
    assert not resilient.kafka_answers(settings) and time.time() - started < 20


def test_a_real_query_failing_on_the_metastore_is_restarted_and_replays_its_batch(tmp_path):
    """Local Spark, no services: the first attempt of batch 0 fails as the soak's did on a metastore restart;
    the loop restarts the query in the same session and batch 0 comes again, with the same id."""
    import threading
    import time

    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[1]").appName("test-resilient")
             .config("spark.sql.shuffle.partitions", "1").config("spark.ui.enabled", "false").getOrCreate())
    seen: list[int] = []

    def sink(batch_df, batch_id):
        seen.append(batch_id)
        if len(seen) == 1:
            raise RuntimeError("MetaException(message:Could not connect to meta store using any of the URIs)")

    def start():
        return [spark.readStream.format("rate").option("rowsPerSecond", 5).load().writeStream
                .foreachBatch(sink).option("checkpointLocation", str(tmp_path / "cp"))
                .trigger(processingTime="1 second").start()]

    def stop_after_replay():
        deadline = time.time() + 120
        while len(seen) < 3 and time.time() < deadline:
            time.sleep(0.2)
        for query in spark.streams.active:
            query.stop()

    logged: list[str] = []
    stopper = threading.Thread(target=stop_after_replay, daemon=True)
    stopper.start()
    try:
        run_resilient(spark, start, settings=None, app="test", log=logged.append,
                      checks={"kafka": lambda: True, "metastore": lambda: True})
    finally:
        stopper.join(10)
        spark.stop()
    assert seen[:2] == [0, 0], seen  # the failed batch replayed with its id
    assert any("because metastore did not answer" in line for line in logged), logged
