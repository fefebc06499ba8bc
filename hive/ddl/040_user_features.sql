-- Offline user features for day dt (INSERT OVERWRITE of one partition).
CREATE TABLE IF NOT EXISTS feedloop.user_features (
  user_id        STRING,
  segment        STRING,
  events_1d      BIGINT,
  events_7d      BIGINT,
  events_30d     BIGINT,
  clicks_7d      BIGINT,
  impressions_7d BIGINT,
  ctr_7d         DOUBLE,
  dwell_ms_avg_7d DOUBLE,
  top_categories ARRAY<STRING>,
  last_event_ts  BIGINT
)
PARTITIONED BY (dt STRING)
STORED AS PARQUET;
