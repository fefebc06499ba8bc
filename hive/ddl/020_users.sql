-- User profiles: the segment inputs (gender, age, interests, first = top interest).
CREATE TABLE IF NOT EXISTS feedloop.users (
  user_id    STRING,
  gender     STRING COMMENT 'F|M|null',
  age        INT,
  occupation STRING,
  interests  ARRAY<STRING> COMMENT 'ordered, top interest first',
  created_at BIGINT
)
STORED AS PARQUET;
