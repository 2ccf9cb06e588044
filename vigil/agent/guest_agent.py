"""The QEMU guest agent of an instance, spoken to through libvirt: what the host agent's
application checks run (issue 17): ``guest-ping``, and a command run inside the guest
(``guest-exec``, then ``guest-exec-status`` until it ends), judged by its exit status
and time.

Through libvirt's ``virDomainQemuAgentCommand`` (libvirt-python's ``libvirt_qemu``),
not a socket of our own: libvirt owns the guest agent's channel
(``org.qemu.guest_agent.0``) and serialises what is sent on it, so vigil and Nova
(``nova-compute`` asks the same agent to quiesce or set a password) do not interleave.

Every call is bounded: a guest whose agent is hung answers ``GuestAgentError`` after
``timeout`` seconds, never blocks the caller longer. A caller checking many guests runs
each on a worker of its own, so one hung guest delays no other.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class GuestAgentError(Exception):
    """The guest agent did not answer, or answered with an error; ``unresponsive``:
    it did not answer at all (not running, hung, or the guest is)."""

    def __init__(self, message: str, *, unresponsive: bool = False) -> None:
        super().__init__(message)
        self.unresponsive = unresponsive


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None  # None: ended by a signal
    signal: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class GuestAgent:
    """Commands to the guest agents of the domains of one libvirt connection."""

    def __init__(
        self,
        conn: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll: float = 0.1,
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._sleep = sleep
        self._poll = poll

    def _command(self, domain: Any, command: dict[str, Any], timeout: float) -> Any:
        import libvirt  # type: ignore[import-untyped]
        import libvirt_qemu  # type: ignore[import-untyped]

        try:
            answer = libvirt_qemu.qemuAgentCommand(
                domain, json.dumps(command), max(1, round(timeout)), 0
            )
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            unresponsive = code in (
                libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                libvirt.VIR_ERR_AGENT_UNSYNCED,
                libvirt.VIR_ERR_OPERATION_INVALID,  # the domain is not running
            )
            raise GuestAgentError(
                f"{command['execute']}: {exc.get_error_message()}", unresponsive=unresponsive
            ) from exc
        try:
            return json.loads(answer)["return"]
        except (ValueError, KeyError, TypeError) as exc:
            raise GuestAgentError(f"{command['execute']}: unreadable answer {answer!r}") from exc

    def ping(self, domain: Any, timeout: float = 2.0) -> None:
        """``guest-ping``: returns if the guest agent answers within ``timeout``."""
        self._command(domain, {"execute": "guest-ping"}, timeout)

    def exec(self, domain: Any, argv: Sequence[str], timeout: float = 5.0) -> ExecResult:
        """Run ``argv`` in the guest, its output captured; wait at most ``timeout``
        seconds for it to end (``GuestAgentError`` after that: the command may still be
        running in the guest)."""
        if not argv:
            raise ValueError("exec needs a command")
        started = self._clock()
        deadline = started + timeout
        pid = self._command(
            domain,
            {
                "execute": "guest-exec",
                "arguments": {"path": argv[0], "arg": list(argv[1:]), "capture-output": True},
            },
            timeout,
        )["pid"]
        while True:
            left = deadline - self._clock()
            status = self._command(
                domain,
                {"execute": "guest-exec-status", "arguments": {"pid": pid}},
                max(1.0, left),
            )
            if status.get("exited"):
                return ExecResult(
                    exit_code=status.get("exitcode"),
                    signal=status.get("signal"),
                    stdout=_text(status.get("out-data")),
                    stderr=_text(status.get("err-data")),
                    seconds=self._clock() - started,
                )
            if self._clock() >= deadline:
                raise GuestAgentError(f"{argv[0]} did not end within {timeout:g}s (pid {pid})")
            self._sleep(min(self._poll, max(0.0, deadline - self._clock())))


def _text(data: str | None) -> str:
    return base64.b64decode(data).decode(errors="replace") if data else ""
