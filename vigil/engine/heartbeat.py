"""Receiving heartbeats: a UDP socket on its own thread feeding the detector's table.

The receiver only verifies and records; it decides nothing. Refusals (bad signature,
unknown host, replay) are logged, at most once per source and reason every 30 s, so a
misconfigured agent is visible without flooding the log.

Heartbeats this server lost itself are not silence. When the socket's queue overflows
(the process could not read fast enough: overloaded, stopped, starved of CPU), the
kernel drops datagrams and counts them (``SO_MEMINFO``, Linux); any host may have
beaten meanwhile, so the table then counts every host as heard at that moment
(``HeartbeatTable.note_lost``): vigil falling behind delays a detection, it never fences
a host that was beating. Found by bench/scale.py: 5,000 hosts and a server starved at
start-up had hosts declared failed whose heartbeats it had dropped.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Sequence

from vigil.clock import Clock
from vigil.engine.lease import LeaseKeeper
from vigil.wire.heartbeat import (
    MAX_DATAGRAM,
    BadHeartbeat,
    Heartbeat,
    LeaseGrant,
    decode,
    encode_grant,
)

LOG = logging.getLogger(__name__)

BATCH = 512  # datagrams taken from the socket at most before they are recorded
# Linux's SO_MEMINFO (not in Python's socket module): the socket's memory counters, the
# ninth (SK_MEMINFO_DROPS) the datagrams it dropped so far.
SO_MEMINFO = 55 if sys.platform.startswith("linux") else None
_MEMINFO_DROPS = struct.Struct("=32xI")  # after eight 32-bit counters


class HeartbeatTable:
    """Last heartbeat per host, by the monotonic clock. Thread-safe."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._seq: dict[str, tuple[str, int]] = {}
        self._kernel: dict[str, str] = {}
        self._kernel_changed: set[str] = set()  # hosts heard with a new kernel boot id
        self._all_heard_at = float("-inf")  # heartbeats lost by this server: note_lost
        self.started_at = clock.monotonic()

    def note_lost(self) -> None:
        """Heartbeats were lost before this server could read them: any host may have
        beaten meanwhile, so every host heard before counts as heard now."""
        with self._lock:
            self._all_heard_at = self._clock.monotonic()

    def beat(self, host: str, boot_id: str, seq: int, kernel_boot_id: str = "") -> bool:
        """Record a heartbeat; False for a replayed or reordered one (not newer).
        ``kernel_boot_id``: the host's, when the agent sends it."""
        with self._lock:
            return self._beat(host, boot_id, seq, kernel_boot_id, self._clock.monotonic())

    def beat_many(self, beats: Sequence[Heartbeat]) -> list[bool]:
        """Record several heartbeats under one lock, received at the same instant; for
        each, whether it was newer (``beat``)."""
        now = self._clock.monotonic()
        with self._lock:
            return [self._beat(b.host, b.boot_id, b.seq, b.kernel_boot_id, now) for b in beats]

    def _beat(self, host: str, boot_id: str, seq: int, kernel_boot_id: str, now: float) -> bool:
        last = self._seq.get(host)
        if last is not None and last[0] == boot_id and seq <= last[1]:
            return False
        self._seq[host] = (boot_id, seq)
        self._last[host] = now
        if kernel_boot_id and self._kernel.get(host) != kernel_boot_id:
            self._kernel[host] = kernel_boot_id
            self._kernel_changed.add(host)
        return True

    def kernel_boot_id(self, host: str) -> str | None:
        """The last kernel boot id heard from the host (None: none heard)."""
        with self._lock:
            return self._kernel.get(host)

    def kernel_changes(self) -> dict[str, str]:
        """The hosts heard with another kernel boot id (or their first) since the last
        call, with it: what a reader compares with what it knows, instead of every
        host's at every cycle."""
        with self._lock:
            changed = {h: self._kernel[h] for h in self._kernel_changed}
            self._kernel_changed.clear()
        return changed

    def kernel_boot_ids(self) -> dict[str, str]:
        """The last kernel boot id heard from each host (hosts whose agent sends one):
        a new one means the host has rebooted since."""
        with self._lock:
            return dict(self._kernel)

    def age(self, host: str) -> float | None:
        """Seconds since the host's last heartbeat; None if none since this process began."""
        with self._lock:
            last = self._last.get(host)
            if last is not None:
                last = max(last, self._all_heard_at)
        return None if last is None else self._clock.monotonic() - last

    def silent(self, hosts: Iterable[str], longer_than: float) -> dict[str, float | None]:
        """Of ``hosts``, those silent for ``longer_than`` seconds or more, with their
        age (None: never heard since this process began). One pass over ``hosts`` under
        the lock: at 10,000 hosts about a millisecond, so the engine looks only at the
        hosts that matter without asking for every host's age each cycle."""
        cutoff = self._clock.monotonic() - longer_than
        now = cutoff + longer_than
        last = self._last
        out: dict[str, float | None] = {}
        with self._lock:
            if self._all_heard_at > cutoff:
                return {h: None for h in hosts if h not in last}
            for host in hosts:
                t = last.get(host)
                if t is None:
                    out[host] = None
                elif t <= cutoff:
                    out[host] = now - max(t, self._all_heard_at)
        return out

    def ages(self) -> dict[str, float]:
        now = self._clock.monotonic()
        with self._lock:
            heard = self._all_heard_at
            return {h: now - max(t, heard) for h, t in self._last.items()}

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
        receive_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        """``receive_buffer``: the socket's queue in bytes (Linux doubles it and caps it
        at net.core.rmem_max): about half a second of 10,000 hosts' heartbeats."""
        self._table = table
        self._leases = leases
        self._key = key
        self._known = known_host
        self._clock = clock
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        got = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if got < receive_buffer:  # Linux reports twice what it grants (its bookkeeping)
            LOG.warning(
                "heartbeats: the socket's queue is %d bytes, not the %d asked for (capped "
                "by net.core.rmem_max): with thousands of hosts, raise net.core.rmem_max",
                got,
                receive_buffer,
            )
        self._sock.bind(bind)
        self.address: tuple[str, int] = self._sock.getsockname()
        self._stop = threading.Event()
        self._warned: dict[tuple[str, str], float] = {}
        self.refused = 0
        self.received = 0  # heartbeats recorded (verified, from a known host, newer)
        self.dropped = 0  # datagrams the socket dropped, its queue full (SO_MEMINFO)
        self._dropping_since: float | None = None  # logged when it starts and ends
        self._quiet_since = 0.0
        self._counts_drops = SO_MEMINFO is not None and self._socket_drops() is not None
        if not self._counts_drops:
            LOG.warning(
                "heartbeats: this system does not say when the socket drops heartbeats "
                "(no SO_MEMINFO): a server that cannot keep up may take hosts for silent"
            )
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
        """Wait for datagrams, then take every one already queued (up to ``BATCH``) in
        one go: verified without the table's lock, recorded under it once per batch.
        At 10,000 hosts beating four times a second that is 40,000 datagrams a second:
        a lock, a wake-up and a timeout check per datagram would cost more than the
        verification itself. (Python has no ``recvmmsg``; non-blocking ``recvfrom``
        until the queue is empty is the batch it allows.)"""
        self._sock.setblocking(False)
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._sock], [], [], 0.5)
            except (OSError, ValueError):  # closed by stop()
                if self._stop.is_set():
                    return
                raise
            if not ready:
                continue
            # Asked before reading: a drop is known before the silence it caused is.
            dropped = self._socket_drops() if self._counts_drops else None
            if dropped is not None and dropped > self.dropped:
                self._lost(dropped)
            elif self._dropping_since is not None:
                self._caught_up()
            batch: list[tuple[bytes, tuple[str, int]]] = []
            try:
                while len(batch) < BATCH:
                    batch.append(self._sock.recvfrom(MAX_DATAGRAM + 1))
            except BlockingIOError:
                pass
            except OSError:
                if self._stop.is_set():
                    return
                raise
            self._take(batch)

    def _socket_drops(self) -> int | None:
        """The datagrams the socket has dropped so far, its queue full (None: unknown)."""
        assert SO_MEMINFO is not None
        try:
            info = self._sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 64)
        except OSError:
            return None
        if len(info) < _MEMINFO_DROPS.size:
            return None
        return int(_MEMINFO_DROPS.unpack_from(info)[0])

    def _lost(self, dropped: int) -> None:
        """The socket dropped heartbeats (its total so far: ``dropped``)."""
        self._table.note_lost()
        if self._dropping_since is None:
            self._dropping_since = self._clock.monotonic()
            LOG.warning(
                "heartbeats: %d dropped by this server's socket, its queue full (this "
                "process cannot keep up): no host's silence counts until it does",
                dropped - self.dropped,
            )
        self._quiet_since = self._clock.monotonic()
        self.dropped = dropped

    def _caught_up(self) -> None:
        now = self._clock.monotonic()
        if self._dropping_since is not None and now - self._quiet_since >= 1.0:
            LOG.warning(
                "heartbeats: none dropped for 1s: keeping up again (%d dropped in all)",
                self.dropped,
            )
            self._dropping_since = None

    def _take(self, batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        beats: list[tuple[Heartbeat, tuple[str, int]]] = []
        for datagram, (addr, port) in batch:
            try:
                beat = decode(datagram, self._key)
            except BadHeartbeat as exc:
                self._refuse(f"{addr}:{port}", str(exc))
                continue
            if not self._known(beat.host):
                self._refuse(f"host {beat.host} at {addr}", "unknown host")
                continue
            beats.append((beat, (addr, port)))
        taken = self._table.beat_many([b for b, _ in beats])
        self.received += sum(taken)
        for (beat, (addr, port)), newer in zip(beats, taken, strict=True):
            if not newer:
                self._refuse(f"host {beat.host} at {addr}", "replayed or out-of-order sequence")
                continue
            if beat.watchdog and self._leases is not None:
                self._grant(beat, (addr, port))

    def _grant(self, beat: Heartbeat, to: tuple[str, int]) -> None:
        assert self._leases is not None
        ttl = self._leases.grant(
            beat.host,
            beat.watchdog,
            boot_id=beat.boot_id,
            seq=beat.seq,
            ack=beat.ack,
            peer_window=beat.peer_window,
        )
        if ttl is None:
            return
        segment, n = self._leases.segment(beat.host)
        grant = LeaseGrant(beat.host, beat.boot_id, beat.seq, ttl, segment, n)
        try:
            self._sock.sendto(encode_grant(grant, self._key), to)
        except OSError as exc:
            LOG.warning("host %s: lease grant not sent: %s", beat.host, exc)
