import socket

import pytest

from feedloop import services
from feedloop.settings import load_settings


def test_port_in_use_is_named_with_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        monkeypatch.setenv("FEEDLOOP_REDIS__PORT", str(port))
        with pytest.raises(services.ServiceError) as err:
            services.preflight(load_settings(), ["redis"])
    message = str(err.value)
    assert f"port {port} (redis.port)" in message and "FEEDLOOP_REDIS__PORT" in message


def test_missing_java_is_named(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    with pytest.raises(services.ServiceError, match="Java not found"):
        services.java_bin()


def test_every_service_has_a_command(monkeypatch, tmp_path):
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path))
    settings = load_settings()
    for svc in services.SERVICES:
        if svc.name.startswith("airflow-") or svc.name == "kafka":
            continue  # need generated Airflow config / resolved jars; covered by integration tests
        argv, env, _ = services.service_command(settings, svc.name)
        assert argv and argv[0]


def test_ddl_files_are_idempotent():
    for name, stmt in services.ddl_statements():
        assert "IF NOT EXISTS" in stmt.upper(), f"{name}: {stmt[:60]}"
