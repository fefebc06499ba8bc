"""The services feedloop runs on one machine: definitions, command lines, supervision,
health checks, preflight and `feedloop up/down/status` (one module per concern; see
docs/layout.md). Beside the Python: install.sh, the Maven poms for the JVM jars, the
metastore launcher and HiveServer2's password provider."""
