"""Receiving heartbeats: a UDP socket on its own thread feeding the detector's table.

The receiver only verifies and records; it decides nothing. Refusals (bad signature,
unknown host, replay) are logged, at most once per source and reason every 30 s, so a
misconfigured agent is visible without flooding the log.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

from vigil.clock import Clock
from vigil.engine.lease import LeaseKeeper
from vigil.wire.heartbeat import MAX_DATAGRAM, BadHeartbeat, LeaseGrant, decode, encode_grant

LOG = logging.getLogger(__name__)


class HeartbeatTable:
    """Last heartbeat per host, by the monotonic clock. Thread-safe."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._seq: dict[str, tuple[str, int]] = {}
        self._kernel: dict[str, str] = {}
        self.started_at = clock.monotonic()

    def beat(self, host: str, boot_id: str, seq: int, kernel_boot_id: str = "") -> bool:
        """Record a heartbeat; False for a replayed or reordered one (not newer).
        ``kernel_boot_id``: the host's, when the agent sends it."""
        with self._lock:
            last = self._seq.get(host)
            if last is not None and last[0] == boot_id and seq <= last[1]:
                return False
            self._seq[host] = (boot_id, seq)
            self._last[host] = self._clock.monotonic()
            if kernel_boot_id:
                self._kernel[host] = kernel_boot_id
            return True

    def kernel_boot_ids(self) -> dict[str, str]:
        """The last kernel boot id heard from each host (hosts whose agent sends one):
        a new one means the host has rebooted since."""
        with self._lock:
            return dict(self._kernel)

    def age(self, host: str) -> float | None:
        """Seconds since the host's last heartbeat; None if none since this process began."""
        with self._lock:
            last = self._last.get(host)
        return None if last is None else self._clock.monotonic() - last

    def ages(self) -> dict[str, float]:
        now = self._clock.monotonic()
        with self._lock:
            return {h: now - t for h, t in self._last.items()}

    def since_start(self) -> float:
        return self._clock.monotonic() - self.started_at


class HeartbeatReceiver:
    def __init__(
        self,
        table: HeartbeatTable,
        *,
        key: bytes,
        known_host: Callable[[str], bool],
        bind: tuple[str, int],
        clock: Clock,
        leases: LeaseKeeper | None = None,
    ) -> None:
        self._table = table
        self._leases = leases
        self._key = key
        self._known = known_host
        self._clock = clock
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._sock.bind(bind)
        self._sock.settimeout(0.5)
        self.address: tuple[str, int] = self._sock.getsockname()
        self._stop = threading.Event()
        self._warned: dict[tuple[str, str], float] = {}
        self.refused = 0
        self._thread = threading.Thread(target=self._run, name="heartbeat-receiver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _refuse(self, source: str, why: str) -> None:
        now = self._clock.monotonic()
        if now - self._warned.get((source, why), -1e9) >= 30.0:
            self._warned[(source, why)] = now
            LOG.warning("heartbeat from %s refused: %s", source, why)
        self.refused += 1  # counted once said: a reader of the count finds the line too

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                datagram, (addr, port) = self._sock.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            try:
                beat = decode(datagram, self._key)
            except BadHeartbeat as exc:
                self._refuse(f"{addr}:{port}", str(exc))
                continue
            if not self._known(beat.host):
                self._refuse(f"host {beat.host} at {addr}", "unknown host")
                continue
            if not self._table.beat(beat.host, beat.boot_id, beat.seq, beat.kernel_boot_id):
                self._refuse(f"host {beat.host} at {addr}", "replayed or out-of-order sequence")
                continue
            if beat.watchdog and self._leases is not None:
                ttl = self._leases.grant(
                    beat.host,
                    beat.watchdog,
                    boot_id=beat.boot_id,
                    seq=beat.seq,
                    ack=beat.ack,
                    peer_window=beat.peer_window,
                )
                if ttl is not None:
                    segment, n = self._leases.segment(beat.host)
                    grant = LeaseGrant(beat.host, beat.boot_id, beat.seq, ttl, segment, n)
                    try:
                        self._sock.sendto(encode_grant(grant, self._key), (addr, port))
                    except OSError as exc:
                        LOG.warning("host %s: lease grant not sent: %s", beat.host, exc)
