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

In a process of its own (``process=True``, what vigil-server runs): reading the socket and
verifying each datagram (~10 µs of Python each, 40,000 a second at 10,000 hosts) no
longer competes for the server's interpreter lock with its engine, API and workers, whose
bursts made the socket overflow and so hid every host's silence (bench/scale.py: a rack
failure at 10,000 hosts never detected). The child reads, verifies and sends what it
took to this process every ``FLUSH`` seconds (at least every ``KEEPALIVE``); this
process records it, answers self-fencing agents and logs refusals, as the thread does.
A child that stops answering, or dies, is a server that cannot hear: no host's silence
counts (``note_lost``) until a new child (started at once) answers.

Several servers (segment ownership): every agent sends every heartbeat to each server,
so that the one taking a segment over knows at once which of its hosts are alive. Each
server verifies (signature, sequence, kernel boot id, lease grant) only the heartbeats
of the hosts of the segments it holds (``verify_only``, kept by the engine); of the
others it reads the host's name alone (``peek_host``: ~0.4 µs against ~10 µs) and
records that host as heard, unverified. What that gives up: until a server takes a
segment, a forged datagram could make one of its hosts look alive to it; from the take
on, only verified heartbeats count, so a dead host is still found silent at most
``suspect_after`` after the take (and its hold, below).

Keys (``vigil.wire.keys``): a heartbeat is verified with the keys derived for the host
it names, so no host's key signs another's; grants and owner hints go back signed with
the key that verified the heartbeat, the one its agent holds (during a rotation, some
agents hold a key of the new master and some of the old). Where datagrams are read (the
thread, or the child), the servers' key file is re-read every ``CHECK_EVERY`` seconds;
a host heard with a previous master's key is logged, once, as one left to rotate.

Reading each datagram still cost every server ~11 µs of Python, so each server also tells
the agents of the hosts it verifies that it owns them (an ``OwnerHint``, at most every
third of its ``ttl`` per host, to the address the heartbeat came from): they then send
every heartbeat to it and to the other servers only every ``others`` seconds
(``vigil.agent.fanout``). A server taking a segment over holds for ``ttl + others``
(``HeartbeatTable.hold``) the silence of the hosts whose last heartbeat said their agent
followed an owner (``is_fanned``, read with the name): the time for the previous
owner's hints to lapse, or for its own to arrive.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from vigil.clock import Clock
from vigil.engine.lease import LeaseKeeper
from vigil.wire.heartbeat import (
    MAX_DATAGRAM,
    BadHeartbeat,
    Heartbeat,
    LeaseGrant,
    OwnerHint,
    WrongKey,
    claimed_host,
    decode_fields,
    decode_signed,
    encode_grant,
    encode_hint,
    is_fanned,
    peek_host,
)
from vigil.wire.keys import CHECK_EVERY, AgentKeys

LOG = logging.getLogger(__name__)

BATCH = 512  # datagrams taken from the socket at most before they are recorded
# Linux's SO_MEMINFO (not in Python's socket module): the socket's memory counters, the
# ninth (SK_MEMINFO_DROPS) the datagrams it dropped so far.
SO_MEMINFO = 55 if sys.platform.startswith("linux") else None
_MEMINFO_DROPS = struct.Struct("=32xI")  # after eight 32-bit counters
FLUSH = 0.02  # seconds: a receiving child sends what it took at most this late
# Seconds a receiving child waits after a partial batch before reading again: heartbeats
# are then read a few dozen at a time rather than one by one (the socket's queue holds a
# fifth of a second of 10,000 hosts' heartbeats, forty times this).
SETTLE = 0.005
KEEPALIVE = 0.1  # seconds: it sends at least this often, even nothing
STALLED = 0.5  # seconds without a word from the child: it cannot hear for this server
# What the child sends of a heartbeat: (host, boot_id, seq, kernel_boot_id, watchdog,
# ack, peer_window, address, port, key: the one that verified it, which signs the
# answers); a tuple pickles in a fraction of a Heartbeat's time.
Taken = tuple[str, str, int, str, float, int, float, str, int, bytes]
Verified = tuple[list[Taken], list[tuple[str, str]], list[str], list[str], list[str]]


