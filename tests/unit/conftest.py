"""Fixtures of the unit tests."""

import os

import pytest


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No FEEDLOOP_* variable of the shell; a var dir and a settings file of the test's own. The tmp_path."""
    for name in list(os.environ):
        if name.startswith("FEEDLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FEEDLOOP_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("FEEDLOOP_CONFIG", str(tmp_path / "feedloop.yaml"))
    return tmp_path
