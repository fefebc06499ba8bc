"""PySpark batch and streaming jobs: pure transforms plus a thin main()."""
