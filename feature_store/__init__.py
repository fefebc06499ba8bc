"""Feature and segment definitions shared by training and serving; online (Redis) store."""
