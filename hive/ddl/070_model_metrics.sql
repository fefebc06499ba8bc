-- One row per model version and evaluation day.
CREATE TABLE IF NOT EXISTS feedloop.model_metrics (
  model_name    STRING,
  model_version STRING,
  run_id        STRING,
  metric        STRING,
  value         DOUBLE,
  is_champion   BOOLEAN,
  evaluated_at  BIGINT
)
PARTITIONED BY (dt STRING)
STORED AS PARQUET;
