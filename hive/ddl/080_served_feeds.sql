-- What was served to whom, by which model version (for CTR and A/B).
CREATE TABLE IF NOT EXISTS feedloop.served_feeds (
  feed_id       STRING,
  user_id       STRING,
  segment       STRING,
  source        STRING COMMENT 'user|segment|trending|popular',
  model_version STRING,
  items         ARRAY<STRING>,
  served_at     BIGINT
)
PARTITIONED BY (dt STRING)
STORED AS PARQUET;
