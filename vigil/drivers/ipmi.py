"""The ``ipmi`` fence driver: a host's power through its BMC over IPMI 2.0 (lanplus), on pyghmi.

Power off is the standard Chassis Control "power down" (a hard cut, not the soft
shutdown), power on is "power up", status is bit 0 of Get Chassis Status. Only those
three standard commands are sent — no OEM extension — so it works with any IPMI 2.0 BMC
that ``ipmitool -I lanplus chassis power`` works with.

Options (names follow fence_ipmilan and Pacemaker where they have one):

- ``address`` (required): the BMC's host name or IP;
- ``ipport``: UDP port (default 623);
- ``username`` (default: the anonymous user), ``password`` or ``password_file`` (required);
- ``kg_key`` or ``kg_key_file``: the BMC's K_g key, if it has one (text, as ipmitool -k);
- ``privilege``: ``operator`` or ``administrator``; default: administrator, falling back
  to operator when the BMC refuses it;
- ``timeout``: seconds one operation may take, login included (default 10).

Errors: silence (no answer, a closed port), timeouts and busy BMCs are TemporaryError; a
wrong password, an unknown user and a missing privilege are PermanentError. Messages
never carry the password or K_g key.

Limits: pyghmi answers SHA-256 cipher proposals only when the BMC accepts them; some BMCs
(virtualbmc among them) answer SHA-1 in the open-session response, and this module then
follows the BMC's choice (see ``_Session``). An operation that outlives ``timeout`` is
abandoned (its thread ends by pyghmi's own retry timers, within seconds) and reported as
a TemporaryError; the BMC may still carry it out, which is harmless for power off.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from vigil.drivers.errors import DriverError, PermanentError, TemporaryError
from vigil.drivers.fence_options import (
    Option,
    Secret,
    check_options,
    check_secret_source,
    option_number,
    read_secret,
    scrub,
)
from vigil.drivers.fencing import FenceDevice, PowerState

LOG = logging.getLogger(__name__)
T = TypeVar("T")

DRIVER = "ipmi"
OPTIONS = (
    Option("address", "BMC host name or IP", required=True),
    Option("ipport", "UDP port (default 623)", kind="port"),
    Option("username", "BMC user (default: anonymous)"),
    Option("password", "BMC password (or password_file)"),
    Option("password_file", "file whose first line is the password", kind="path"),
    Option("kg_key", "the BMC's K_g key, if set (or kg_key_file)"),
    Option("kg_key_file", "file whose first line is the K_g key", kind="path"),
    Option(
        "privilege",
        "operator or administrator (default: administrator, else operator)",
        kind="choice",
        choices=("operator", "administrator"),
    ),
    Option("timeout", "seconds an operation may take (default 10)", kind="number"),
)
DEFAULT_TIMEOUT = 10.0
PRIVILEGES = {"operator": 3, "administrator": 4}

# IPMI: netfn chassis; Get Chassis Status and Chassis Control with its directives.
NETFN_CHASSIS = 0x00
GET_CHASSIS_STATUS = 0x01
CHASSIS_CONTROL = 0x02
POWER_DOWN = 0x00
POWER_UP = 0x01

# Completion codes that say "your request is wrong for good" (others may pass).
PERMANENT_CODES = {
    0xC1: "command not supported",
    0xD4: "insufficient privilege",
    0xD6: "command not available",
}
LOGIN_UNANSWERED = "the BMC stopped answering the login"
# Login failures (pyghmi's texts of RMCP+ status codes) that retrying will not fix.
LOGIN_REFUSALS = {
    "incorrect password": "the BMC refused the login: wrong password (or K_g key)",
    "unauthorized name": "the BMC refused the login: unknown username",
    "invalid username length": "the BMC refused the login: username longer than 16",
    "unauthorized role": "the BMC refused the privilege level: set the option privilege",
    "invalid role": "the BMC refused the privilege level: set the option privilege",
    "username too long": "username longer than 16 characters",
}


def validate(options: Mapping[str, str]) -> list[str]:
    problems = check_options(DRIVER, OPTIONS, options)
    problems += check_secret_source(DRIVER, options, "password", required=True)
    problems += check_secret_source(DRIVER, options, "kg_key", required=False)
    if len(options.get("username", "").encode()) > 16:
        problems.append(f"{DRIVER}: option username must be at most 16 bytes (IPMI)")
    address = options.get("address", "")
    if address and ("/" in address or " " in address):
        problems.append(f"{DRIVER}: option address must be a host name or IP address")
    return problems


def build(host: str, options: Mapping[str, str]) -> IpmiFenceDevice:
    """A device from validated ``options``; PermanentError naming the first problem."""
    problems = validate(options)
    if problems:
        raise PermanentError(f"host {host}: {problems[0]}")
    privilege = options.get("privilege")
    return IpmiFenceDevice(
        address=options["address"].strip().strip("[]"),
        port=int(options.get("ipport") or 623),
        username=options.get("username", ""),
        password=read_secret(DRIVER, options, "password", required=True) or Secret(""),
        kg_key=read_secret(DRIVER, options, "kg_key", required=False),
        privilege=PRIVILEGES[privilege] if privilege else None,
        timeout=option_number(options, "timeout", DEFAULT_TIMEOUT),
    )


class IpmiFenceDevice(FenceDevice):
    """One host's IPMI BMC. Thread-safe: operations on one device are serialised."""

    def __init__(
        self,
        *,
        address: str,
        port: int = 623,
        username: str = "",
        password: Secret,
        kg_key: Secret | None = None,
        privilege: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.address = address
        self.port = port
        self._username = username
        self._password = password
        self._kg_key = kg_key
        self._privilege = privilege
        self._timeout = timeout
        self._lock = threading.Lock()
        self._session: Any = None
        self.description = f"ipmi {address}:{port}"

    # --------------------------------------------------------------------- FenceDevice

    def power_status(self) -> PowerState:
        return self._call("read the power state", self._read_power)

    def power_off(self) -> None:
        def off() -> None:
            if self._read_power() != PowerState.OFF:
                self._command(CHASSIS_CONTROL, [POWER_DOWN])

        self._call("power off", off)

    def power_on(self) -> None:
        def on() -> None:
            if self._read_power() != PowerState.ON:
                self._command(CHASSIS_CONTROL, [POWER_UP])

        self._call("power on", on)

    def close(self) -> None:
        """Log out of the BMC (sessions also time out on the BMC by themselves)."""
        with self._lock:
            self._drop_session(logout=True)

    # ------------------------------------------------------------------------ internals

    def _read_power(self) -> PowerState:
        data = self._command(GET_CHASSIS_STATUS, [])
        if not data:
            return PowerState.UNKNOWN
        return PowerState.ON if data[0] & 0x01 else PowerState.OFF

    def _open(self) -> Any:
        session = self._session
        if session is not None and session.logged and not session.broken:
            return session
        self._drop_session(logout=False)
        kg = self._kg_key.reveal().encode() if self._kg_key else None
        # Bytes, not str: pyghmi files a session being set up under the credentials as
        # given and removes it under their encoded form, so with str a finished login
        # stays "being set up" and the next session for the same BMC waits on it forever.
        for attempt in (1, 2):
            try:
                self._session = _session_class()(
                    bmc=self.address,
                    userid=self._username.encode(),
                    password=self._password.reveal().encode(),
                    port=self.port,
                    kg=kg,
                    privlevel=self._privilege,
                    keepalive=False,
                )
                break
            except AttributeError as exc:
                # pyghmi (1.6.19) can mark a session broken on a path that sets no error
                # message, and then fails with AttributeError ('errormsg') instead of its
                # IpmiException: the BMC's answer (say, a wrong password) is lost. Seen
                # now and then in CI; one more login gives the answer.
                if "errormsg" not in str(exc) or attempt == 2:
                    raise
                LOG.debug("%s: pyghmi lost the login's error; logging in again", self.description)
        return self._session

    def _drop_session(self, *, logout: bool) -> None:
        session, self._session = self._session, None
        if session is not None and logout:
            try:
                session.logout()
            except Exception as exc:  # the BMC may be gone
                LOG.debug("%s: logout failed: %s", self.description, type(exc).__name__)

    def _command(self, command: int, data: list[int]) -> bytes:
        session = self._open()
        response = session.raw_command(netfn=NETFN_CHASSIS, command=command, data=data)
        code = int(response.get("code", 0) or 0)
        if "error" in response or code:
            meaning = PERMANENT_CODES.get(code)
            if meaning is not None:
                raise PermanentError(f"the BMC refused: {meaning} (completion code {code:#04x})")
            raise TemporaryError(f"the BMC answered completion code {code:#04x}")
        return bytes(response.get("data", b""))

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action`` in a helper thread, bounded by the timeout; translate errors."""
        if not self._lock.acquire(timeout=self._timeout):
            raise TemporaryError(f"{self.description}: cannot {what}: an earlier call still runs")
        outcome: list[T] = []
        failure: list[DriverError] = []

        def run() -> None:
            try:
                outcome.append(action())
            except Exception as exc:
                failure.append(self._translate(what, exc))
            finally:
                self._lock.release()

        worker = threading.Thread(target=run, name=f"ipmi {self.address}", daemon=True)
        try:
            worker.start()
        except BaseException:
            self._lock.release()
            raise
        worker.join(self._timeout)
        if worker.is_alive():
            raise TemporaryError(
                f"{self.description}: cannot {what}: no answer within {self._timeout:g}s"
            )
        if outcome:
            return outcome[0]
        error = failure[0] if failure else TemporaryError(f"{self.description}: {what} failed")
        LOG.debug("%s", error)
        raise error

    def _translate(self, what: str, exc: Exception) -> DriverError:
        """Called with the lock held: the session is dropped, the next call logs in anew."""
        prefix = f"{self.description}: cannot {what}"
        secrets = [self._password, self._kg_key]
        self._drop_session(logout=False)
        if isinstance(exc, DriverError):
            return type(exc)(f"{prefix}: {scrub(str(exc), secrets)}")
        text = scrub(str(exc) if str(exc) != "None" else "", secrets)
        lowered = text.lower()
        for needle, meaning in LOGIN_REFUSALS.items():
            if needle in lowered:
                return PermanentError(f"{prefix}: {meaning}")
        if isinstance(exc, OSError):
            return TemporaryError(f"{prefix}: network error ({type(exc).__name__})")
        if LOGIN_UNANSWERED in text:
            return TemporaryError(
                f"{prefix}: {LOGIN_UNANSWERED} (some BMCs ignore an unknown username)"
            )
        if type(exc).__name__ == "IpmiException":
            if not text or "timeout" in lowered or "no longer connected" in lowered:
                return TemporaryError(
                    f"{prefix}: the BMC does not answer (unreachable? check address and ipport)"
                )
            return TemporaryError(f"{prefix}: the BMC failed: {text[:200]}")
        return TemporaryError(f"{prefix}: unexpected {type(exc).__name__}: {text[:200]}")


_SESSION_CLASS: Any = None


def _session_class() -> Any:
    """pyghmi's Session, following the BMC's choice of authentication algorithm.

    pyghmi proposes RAKP-HMAC-SHA256 first and takes for granted that the BMC accepted
    it. The RMCP+ Open Session Response names the algorithms the BMC chose (byte 16:
    authentication, byte 24: integrity); a BMC that chose HMAC-SHA1 then sends 20-byte
    RAKP codes that pyghmi cannot parse. This subclass reads the choice and switches to
    SHA-1 before the RAKP exchange, which is what the IPMI 2.0 specification asks of a
    client (section 13.17, table 13-10).
    """
    global _SESSION_CLASS
    if _SESSION_CLASS is not None:
        return _SESSION_CLASS
    try:
        from pyghmi.ipmi.private import session  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:  # pragma: no cover - an installation problem
        raise PermanentError("the ipmi fence driver needs the pyghmi package") from exc

    rakp_hmac_sha1 = 1

    class _Session(session.Session):  # type: ignore[misc,unused-ignore]
        def _got_rmcp_response(self, data: Any) -> Any:
            if (
                self.sessioncontext == "OPENSESSION"
                and len(data) >= 36
                and data[0] == self.rmcptag
                and data[1] == 0
                and getattr(self, "attemptedhash", None) == 256
                and data[16] == rakp_hmac_sha1
            ):
                self.attemptedhash = 1
                self.currhashlib = hashlib.sha1
                self.currhashlen = 12
            return super()._got_rmcp_response(data)

        def _relog(self) -> Any:
            # pyghmi restarts the RAKP exchange each time it times out without counting
            # down to a failure, so a BMC that ignores the login (virtualbmc does, for an
            # unknown user) would be retried forever by a thread vigil has given up on.
            if self.logontries <= 0:
                self.onlogon({"error": LOGIN_UNANSWERED})
                return None
            return super()._relog()

    _SESSION_CLASS = _Session
    return _SESSION_CLASS
