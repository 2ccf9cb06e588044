"""The agent's instance monitor: libvirt domain events become guest failure reports.

libvirt-python's default event loop runs on a thread of its own
(``virEventRegisterDefaultImpl`` + ``virEventRunDefaultImpl``); callbacks for WATCHDOG,
LIFECYCLE, IO_ERROR_REASON and REBOOT feed ``classify``, a pure function of the event and
the domain's last known state, which says whether the event is a failure to report.
A domain's UUID is its Nova instance's UUID.

Intentional stops are not failures and are not reported: a clean shutdown from inside
the guest (SHUTDOWN, then STOPPED/SHUTDOWN) and a stop through Nova or an operator
(STOPPED/DESTROYED). Reported: every watchdog firing (with libvirt's action), CRASHED
(pvpanic), STOPPED/FAILED (QEMU died), STOPPED/CRASHED unless it only ends a CRASHED
just seen, and I/O errors.

libvirtd may restart (upgrades, crashes): the connection's close callback (and
keepalive, for a hung daemon) makes the monitor reconnect with backoff, then read every
domain's state and compare it with the last state it knew (``reconcile``), so that a
crash or a QEMU death while it was away is still reported. Limits: a watchdog firing
with action ``none`` leaves no trace in the state, so one that happens while libvirtd
is down is missed; the same holds for a reset.

Reports go to the server over HTTP (``vigil.wire.reports``) from an in-memory queue,
retried with backoff until the server acknowledges them (it persists first). In memory,
not on disk: what the queue would protect is re-derived from libvirt's state when the
agent starts again (``reconcile`` reports a domain found crashed); only watchdog firings
queued at the moment the agent dies are lost, and a disk queue on a failing host is no
safer. The queue is bounded; when full the oldest reports are dropped, loudly.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vigil.agent.servers import Failures, ServerUrls, urls_given
from vigil.model import GuestFailureKind, GuestReport
from vigil.wire.reports import encode_reports

LOG = logging.getLogger("vigil.agent.libvirt")

# libvirt's numbers (stable ABI), so that classify needs no libvirt import.
EV_DEFINED, EV_UNDEFINED, EV_STARTED, EV_SUSPENDED, EV_RESUMED = 0, 1, 2, 3, 4
EV_STOPPED, EV_SHUTDOWN, EV_PMSUSPENDED, EV_CRASHED = 5, 6, 7, 8
STOPPED_REASONS = {
    0: "shutdown",
    1: "destroyed",
    2: "crashed",
    3: "migrated",
    4: "saved",
    5: "failed",
    6: "from-snapshot",
    7: "daemon",
}
CRASHED_REASONS = {0: "panicked", 1: "crashloaded"}
WATCHDOG_ACTIONS = {
    0: "none",
    1: "pause",
    2: "reset",
    3: "poweroff",
    4: "shutdown",
    5: "debug",
    6: "inject-nmi",
}
# virDomainState and the shut-off / crashed reasons of virDomainGetState.
STATE_RUNNING, STATE_PAUSED, STATE_SHUTDOWN, STATE_SHUTOFF, STATE_CRASHED = 1, 3, 4, 5, 6
SHUTOFF_REASONS = {
    0: "unknown",
    1: "shutdown",
    2: "destroyed",
    3: "crashed",
    4: "migrated",
    5: "saved",
    6: "failed",
    7: "from-snapshot",
    8: "daemon",
}
PAUSED_IOERROR, PAUSED_WATCHDOG = 2, 3


@dataclass(frozen=True)
class DomainState:
    """What the monitor last knew of a domain: ``running``, ``paused``, ``shutting-down``
    (a clean shutdown is under way), ``shutoff``, ``crashed``."""

    state: str
    reason: str = ""


@dataclass(frozen=True)
class Observation:
    """What one event means: the domain's new state and, for a failure, what to report."""

    state: DomainState | None  # None: the state is unchanged
    kind: GuestFailureKind | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""  # why nothing is reported (intentional stop...), for the log


