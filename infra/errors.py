"""The one error the services layer raises: its message names the service, the setting and the log."""

from __future__ import annotations


class ServiceError(RuntimeError):
    """A service could not be started; the message says which and where to look."""
