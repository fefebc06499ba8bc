"""The feed API (FastAPI over Redis). Never imports TensorFlow or Spark."""
