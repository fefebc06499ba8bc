-- Validated feedback events, one row per event_id (exactly once), by event-time day and hour.
-- Written by the streaming sink (spark/stream_events.py); unknown fields kept in `extra`.
CREATE TABLE IF NOT EXISTS feedloop.events (
  event_id       STRING COMMENT 'uuid, unique',
  event_type     STRING COMMENT 'impression|click|dwell|view|cart|like|purchase|search',
  user_id        STRING,
  item_id        STRING COMMENT 'null for search',
  ts             BIGINT COMMENT 'event time, ms since epoch (UTC)',
  dwell_ms       BIGINT COMMENT 'dwell only, >= 0',
  query          STRING COMMENT 'search only',
  session_id     STRING,
  feed_id        STRING COMMENT 'attribution to a served feed',
  position       INT,
  model_version  STRING COMMENT 'model version of the attributed feed',
  schema_version INT,
  extra          MAP<STRING, STRING> COMMENT 'fields not in schema v1, kept',
  kafka_partition INT,
  kafka_offset   BIGINT,
  ingested_at    BIGINT COMMENT 'ms since epoch when the sink wrote it'
)
PARTITIONED BY (dt STRING, hr INT)
STORED AS PARQUET;