def classify(event: str, args: tuple[Any, ...], last: DomainState | None) -> Observation:
    """Map one libvirt event to an observation. ``event`` is ``lifecycle``, ``watchdog``,
    ``io-error`` or ``reboot``; ``args`` are the callback's arguments after the domain
    (lifecycle: event, detail; watchdog: action; io-error: src, alias, action, reason)."""
    if event == "watchdog":
        action = WATCHDOG_ACTIONS.get(int(args[0]), str(args[0]))
        return Observation(None, GuestFailureKind.WATCHDOG, {"event": "watchdog", "action": action})
    if event == "io-error":
        src, alias, action = args[0], args[1], args[2]
        reason = args[3] if len(args) > 3 else ""
        return Observation(
            DomainState("paused", "ioerror") if int(action) == 1 else None,
            GuestFailureKind.IO_ERROR,
            {"event": "io-error", "path": src, "device": alias, "reason": reason},
        )
    if event == "reboot":
        return Observation(DomainState("running"), note="guest rebooted")
    if event != "lifecycle":
        return Observation(None, note=f"unknown event {event}")
    ev, detail = int(args[0]), int(args[1])
    if ev in (EV_STARTED, EV_RESUMED):
        return Observation(DomainState("running"), note="running")
    if ev == EV_SUSPENDED:
        return Observation(DomainState("paused"), note="paused")
    if ev == EV_SHUTDOWN:
        return Observation(DomainState("shutting-down"), note="clean shutdown under way")
    if ev == EV_CRASHED:
        reason = CRASHED_REASONS.get(detail, str(detail))
        return Observation(
            DomainState("crashed", reason),
            GuestFailureKind.CRASHED,
            {"event": "lifecycle", "state": "crashed", "reason": reason},
        )
    if ev == EV_STOPPED:
        reason = STOPPED_REASONS.get(detail, str(detail))
        state = DomainState("shutoff", reason)
        if reason == "failed":
            return Observation(
                state,
                GuestFailureKind.STOPPED_FAILED,
                {"event": "lifecycle", "state": "stopped", "reason": reason},
            )
        if reason == "crashed":
            if last is not None and last.state == "crashed":
                return Observation(state, note="stop ends the crash already reported")
            return Observation(
                state,
                GuestFailureKind.CRASHED,
                {"event": "lifecycle", "state": "stopped", "reason": reason},
            )
        return Observation(state, note=f"stopped on purpose ({reason}): not a failure")
    return Observation(None, note=f"lifecycle event {ev}/{detail}")


def reconcile(
    last: Mapping[str, DomainState], now: Mapping[str, tuple[int, int]]
) -> list[tuple[str, DomainState, GuestFailureKind | None, dict[str, Any]]]:
    """After a (re)connection: compare each domain's state (``virDomainGetState``'s
    (state, reason)) with the last one known, and say what changed unseen. A domain not
    known before is reported only if it sits crashed (a crash nobody reported)."""
    out: list[tuple[str, DomainState, GuestFailureKind | None, dict[str, Any]]] = []
    for dom_uuid, (state, reason) in sorted(now.items()):
        before = last.get(dom_uuid)
        kind: GuestFailureKind | None = None
        detail: dict[str, Any] = {"event": "reconnect"}
        if state == STATE_CRASHED:
            current = DomainState("crashed", CRASHED_REASONS.get(reason, str(reason)))
            if before is None or before.state != "crashed":
                kind = GuestFailureKind.CRASHED
        elif state == STATE_SHUTOFF:
            why = SHUTOFF_REASONS.get(reason, str(reason))
            current = DomainState("shutoff", why)
            was_up = before is not None and before.state in ("running", "paused")
            if was_up and why == "crashed":
                kind = GuestFailureKind.CRASHED
            elif was_up and why in ("failed", "unknown", "daemon"):
                kind = GuestFailureKind.STOPPED_FAILED
        elif state == STATE_PAUSED:
            current = DomainState("paused", "ioerror" if reason == PAUSED_IOERROR else "")
            if reason == PAUSED_IOERROR and (before is None or before.reason != "ioerror"):
                kind = GuestFailureKind.IO_ERROR
        elif state == STATE_SHUTDOWN:
            current = DomainState("shutting-down")
        else:
            current = DomainState("running")
        if kind is not None:
            detail.update(state=current.state, reason=current.reason)
        if before != current or kind is not None:
            out.append((dom_uuid, current, kind, detail))
    return out


