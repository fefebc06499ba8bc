-- Item catalogue.
CREATE TABLE IF NOT EXISTS feedloop.items (
  item_id    STRING,
  title      STRING,
  category   STRING,
  keywords   ARRAY<STRING>,
  price      DOUBLE,
  created_at BIGINT COMMENT 'ms since epoch'
)
STORED AS PARQUET;
