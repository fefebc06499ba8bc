"""Online learner's consumer loop: a Spark Structured Streaming query on the events topic.

``feedloop stream-learner [--once]``. Spark is only the Kafka consumer here (offsets,
replay after a crash); each micro-batch goes to
:class:`models.online_service.LearnerSink` (learn, publish, checkpoint; its docstring
says how), and a replayed batch is skipped by the sink's checkpoint.
"""

from __future__ import annotations

from feature_store.offline import get_spark
from feedloop.settings import get_settings
from models.online_service import LEARN_TYPES, ChampionCache, LearnerSink, WarmUp
from spark.resilient import heartbeat_listener, kafka_answers, run_resilient
from spark.stream_events import checkpoint_dir

APP_NAME = "feedloop-stream-learner"
TRIGGER_S = 2


def main(args) -> int:
    settings = get_settings()
    # TensorFlow and the champion's towers load in a thread while the JVM starts (models.online_service.WarmUp)
    warm_up = WarmUp(settings, ChampionCache(settings.var / "online"))
    spark = get_spark(APP_NAME, with_kafka=True, settings=settings)
    spark.conf.set("spark.sql.shuffle.partitions", "2")
    k = settings.kafka
    sink = LearnerSink(spark, settings, warm_up=warm_up)
    listener = heartbeat_listener(settings, "stream-learner")
    spark.streams.addListener(listener)

    def start() -> list:
        reader = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", k.bootstrap)
                  .option("subscribe", k.events_topic)
                  .option("startingOffsets", "latest")  # the learner follows the present; history is the daily job's
                  .option("maxOffsetsPerTrigger", 50_000)
                  .option("kafka.request.timeout.ms", k.request_timeout_ms * 6)
                  .option("failOnDataLoss", "false")
                  .load())
        writer = (reader.writeStream.foreachBatch(sink).queryName("events_to_learner")
                  .option("checkpointLocation", checkpoint_dir(settings, "stream-learner").as_uri()))
        writer = writer.trigger(availableNow=True) if args.once else writer.trigger(processingTime=f"{TRIGGER_S} seconds")
        return [writer.start()]

    print(f"learning from {k.events_topic} ({', '.join(LEARN_TYPES)}); state in {sink.checkpoint.root}", flush=True)
    if args.once:
        start()[0].awaitTermination()
    else:  # a Kafka outage: wait for it and restart the query here (spark.resilient)
        run_resilient(spark, start, settings, "stream-learner", log=lambda m: print(m, flush=True),
                      checks={"kafka": lambda: kafka_answers(settings), "metastore": lambda: True})
    spark.streams.removeListener(listener)  # no callback into a Python that is exiting
    warm_up.join()  # never exit in the middle of its imports
    t = sink.totals
    print(f"stream-learner done: {t['batches']} batches, {t['events']} click/dwell events, {t['accepted']} updates "
          f"accepted, {t['refused']} refused, {t['reset']} resets to the champion, {t['published']} segment feeds "
          f"published")
    return 0