class ReportSender:
    """Sends reports to the server, retrying with backoff until acknowledged (2xx).

    ``server_url`` is one server's API; ``server_urls`` several (give exactly one of the
    two): each batch goes to the first that answers (``vigil.agent.servers``). ``tls``
    verifies an https:// server's certificate (None: against the system's trust store).
    A failure is logged when its cause changes, not at every retry.
    """

    def __init__(
        self,
        *,
        host: str,
        server_url: str = "",
        server_urls: Sequence[str] | None = None,
        key: bytes,
        max_queue: int = 10_000,
        timeout: float = 5.0,
        backoff_max: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._host = host
        self._servers = ServerUrls(urls_given(server_url, server_urls), tls)
        self._failures = Failures(LOG, f"host {host}: guest failure reports")
        self._path = f"/v1/agents/{host}/reports"
        self.key = key  # the host's agent key; replaced when its key file changes
        self._queue: collections.deque[GuestReport] = collections.deque()
        self._max = max_queue
        self._timeout = timeout
        self._backoff_max = backoff_max
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="report-sender", daemon=True)
        self.sent = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=10)

    def pending(self) -> int:
        with self._cv:
            return len(self._queue)

    def put(self, report: GuestReport) -> None:
        with self._cv:
            if len(self._queue) >= self._max:
                dropped = self._queue.popleft()
                LOG.error(
                    "host %s: report queue full: dropped the oldest (instance %s, %s)",
                    self._host,
                    dropped.instance_id,
                    dropped.kind.value,
                )
            self._queue.append(report)
            self._cv.notify_all()

    def _run(self) -> None:
        delay = 0.0
        with self._servers.client(self._timeout) as client:
            while True:
                with self._cv:
                    while not self._queue and not self._stop:
                        self._cv.wait()
                    if self._stop:
                        return
                    batch = list(self._queue)[:100]
                body = encode_reports(self._host, batch)
                error = self._servers.post(client, self._path, body, self.key)
                if error is None:
                    with self._cv:
                        for _ in batch:
                            if self._queue and self._queue[0] in batch:
                                self._queue.popleft()
                    self.sent += len(batch)
                    self._failures.succeeded()
                    delay = 0.0
                    continue
                delay = min(self._backoff_max, max(0.2, delay * 2))
                self._failures.failed(error)
                with self._cv:
                    self._cv.wait_for(lambda: self._stop, timeout=delay)


_EVENT_LOOP_LOCK = threading.Lock()
_event_loop_started = False


