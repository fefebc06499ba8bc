"""MLflow's basic-auth app: its config, the admin's login, kept in sync with the settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

from feedloop.settings import Settings
from infra.errors import ServiceError

MLFLOW_MIN_PASSWORD = 12  # mlflow.utils.validation refuses shorter passwords


def mlflow_auth_db(settings: Settings) -> str:
    return f"sqlite:///{settings.var / 'mlflow' / 'basic_auth.db'}"


def _write_mlflow_auth_config(settings: Settings) -> Path:
    """MLflow's basic-auth config: its user DB under var/mlflow; the admin's password is not in it."""
    path = settings.var / "mlflow" / "basic_auth.ini"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {mlflow_auth_db(settings)}\n"
        f"admin_username = {settings.mlflow.admin_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return path


def mlflow_auth_env(settings: Settings) -> dict[str, str]:
    """The environment of the MLflow server: the basic-auth app's config and the admin's login."""
    password = settings.mlflow.admin_password
    if len(password) < MLFLOW_MIN_PASSWORD:
        raise ServiceError(f"setting mlflow.admin_password is {'empty' if not password else 'too short'} (MLflow "
                           f"wants {MLFLOW_MIN_PASSWORD} characters or more): set FEEDLOOP_MLFLOW__ADMIN_PASSWORD "
                           "or let `feedloop up` generate var/secrets/mlflow__admin_password")
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(_write_mlflow_auth_config(settings)),
        "MLFLOW_AUTH_ADMIN_USERNAME": settings.mlflow.admin_user,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        # signs the UI's CSRF tokens; derived, so one secret less to manage
        "MLFLOW_FLASK_SERVER_SECRET_KEY": hashlib.sha256(f"feedloop:mlflow-flask:{password}".encode()).hexdigest(),
    }


def sync_mlflow_admin(settings: Settings) -> None:
    """Make the admin's password in MLflow's user DB the configured one.

    MLflow creates the admin from MLFLOW_AUTH_ADMIN_PASSWORD only into an empty user DB;
    a password changed since (a new secret, FEEDLOOP_MLFLOW__ADMIN_PASSWORD) would
    otherwise lock every feedloop client out.
    """
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(mlflow_auth_db(settings))
    user = settings.mlflow.admin_user
    if store.has_user(user):
        store.update_user(user, password=settings.mlflow.admin_password, is_admin=True)

