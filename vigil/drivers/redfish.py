"""The ``redfish`` fence driver: a host's power through its BMC's Redfish API, on sushy.

Power off is the ``ForceOff`` reset (a hard cut, never a graceful shutdown), power on is
``On``, and status reads the ComputerSystem's ``PowerState``; "PoweringOn"/"PoweringOff"
read UNKNOWN, so only a BMC that says "Off" counts as off.

Options (names follow fence_redfish and Pacemaker where they have one):

- ``address`` (required): the BMC's host name or IP, optionally ``host:port``, or a URL
  ``https://host[:port]`` (``http://`` is accepted for emulators; no user:password in it);
- ``ipport``: TCP port (default 443 for https, 80 for http);
- ``username`` (required), ``password`` or ``password_file`` (required, one of them);
- ``ssl_verify``: ``true`` (default) or ``false`` to accept any certificate;
- ``ca_bundle``: a file or directory of CA certificates to verify the BMC with;
- ``system_id``: the ComputerSystem's ``Id`` or ``@odata.id`` path; default: the only one;
- ``auth``: ``auto`` (default: a Redfish session if the BMC offers the SessionService,
  else HTTP basic), ``session`` or ``basic``;
- ``timeout``: seconds to wait for each answer (default 10); ``connect_timeout``: seconds
  to wait for a connection (default 5).

Errors: no connection, a timeout or a 5xx are TemporaryError; 401/403, a certificate
that does not verify, an unknown system or a BMC without ForceOff are PermanentError.
No message or log line of this module carries the password: library text is scrubbed.
Limits: one ComputerSystem per device (a chassis with several nodes needs one level per
node); sushy and its requests session are not shared between devices.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from vigil.drivers.errors import DriverError, NotFound, PermanentError, TemporaryError
from vigil.drivers.fence_options import (
    Option,
    Secret,
    check_options,
    check_secret_source,
    option_bool,
    option_number,
    read_secret,
    scrub,
)
from vigil.drivers.fencing import FenceDevice, PowerState

LOG = logging.getLogger(__name__)
T = TypeVar("T")

DRIVER = "redfish"
OPTIONS = (
    Option("address", "BMC host, host:port or https://host[:port]", required=True),
    Option("ipport", "TCP port of the BMC (default 443, or 80 for http://)", kind="port"),
    Option("username", "BMC account", required=True),
    Option("password", "BMC password (or password_file)"),
    Option("password_file", "file whose first line is the password", kind="path"),
    Option("ssl_verify", "verify the BMC's certificate (default true)", kind="bool"),
    Option("ca_bundle", "CA certificate file or directory to verify with", kind="path"),
    Option("system_id", "ComputerSystem Id or @odata.id (default: the only system)"),
    Option("auth", "auto, session or basic", kind="choice", choices=("auto", "session", "basic")),
    Option("timeout", "seconds to wait for an answer (default 10)", kind="number"),
    Option("connect_timeout", "seconds to wait for a connection (default 5)", kind="number"),
)
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0


def _base_url(options: Mapping[str, str]) -> str:
    """``scheme://host:port`` from ``address`` and ``ipport``; ValueError if malformed."""
    address = options["address"].strip()
    if "://" not in address:
        address = "https://" + address
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https"):
        raise ValueError("address must use https:// (or http://)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("address must not contain a user or password: use the options")
    if not parts.hostname:
        raise ValueError("address has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("address must be the BMC's scheme, host and port only")
    port = parts.port  # ValueError if not a number
    if options.get("ipport"):
        port = int(options["ipport"])
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def validate(options: Mapping[str, str]) -> list[str]:
    problems = check_options(DRIVER, OPTIONS, options)
    problems += check_secret_source(DRIVER, options, "password", required=True)
    if "address" in options:
        try:
            _base_url(options)
        except ValueError as exc:
            problems.append(f"{DRIVER}: option address: {exc}")
    if options.get("ca_bundle") and not option_bool(options, "ssl_verify", True):
        problems.append(f"{DRIVER}: ca_bundle is given but ssl_verify is false")
    return problems


def build(host: str, options: Mapping[str, str]) -> RedfishFenceDevice:
    """A device from validated ``options``; PermanentError naming the first problem."""
    problems = validate(options)
    if problems:
        raise PermanentError(f"host {host}: {problems[0]}")
    verify: bool | str = option_bool(options, "ssl_verify", True)
    if options.get("ca_bundle"):
        verify = options["ca_bundle"]
    return RedfishFenceDevice(
        base_url=_base_url(options),
        username=options["username"],
        password=read_secret(DRIVER, options, "password", required=True) or Secret(""),
        verify=verify,
        system_id=options.get("system_id") or None,
        auth=options.get("auth") or "auto",
        timeout=option_number(options, "timeout", DEFAULT_TIMEOUT),
        connect_timeout=option_number(options, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
    )


class RedfishFenceDevice(FenceDevice):
    """One ComputerSystem behind one Redfish BMC. Thread-safe: calls are serialised."""

    def __init__(
        self,
        *,
        base_url: str,
        username: str,
        password: Secret,
        verify: bool | str = True,
        system_id: str | None = None,
        auth: str = "auto",
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.base_url = base_url
        self._username = username
        self._password = password
        self._verify = verify
        self._system_id = system_id
        self._auth = auth
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._root: Any = None  # sushy.Sushy once connected
        self._system_path: str | None = None
        self.description = f"redfish {base_url}" + (f" system {system_id}" if system_id else "")

    # --------------------------------------------------------------------- FenceDevice

    def power_status(self) -> PowerState:
        return self._call("read the power state", lambda: _power_state(self._system()))

    def power_off(self) -> None:
        def off() -> None:
            sushy = _sushy()
            system = self._system()
            if _power_state(system) == PowerState.OFF:
                return
            self._reset(system, sushy.ResetType.FORCE_OFF)

        self._call("power off", off)

    def power_on(self) -> None:
        def on() -> None:
            sushy = _sushy()
            system = self._system()
            if _power_state(system) == PowerState.ON:
                return
            self._reset(system, sushy.ResetType.ON)

        self._call("power on", on)

    def close(self) -> None:
        """End the Redfish session, if any (also done when the device is collected)."""
        with self._lock:
            self._drop_root()

    # ------------------------------------------------------------------------ internals

    def _reset(self, system: Any, reset_type: Any) -> None:
        allowed = system.get_allowed_reset_system_values()
        if reset_type not in allowed:
            raise PermanentError(
                f"{self.description}: the BMC does not offer the {reset_type.value} reset "
                f"(offers: {', '.join(sorted(v.value for v in allowed))})"
            )
        system.reset_system(reset_type)

    def _connect(self) -> Any:
        if self._root is not None:
            return self._root
        sushy = _sushy()
        sushy_auth = sushy.auth
        auth_class = {
            "session": sushy_auth.SessionAuth,
            "basic": sushy_auth.BasicAuth,
        }.get(self._auth, sushy_auth.SessionOrBasicAuth)
        self._root = sushy.Sushy(
            self.base_url,
            auth=auth_class(username=self._username, password=self._password.reveal()),
            verify=self._verify,
            # One try per call: the engine retries a failed fence with its own backoff,
            # and a BMC that does not answer must fail within the timeouts given here.
            server_side_retries=1,
            server_side_retries_delay=0.5,
            read_timeout=self._timeout,
            connect_timeout=self._connect_timeout,
        )
        return self._root

    def _drop_root(self) -> None:
        """Forget the connection (and the system's path): the next call starts afresh."""
        root, self._root = self._root, None
        self._system_path = None
        if root is None:
            return
        try:
            root._auth.close()  # ends a Redfish session; a no-op for basic auth
        except Exception as exc:  # the BMC may be gone: nothing to do about it
            LOG.debug("%s: closing the session failed: %s", self.description, type(exc).__name__)
        with contextlib.suppress(Exception):  # closing a requests session does not fail
            root._conn.close()
        root._auth = None  # so that sushy's __del__ does not try again

    def _system(self) -> Any:
        root = self._connect()
        if self._system_path is None:
            if self._system_id is None:
                members = root.get_system_collection().members_identities
                if len(members) != 1:
                    raise PermanentError(
                        f"{self.description}: the BMC has {len(members)} systems: "
                        "set the option system_id"
                    )
                self._system_path = members[0]
            elif self._system_id.startswith("/"):
                self._system_path = self._system_id
            else:
                collection = root.get_system_collection()
                wanted = self._system_id.strip("/")
                matches = [
                    m for m in collection.members_identities if m.rstrip("/").endswith("/" + wanted)
                ]
                if not matches:
                    raise NotFound(f"{self.description}: the BMC has no system {wanted}")
                self._system_path = matches[0]
        # A fresh GET each time: the power state must be read now, not remembered.
        return root.get_system(self._system_path)

    def _call(self, what: str, action: Callable[[], T]) -> T:
        with self._lock:
            try:
                return action()
            except DriverError as exc:
                self._drop_root()
                raise type(exc)(scrub(str(exc), [self._password])) from None
            except Exception as exc:
                error = self._translate(what, exc)
                self._drop_root()
                LOG.debug("%s", error)
                raise error from None

    def _translate(self, what: str, exc: Exception) -> DriverError:
        """A driver error for a sushy/requests exception, its text scrubbed of secrets."""
        requests = _requests()
        sx = _sushy().exceptions
        prefix = f"{self.description}: cannot {what}"
        cause = exc.__cause__ or exc.__context__
        if isinstance(exc, sx.AccessError):
            if exc.status_code == 401:
                return PermanentError(
                    f"{prefix}: the BMC refused the login (HTTP 401): check username and password"
                )
            return PermanentError(
                f"{prefix}: the BMC refused the request (HTTP 403): check the account's "
                "privileges, username and password"
            )
        if isinstance(exc, (sx.ConnectionError, requests.RequestException)):
            if isinstance(cause, requests.exceptions.SSLError) or isinstance(
                exc, requests.exceptions.SSLError
            ):
                return PermanentError(
                    f"{prefix}: TLS verification failed: give the BMC's CA in ca_bundle "
                    "(or ssl_verify=false)"
                )
            if isinstance(cause, requests.Timeout) or isinstance(exc, requests.Timeout):
                return TemporaryError(f"{prefix}: the BMC did not answer in time")
            reason = type(cause).__name__ if cause is not None else type(exc).__name__
            return TemporaryError(f"{prefix}: the BMC cannot be reached ({reason})")
        if isinstance(exc, sx.ResourceNotFoundError):
            return NotFound(f"{prefix}: not found on the BMC (HTTP 404)")
        if isinstance(exc, sx.ServerSideError):
            return TemporaryError(f"{prefix}: the BMC failed (HTTP {exc.status_code})")
        if isinstance(exc, sx.HTTPError):
            detail = scrub(str(exc.detail or exc.code or ""), [self._password])[:300]
            status = exc.status_code
            error_class = TemporaryError if status in (409, 429, 503) else PermanentError
            return error_class(f"{prefix}: the BMC answered HTTP {status}: {detail}")
        if isinstance(exc, sx.SushyError):
            detail = scrub(str(exc), [self._password])[:300]
            return PermanentError(f"{prefix}: {detail}")
        detail = scrub(str(exc), [self._password])[:200]
        return TemporaryError(f"{prefix}: unexpected {type(exc).__name__}: {detail}")


def _sushy() -> Any:
    """sushy, imported when first used (vigil runs without it if no host uses Redfish)."""
    try:
        import sushy  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:  # pragma: no cover - an installation problem
        raise PermanentError("the redfish fence driver needs the sushy package") from exc
    return sushy


def _requests() -> Any:
    import requests  # type: ignore[import-untyped,import-not-found,unused-ignore]

    return requests


def _power_state(system: Any) -> PowerState:
    sushy = _sushy()
    state = system.power_state
    if state == sushy.PowerState.ON:
        return PowerState.ON
    if state == sushy.PowerState.OFF:
        return PowerState.OFF
    return PowerState.UNKNOWN