def _start_event_loop() -> None:
    """libvirt's default event loop, once per process, on a daemon thread."""
    global _event_loop_started
    import libvirt  # type: ignore[import-untyped]

    with _EVENT_LOOP_LOCK:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # keep the loop: every monitor of the process needs it
                    LOG.exception("libvirt event loop iteration failed")
                    time.sleep(0.1)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class LibvirtMonitor:
    """Watches the domains of one libvirt connection and hands failure reports to
    ``report`` (a ``ReportSender.put``). ``on_event(uuid, event, observation)`` is called
    for every event seen (tests and the benchmark use it)."""

    def __init__(
        self,
        *,
        host: str,
        uri: str,
        report: Callable[[GuestReport], None],
        on_event: Callable[[str, str, Observation], None] | None = None,
        backoff_max: float = 5.0,
    ) -> None:
        self._host = host
        self._uri = uri
        self._report = report
        self._on_event = on_event
        self._backoff_max = backoff_max
        self._lock = threading.Lock()
        self._last: dict[str, DomainState] = {}
        self._closed = threading.Event()
        self._stop = threading.Event()
        self._conn: Any = None
        self._thread = threading.Thread(target=self._supervise, name="libvirt-monitor", daemon=True)
        self.connected = threading.Event()
        self.connections = 0

    def start(self) -> None:
        _start_event_loop()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._closed.set()
        self._thread.join(timeout=10)
        self._disconnect()

    def known(self, dom_uuid: str) -> DomainState | None:
        with self._lock:
            return self._last.get(dom_uuid)

    # --- connection -------------------------------------------------------------------

    def _supervise(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            try:
                self._connect()
                delay = 0.0
            except Exception as exc:
                delay = min(self._backoff_max, max(0.25, delay * 2))
                LOG.warning(
                    "host %s: libvirt %s unreachable (%s); retrying in %.1fs",
                    self._host,
                    self._uri,
                    exc,
                    delay,
                )
                self._stop.wait(delay)
                continue
            # Wait for the close callback, or notice a dead connection ourselves.
            while not self._stop.is_set() and not self._closed.wait(1.0):
                conn = self._conn
                if conn is None or not conn.isAlive():
                    break
            self.connected.clear()
            self._disconnect()
            if not self._stop.is_set():
                LOG.error("host %s: libvirt connection lost; reconnecting", self._host)

    def _connect(self) -> None:
        import libvirt

        conn = libvirt.openReadOnly(self._uri)
        self._closed.clear()
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(2, 3)  # a hung libvirtd is noticed in ~8 s
        conn.registerCloseCallback(self._on_close, None)
        ids = {
            libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE: self._lifecycle,
            libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG: self._watchdog,
            libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON: self._io_error,
            libvirt.VIR_DOMAIN_EVENT_ID_REBOOT: self._reboot,
        }
        for event_id, callback in ids.items():
            conn.domainEventRegisterAny(None, event_id, callback, None)
        self._conn = conn
        self.connections += 1
        # Registered first, read second: a change between the two is seen twice at
        # worst (the state comparison makes the second one a no-op), never missed.
        states: dict[str, tuple[int, int]] = {}
        for dom in conn.listAllDomains(0):
            try:
                state, reason = dom.state()
            except libvirt.libvirtError:
                continue  # undefined meanwhile
            states[dom.UUIDString()] = (int(state), int(reason))
        with self._lock:
            changes = reconcile(self._last, states)
            for dom_uuid, current, _, _ in changes:
                self._last[dom_uuid] = current
        for dom_uuid, current, kind, detail in changes:
            if kind is not None:
                LOG.error(
                    "host %s: instance %s: found %s (%s) after reconnecting: %s",
                    self._host,
                    dom_uuid,
                    current.state,
                    current.reason,
                    kind.value,
                )
                self._send(dom_uuid, kind, detail)
        LOG.info(
            "host %s: watching %d domains on %s (connection %d)",
            self._host,
            len(states),
            self._uri,
            self.connections,
        )
        self.connected.set()

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.unregisterCloseCallback()
        with contextlib.suppress(Exception):
            conn.close()

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        LOG.error("host %s: libvirt connection closed (reason %s)", self._host, reason)
        self._closed.set()

    # --- events (on libvirt's event loop thread) ---------------------------------------

    def _lifecycle(self, _c: Any, dom: Any, event: int, detail: int, _o: Any) -> None:
        self._handle(dom, "lifecycle", (event, detail))

    def _watchdog(self, _c: Any, dom: Any, action: int, _o: Any) -> None:
        self._handle(dom, "watchdog", (action,))

    def _io_error(
        self, _c: Any, dom: Any, src: str, alias: str, action: int, reason: str, _o: Any
    ) -> None:
        self._handle(dom, "io-error", (src, alias, action, reason))

    def _reboot(self, _c: Any, dom: Any, _o: Any) -> None:
        self._handle(dom, "reboot", ())

    def _handle(self, dom: Any, event: str, args: tuple[Any, ...]) -> None:
        try:
            dom_uuid = dom.UUIDString()
            with self._lock:
                observation = classify(event, args, self._last.get(dom_uuid))
                if observation.state is not None:
                    self._last[dom_uuid] = observation.state
            if self._on_event is not None:
                self._on_event(dom_uuid, event, observation)
            if observation.kind is not None:
                LOG.warning(
                    "host %s: instance %s: %s %s",
                    self._host,
                    dom_uuid,
                    observation.kind.value,
                    dict(observation.detail),
                )
                self._send(dom_uuid, observation.kind, dict(observation.detail))
            elif observation.note:
                LOG.info("host %s: instance %s: %s", self._host, dom_uuid, observation.note)
        except Exception:  # never let an exception into libvirt's C event loop
            LOG.exception("host %s: libvirt event %s not handled", self._host, event)

    def _send(self, dom_uuid: str, kind: GuestFailureKind, detail: Mapping[str, Any]) -> None:
        self._report(
            GuestReport(
                id=str(uuid.uuid4()),
                host=self._host,
                instance_id=dom_uuid,
                kind=kind,
                at=time.time(),
                detail=dict(detail),
            )
        )
