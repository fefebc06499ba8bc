-- Weighted positive (user, item) pairs for day dt, with the time-based split.
CREATE TABLE IF NOT EXISTS feedloop.training_examples (
  user_id  STRING,
  item_id  STRING,
  weight   DOUBLE COMMENT 'view 1, cart 3, like 4, purchase 5, click/dwell by dwell time',
  ts       BIGINT,
  split    STRING COMMENT 'train|holdout'
)
PARTITIONED BY (dt STRING)
STORED AS PARQUET;