class HeartbeatTable:
    """Last heartbeat per host, by the monotonic clock. Thread-safe."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._kernel: dict[str, str] = {}
        self._kernel_changed: set[str] = set()  # hosts heard with a new kernel boot id
        self._all_heard_at = float("-inf")  # heartbeats lost by this server: note_lost
        self._held: dict[str, float] = {}  # host -> counted as heard until then: hold
        self._fanned: set[str] = set()  # hosts whose last unverified heartbeat said fanned
        self.started_at = clock.monotonic()

    def hold(self, hosts: Iterable[str], seconds: float) -> None:
        """Count ``hosts`` heard before as heard until ``seconds`` from now (their silence
        counts from then; as ``note_lost`` does for every host): a server that takes
        their segment over, while their agents may still send most heartbeats to the
        previous owner (``vigil.agent.fanout``)."""
        now = self._clock.monotonic()
        with self._lock:
            last = self._last
            # Holds that ended before the host was heard again say nothing more.
            self._held = {h: t for h, t in self._held.items() if t > last.get(h, float("-inf"))}
            self._held.update(dict.fromkeys(hosts, now + seconds))

    def heard_unverified(self, hosts: Sequence[str], fanned: Sequence[str] = ()) -> None:
        """Record heartbeats of other servers' hosts, read by name: ``hosts`` heard now,
        ``fanned`` those of them whose agent says it follows an owner (``is_fanned``)."""
        now = self._clock.monotonic()
        with self._lock:
            self._last.update(dict.fromkeys(hosts, now))
            self._fanned.difference_update(hosts)
            self._fanned.update(fanned)

    def fanned(self, hosts: Iterable[str]) -> list[str]:
        """Of ``hosts``, those whose last heartbeat read unverified said their agent
        follows an owner: what a server taking their segment over holds."""
        with self._lock:
            return [h for h in hosts if h in self._fanned]

    def _effective(self, host: str, t: float | None, now: float) -> float | None:
        """When ``host`` counts as last heard: its last heartbeat, or its hold (up to
        now), or when this server lost heartbeats; under the lock. As with lost
        heartbeats, a host never heard stays never heard: a hold postpones a silence, it
        is not a first heartbeat."""
        if t is None:
            return None
        held = self._held.get(host) if self._held else None
        if held is not None:
            t = max(t, min(now, held))
        return max(t, self._all_heard_at)

    def note_lost(self) -> None:
        """Heartbeats were lost before this server could read them: any host may have
        beaten meanwhile, so every host heard before counts as heard now."""
        with self._lock:
            self._all_heard_at = self._clock.monotonic()

    def heard(self, hosts: Sequence[str], kernels: Mapping[str, str] | None = None) -> None:
        """Record heartbeats already found newer (by the receiver's ``_Sequencer``, which
        keeps the sequence numbers): ``hosts`` heard now, ``kernels`` the kernel boot ids
        it saw change (or saw first)."""
        now = self._clock.monotonic()
        with self._lock:
            self._last.update(dict.fromkeys(hosts, now))
            for host, kernel in (kernels or {}).items():
                if self._kernel.get(host) != kernel:
                    self._kernel[host] = kernel
                    self._kernel_changed.add(host)

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
        now = self._clock.monotonic()
        with self._lock:
            last = self._effective(host, self._last.get(host), now)
        return None if last is None else now - last

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
            held = self._held
            for host in hosts:
                t = last.get(host)
                if held and host in held:
                    t = self._effective(host, t, now)
                if t is None:
                    out[host] = None
                elif t <= cutoff:
                    out[host] = now - max(t, self._all_heard_at)
        return out

    def ages(self) -> dict[str, float]:
        now = self._clock.monotonic()
        with self._lock:
            heard = self._all_heard_at
            ages = {h: now - max(t, heard) for h, t in self._last.items()}
            for h in self._held:
                t = self._effective(h, self._last.get(h), now)
                if t is not None:
                    ages[h] = now - t
            return ages

    def since_start(self) -> float:
        return self._clock.monotonic() - self.started_at


def _socket_drops(sock: socket.socket) -> int | None:
    """The datagrams ``sock`` has dropped so far, its queue full (None: unknown)."""
    if SO_MEMINFO is None:
        return None
    try:
        info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 64)
    except OSError:
        return None
    if len(info) < _MEMINFO_DROPS.size:
        return None
    return int(_MEMINFO_DROPS.unpack_from(info)[0])


def _read_batch(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    """Every datagram already queued, up to ``BATCH`` (the socket is non-blocking)."""
    batch: list[tuple[bytes, tuple[str, int]]] = []
    try:
        while len(batch) < BATCH:
            batch.append(sock.recvfrom(MAX_DATAGRAM + 1))
    except BlockingIOError:
        pass
    return batch


def _why_refused(datagram: bytes, host: str, keys: AgentKeys, exc: BadHeartbeat) -> str:
    """Why a heartbeat was refused, in the operator's words. One signed with a master key
    is an agent still holding the one shared key of before per-host keys (an upgrade
    whose agents were not given their host keys yet): say how to move on, since every
    such host is silent to the server and would be declared failed."""
    try:
        decode_signed(datagram, host, tuple(m.encode() for m in keys.masters))
    except BadHeartbeat:
        return str(exc)
    return (
        f"host {host} signs with the servers' master key, not its own: install its key "
        f"(vigil-server agent-key {host}), or set [agent] accept_master_key = true while "
        "its agents move from one shared key to a key per host"
    )


def _verify_batch(
    batch: list[tuple[bytes, tuple[str, int]]],
    keys: AgentKeys,
    only: frozenset[str] | None = None,
) -> Verified:
    """The heartbeats of ``batch`` that verify (each with its host's keys), (source, why)
    for those that do not, the hosts (unverified) of those left unverified: not in
    ``only`` (None: all are verified), those of them that say their agent follows an
    owner, and the hosts whose heartbeat only a previous master's key verified."""
    taken: list[Taken] = []
    refused: list[tuple[str, str]] = []
    others: list[str] = []
    fanned: list[str] = []
    stale: list[str] = []
    for_host, cache = keys.for_host, keys.cache
    for datagram, (addr, port) in batch:
        host = peek_host(datagram)
        if only is not None and host is not None and host not in only:
            others.append(host)
            if is_fanned(datagram):
                fanned.append(host)
            continue
        if host is None:
            host = claimed_host(datagram)
            if host is None:
                refused.append((f"{addr}:{port}", "not a heartbeat naming its host"))
                continue
        host_keys = cache.get(host) or for_host(host)
        key = host_keys[0] if host_keys else b""
        try:
            try:  # the current key first, inline: decode_signed costs a call more
                fields = decode_fields(datagram, key)
                if fields[0] != host:
                    raise WrongKey("names another host")  # decode_signed says which
            except WrongKey:
                fields, index = decode_signed(datagram, host, host_keys)
                key = host_keys[index]
                if keys.is_previous(index):
                    stale.append(host)
        except BadHeartbeat as exc:
            refused.append((f"{addr}:{port}", _why_refused(datagram, host, keys, exc)))
            continue
        _, boot_id, seq, _, watchdog, kernel, ack, peer = fields
        taken.append((host, boot_id, seq, kernel, watchdog, ack, peer, addr, port, key))
    return taken, refused, others, fanned, stale


class _Hinter:
    """Owner hints to the agents of the hosts this server verifies because it holds
    their segments, each at most every third of ``ttl`` (two lost in a row do not let a
    hint lapse). A hint's bytes never change for a host and key, so they are signed
    once per key (that of the host's heartbeat: the one its agent holds); one replayed
    only makes an agent send to this server too, for ``ttl``."""

    def __init__(self, ttl: float, others: float) -> None:
        self._ttl = ttl
        self._others = others
        self._every = ttl / 3
        self._at: dict[str, float] = {}
        self._bytes: dict[str, tuple[bytes, bytes]] = {}  # host -> (key, hint signed)
        self.sent = 0

    def send(
        self, sock: socket.socket, taken: list[Taken], only: frozenset[str], now: float
    ) -> None:
        at, every = self._at, self._every
        for t in taken:
            host = t[0]
            if now - at.get(host, float("-inf")) < every or host not in only:
                continue
            at[host] = now
            key, datagram = self._bytes.get(host, (b"", b""))
            if key != t[9]:
                key, datagram = t[9], encode_hint(OwnerHint(host, self._ttl, self._others), t[9])
                self._bytes[host] = (key, datagram)
            try:
                sock.sendto(datagram, (t[7], t[8]))
                self.sent += 1
            except OSError:  # the agent's heartbeats go on to every server: harmless
                pass


class _Sequencer:
    """Each host's last (boot id, sequence) and kernel boot id, kept where datagrams are
    read (the receiving child, or the receiver's thread), so that what is handed to the
    ``HeartbeatTable`` is only what it records: hosts with a newer heartbeat, kernel boot
    ids that changed, and the self-fencing heartbeats to answer. (Checking sequences in
    the server's process cost its interpreter ~6 µs a heartbeat, a fifth of its time
    during a rack failure at 10,000 hosts; a list of names costs it a dict update.)"""

    def __init__(self) -> None:
        self._seq: dict[str, tuple[str, int]] = {}
        self._kernel: dict[str, str] = {}
        self.heard: list[str] = []
        self.kernels: dict[str, str] = {}
        self.grants: list[Taken] = []
        self.refused: list[tuple[str, str]] = []
        self.others: list[str] = []  # heard, unverified (other servers' segments)
        self.fanned: list[str] = []  # of those, following an owner
        self.stale: list[str] = []  # verified with a previous master's key only

    def take(
        self,
        taken: list[Taken],
        refused: list[tuple[str, str]],
        others: Sequence[str] = (),
        fanned: Sequence[str] = (),
        stale: Sequence[str] = (),
    ) -> None:
        self.refused += refused
        self.others += others
        self.fanned += fanned
        self.stale += stale
        seqs, kernels = self._seq, self._kernel
        for t in taken:
            host, boot_id, seq, kernel = t[0], t[1], t[2], t[3]
            last = seqs.get(host)
            if last is not None and last[0] == boot_id and seq <= last[1]:
                self.refused.append((f"host {host} at {t[7]}", "replayed or out-of-order sequence"))
                continue
            seqs[host] = (boot_id, seq)
            self.heard.append(host)
            if kernel and kernels.get(host) != kernel:
                kernels[host] = self.kernels[host] = kernel
            if t[4]:
                self.grants.append(t)

    def message(self, dropped: int | None) -> tuple[Any, ...]:
        """("took", heard, kernels, grants, refused, dropped, others, fanned, stale), and
        a fresh start."""
        out = (
            "took",
            self.heard,
            self.kernels,
            self.grants,
            self.refused,
            dropped,
            self.others,
            self.fanned,
            self.stale,
        )
        self.heard, self.kernels, self.grants, self.refused = [], {}, [], []
        self.others, self.fanned, self.stale = [], [], []
        return out

    def pending(self) -> bool:
        return bool(self.heard or self.refused or self.others)


def _receive_main(
    conn: Connection,
    sock: socket.socket,
    keys: AgentKeys,
    hint: tuple[float, float] | None = None,
) -> None:
    """The receiving child: read, verify and sequence; send ``_Sequencer.message`` to
    the parent every FLUSH seconds with something to say, at least every KEEPALIVE.
    Ends on ("quit",) or when the parent is gone (its end of the pipe closed);
    ("only", hosts) says which hosts to verify (None: all, as it starts); ``hint`` (ttl,
    others): owner hints to the agents of those hosts (None: none). Re-reads the key
    file every CHECK_EVERY seconds (the parent logs the change: it reads it too)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its parent stops it
    sock.setblocking(False)
    sequencer = _Sequencer()
    hinter = _Hinter(*hint) if hint else None
    sent_at = checked_at = time.monotonic()
    dropped = _socket_drops(sock)
    only: frozenset[str] | None = None
    while True:
        try:
            while conn.poll(0):
                message = conn.recv()
                if message[0] == "quit":
                    return
                only = message[1]
        except (EOFError, OSError):
            return
        ready, _, _ = select.select([sock], [], [], FLUSH)
        if ready:
            # Asked before reading: a drop is known before the silence it caused is.
            dropped = _socket_drops(sock)
            batch = _read_batch(sock)
            verified = _verify_batch(batch, keys, only)
            sequencer.take(*verified)
            if hinter is not None and only is not None:
                hinter.send(sock, verified[0], only, time.monotonic())
            if len(batch) < BATCH:
                # Let datagrams gather: woken for each one or two, the loop's own calls
                # (select, the drop counter, the pipe) cost more than reading them.
                time.sleep(SETTLE)
        now = time.monotonic()
        if now - checked_at >= CHECK_EVERY:
            keys.refresh()
            checked_at = now
        if (sequencer.pending() and now - sent_at >= FLUSH) or now - sent_at >= KEEPALIVE:
            try:
                conn.send(sequencer.message(dropped))
            except (EOFError, OSError):
                return
            sent_at = now


_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; absent from some builds


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    """The socket's queue: ``size`` bytes, past net.core.rmem_max when this process may
    (CAP_NET_ADMIN), else as much as rmem_max allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:  # not permitted (or not Linux): within rmem_max
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class HeartbeatReceiver:
    def __init__(
        self,
        table: HeartbeatTable,
        *,
        keys: AgentKeys,
        known_host: Callable[[str], bool],
        bind: tuple[str, int],
        clock: Clock,
        leases: LeaseKeeper | None = None,
        receive_buffer: int = 32 * 1024 * 1024,
        process: bool = False,
        owner_hint: tuple[float, float] | None = None,
    ) -> None:
        """``receive_buffer``: the socket's queue in bytes: about a second of 10,000
        hosts' heartbeats (the kernel charges ~800 bytes a datagram). Set past
        net.core.rmem_max where the server may (SO_RCVBUFFORCE, CAP_NET_ADMIN), else
        capped by it. A starved server then reads heartbeats late instead of losing them:
        a death is declared up to that much later for the hosts that died meanwhile,
        instead of every host's silence ignored (``note_lost``) once the queue overflows.
        ``process``: read and verify in a child process (see the module's doc).
        ``owner_hint``: (ttl, others) of the owner hints sent to the agents of the hosts
        verified while ``verify_only`` names some (several servers); None: none sent.
        ``keys``: the servers' master keys, whose file this receiver re-reads every
        CHECK_EVERY seconds (what else verifies with the same object, the API, follows;
        a receiving child re-reads its own copy)."""
        self._table = table
        self._leases = leases
        self._keys = keys
        self._keys_checked = time.monotonic()
        self._stale_told: set[str] = set()  # hosts logged as holding a previous key
        self._known = known_host
        self._clock = clock
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _set_receive_buffer(self._sock, receive_buffer)
        got = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if got < receive_buffer:  # Linux reports twice what it grants (its bookkeeping)
            LOG.warning(
                "heartbeats: the socket's queue is %d bytes, not the %d asked for (capped "
                "by net.core.rmem_max, and this process may not force it): with thousands "
                "of hosts, raise net.core.rmem_max",
                got,
                receive_buffer,
            )
        self._sock.bind(bind)
        self.address: tuple[str, int] = self._sock.getsockname()
        self._stop = threading.Event()
        self._warned: dict[tuple[str, str], float] = {}
        self.refused = 0
        self.received = 0  # heartbeats recorded (verified, from a known host, newer)
        self.unverified = 0  # heartbeats recorded unverified (other servers' segments)
        self._only: frozenset[str] | None = None  # the hosts to verify (None: all)
        self._conn_lock = threading.Lock()  # one sender on the pipe to the child
        self.dropped = 0  # datagrams the socket dropped, its queue full (SO_MEMINFO)
        self._dropping_since: float | None = None  # logged when it starts and ends
        self._quiet_since = 0.0
        self._counts_drops = _socket_drops(self._sock) is not None
        if not self._counts_drops:
            LOG.warning(
                "heartbeats: this system does not say when the socket drops heartbeats "
                "(no SO_MEMINFO): a server that cannot keep up may take hosts for silent"
            )
        self._process = process
        self._hint = owner_hint
        self._child: BaseProcess | None = None
        self._conn: Connection | None = None
        self._stalled_since: float | None = None  # the child silent (logged once)
        self.children = 0  # receiving children started (process mode)
        self._thread = threading.Thread(
            target=self._follow if process else self._run, name="heartbeat-receiver", daemon=True
        )

    def start(self) -> None:
        self._log_keys(logging.INFO, "accepted")
        if self._process:
            self._spawn()
        self._thread.start()

    def _log_keys(self, level: int, what: str) -> None:
        LOG.log(
            level,
            "agent keys: %d master key(s) %s; agents should hold keys derived from the first",
            len(self._keys.masters),
            what,
        )

    def _check_keys(self) -> None:
        """Re-read the servers' key file every CHECK_EVERY seconds: said once on change."""
        now = time.monotonic()
        if now - self._keys_checked < CHECK_EVERY:
            return
        self._keys_checked = now
        if self._keys.refresh():
            self._stale_told.clear()  # a new rotation: each host left is said again
            self._log_keys(logging.WARNING, "accepted now (key file changed)")

    def _note_stale(self, hosts: list[str]) -> None:
        """Hosts heard with a previous master's key: each said once (per key change)."""
        for host in hosts:
            if host not in self._stale_told and self._known(host):
                self._stale_told.add(host)
                LOG.warning(
                    "host %s: its agent still signs with a key of a previous master key: "
                    "install its new key (vigil-server agent-key %s)",
                    host,
                    host,
                )

    def verify_only(self, hosts: Iterable[str] | None) -> None:
        """Verify the heartbeats of ``hosts`` only (those of the segments this server
        holds); of the others, read the host's name and record it heard, unverified.
        None: verify every heartbeat (a server alone)."""
        only = None if hosts is None else frozenset(hosts)
        if only == self._only:
            return
        self._only = only
        self._tell_child(only)

    def _tell_child(self, only: frozenset[str] | None) -> None:
        with self._conn_lock:
            conn = self._conn
            if conn is not None:
                with contextlib.suppress(EOFError, OSError):  # dead: its successor is told
                    conn.send(("only", only))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._end_child()
        self._sock.close()

    # ------------------------------------------------------------------ process mode

    def _spawn(self) -> None:
        # "spawn": this process runs threads, which a fork would copy mid-operation.
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_receive_main,
            args=(child, self._sock, self._keys, self._hint),
            name="vigil-heartbeats",
            daemon=True,
        )
        proc.start()
        child.close()
        with self._conn_lock:
            self._child, self._conn = proc, parent
        self.children += 1
        if self._only is not None:
            self._tell_child(self._only)

    def _end_child(self) -> None:
        with self._conn_lock:
            proc, conn = self._child, self._conn
            self._child = self._conn = None
        if conn is not None:
            with contextlib.suppress(EOFError, OSError):
                conn.send(("quit",))
            conn.close()
        if proc is not None:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2)

    def _follow(self) -> None:
        """Record what the child took; a child silent for STALLED seconds, or dead, is a
        server that cannot hear: every host counts as heard until one answers again."""
        heard_at = self._clock.monotonic()
        while not self._stop.is_set():
            self._check_keys()
            conn = self._conn
            message = None
            if conn is not None:
                try:
                    if conn.poll(KEEPALIVE):
                        message = conn.recv()
                except (EOFError, OSError):
                    message = None
            if message is not None:
                _, heard, kernels, grants, refused, dropped, others, fanned, stale = message
                if self._stalled_since is not None:
                    LOG.warning("heartbeats: the receiving process answers again")
                    self._stalled_since = None
                heard_at = self._clock.monotonic()
                self._note_drops(dropped)
                for source, why in refused:
                    self._refuse(source, why)
                self._record_heard(heard, kernels, grants)
                self._record_others(others, fanned)
                self._note_stale(stale)
                continue
            if self._stop.is_set():
                return
            child = self._child
            dead = child is None or not child.is_alive()
            if dead or self._clock.monotonic() - heard_at >= STALLED:
                self._table.note_lost()
                if self._stalled_since is None:
                    self._stalled_since = self._clock.monotonic()
                    LOG.error(
                        "heartbeats: the receiving process %s: no host's silence counts "
                        "until it answers",
                        "died (exit code %s); starting another"
                        % (child.exitcode if child else None)
                        if dead
                        else f"has said nothing for {STALLED:g}s",
                    )
                if dead:
                    self._end_child()
                    self._spawn()
                    heard_at = self._clock.monotonic()

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
        sequencer = _Sequencer()
        hinter = _Hinter(*self._hint) if self._hint else None
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._sock], [], [], 0.5)
            except (OSError, ValueError):  # closed by stop()
                if self._stop.is_set():
                    return
                raise
            self._check_keys()
            if not ready:
                continue
            # Asked before reading: a drop is known before the silence it caused is.
            self._note_drops(_socket_drops(self._sock) if self._counts_drops else None)
            try:
                batch = _read_batch(self._sock)
            except OSError:
                if self._stop.is_set():
                    return
                raise
            only = self._only
            verified = _verify_batch(batch, self._keys, only)
            sequencer.take(*verified)
            if hinter is not None and only is not None:
                hinter.send(self._sock, verified[0], only, self._clock.monotonic())
            _, heard, kernels, grants, refused, _, others, fanned, stale = sequencer.message(None)
            for source, why in refused:
                self._refuse(source, why)
            self._record_heard(heard, kernels, grants)
            self._record_others(others, fanned)
            self._note_stale(stale)

    def _note_drops(self, dropped: int | None) -> None:
        if dropped is not None and dropped > self.dropped:
            self._lost(dropped)
        elif self._dropping_since is not None:
            self._caught_up()

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

    def _record_heard(self, heard: list[str], kernels: dict[str, str], grants: list[Taken]) -> None:
        """What a receiving child found newer: from known hosts, recorded; answered if
        self-fencing."""
        known = self._known
        hosts = [h for h in heard if known(h)]
        if len(hosts) < len(heard):
            for h in heard:
                if not known(h):
                    self._refuse(f"host {h}", "unknown host")
        self._table.heard(hosts, {h: k for h, k in kernels.items() if known(h)})
        self.received += len(hosts)
        if self._leases is not None:
            for t in grants:
                if known(t[0]):
                    beat = Heartbeat(t[0], t[1], t[2], 0.0, t[4], t[3], t[5], t[6])
                    self._grant(beat, (t[7], t[8]), t[9])

    def _record_others(self, others: list[str], fanned: list[str]) -> None:
        """Hosts of other servers' segments, heard unverified: their liveness only (no
        kernel boot id, no grant) and whether they follow an owner; a name not known is
        passed over without a word."""
        if not others:
            return
        known = self._known
        hosts = [h for h in others if known(h)]
        self._table.heard_unverified(hosts, [h for h in fanned if known(h)])
        self.unverified += len(hosts)

    def _grant(self, beat: Heartbeat, to: tuple[str, int], key: bytes) -> None:
        """Answer ``beat`` with a lease grant signed with ``key``, the one it was."""
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
            self._sock.sendto(encode_grant(grant, key), to)
        except OSError as exc:
            LOG.warning("host %s: lease grant not sent: %s", beat.host, exc)
