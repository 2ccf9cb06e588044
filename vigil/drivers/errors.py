"""The few errors a driver may raise to the engine."""

from __future__ import annotations


class DriverError(Exception):
    """Base of every driver error. ``str()`` is safe to log: it never carries a secret."""


class TemporaryError(DriverError):
    """Worth retrying after a delay: a timeout, a 5xx, a busy service, a refused connection."""


class PermanentError(DriverError):
    """Retrying will not help: a refusal by the service's rules, bad credentials, not found."""


class NotFound(PermanentError):
    """The host, service or instance does not exist (any more)."""


class Conflict(TemporaryError):
    """The service refuses now for a reason that may pass (e.g. Nova's compute service in use)."""
