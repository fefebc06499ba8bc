-- The feedloop database. Safe to re-run.
CREATE DATABASE IF NOT EXISTS feedloop COMMENT 'feedloop warehouse: events, users, items, features, models, served feeds';
