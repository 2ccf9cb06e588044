"""Where vigil's OpenStack drivers (Nova: ``vigil.drivers.openstack``, Neutron:
``vigil.drivers.neutron``) meet openstacksdk: what an exception of the libraries or an
HTTP error of a service becomes in vigil (``vigil.drivers.errors``), and the credentials
kept out of every message.

- before the service answered: the credentials refused, no endpoint in the catalog, a 4xx
  of Keystone -> ``PermanentError``; unreachable, timed out, a 5xx of Keystone ->
  ``TemporaryError``; any other SDK error -> ``PermanentError``;
- the service's answer: 401/403 and other 4xx -> ``PermanentError``; 404 -> ``NotFound``;
  409 (and what the caller counts as one) -> ``Conflict``; 429 and 5xx ->
  ``TemporaryError``.

openstacksdk raises its own exceptions for the proxies' resource calls, but the drivers
call the REST API through the SDK's adapters (``conn.compute.request``) so that what a
service answers does not change with the SDK's release; the translation is vigil's.
"""

from __future__ import annotations

from typing import Any

import openstack.exceptions
from keystoneauth1 import exceptions as ksa_exc

from vigil.drivers.errors import Conflict, DriverError, NotFound, PermanentError, TemporaryError

#: what may be raised while a request is made (``Boundary.translate`` takes them)
LIBRARY_ERRORS = (ksa_exc.ClientException, openstack.exceptions.SDKException)


def _secrets(conn: Any) -> list[str]:
    """Values that must never appear in a message: the password and such."""
    try:
        auth = conn.config.config.get("auth", {}) or {}
    except AttributeError:
        return []
    keys = ("password", "token", "application_credential_secret", "secret")
    return [str(v) for k, v in auth.items() if k in keys and v and len(str(v)) >= 4]


class Boundary:
    """The translation for one service (``service``: the catalog's kind, as "compute")."""

    def __init__(self, conn: Any, service: str) -> None:
        self._secrets = _secrets(conn)
        self._service = service

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def translate(self, exc: Exception, what: str) -> DriverError:
        """A library exception raised before the service answered, as a vigil error."""
        kind = type(exc).__name__
        if isinstance(exc, ksa_exc.Unauthorized | ksa_exc.AuthorizationFailure):
            return PermanentError(
                f"{what}: OpenStack refused the credentials ({kind}): check the cloud's "
                "username, password and project in clouds.yaml or OS_* variables"
            )
        if isinstance(exc, ksa_exc.EndpointNotFound):
            return PermanentError(
                f"{what}: no {self._service} endpoint in the service catalog ({kind})"
            )
        if isinstance(exc, ksa_exc.HttpError) and exc.http_status and exc.http_status < 500:
            return PermanentError(f"{what}: identity service answered {exc.http_status} ({kind})")
        if isinstance(exc, ksa_exc.ConnectionError | ksa_exc.HttpError | ksa_exc.ClientException):
            # unreachable, timed out, or a 5xx from Keystone: worth retrying
            return TemporaryError(self.scrub(f"{what}: OpenStack unreachable: {kind}: {exc}"))
        if isinstance(exc, openstack.exceptions.SDKException):
            return PermanentError(self.scrub(f"{what}: {kind}: {exc}"))
        return TemporaryError(self.scrub(f"{what}: {kind}: {exc}"))

    def raise_for(
        self,
        status: int,
        what: str,
        message: str,
        *,
        conflict: bool = False,
        forbidden: str = "",
    ) -> None:
        """Raise what an error answer means (nothing below 400). ``message`` is the
        service's own sentence; ``conflict``: the caller reads this answer as a 409;
        ``forbidden``: what to add to a 403 (the role vigil's account needs)."""
        if status < 400:
            return
        message = self.scrub(message)
        if status == 401:
            raise PermanentError(f"{what}: 401 Unauthorized: the credentials were refused")
        if status == 403:
            raise PermanentError(f"{what}: 403 Forbidden: {message}{forbidden}")
        if status == 404:
            raise NotFound(f"{what}: {message}")
        if status == 409 or conflict:
            raise Conflict(f"{what}: {status}: {message}")
        if status == 429 or status >= 500:
            raise TemporaryError(f"{what}: {status}: {message}")
        raise PermanentError(f"{what}: {status}: {message}")
