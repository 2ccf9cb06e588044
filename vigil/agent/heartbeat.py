"""Sending heartbeats (and hearing lease grants): one sender serves one real host, or
many simulated ones."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from vigil.agent.fanout import Fanout
from vigil.agent.resolve import ServerAddresses
from vigil.wire.heartbeat import (
    HINT_MAGIC,
    MAX_DATAGRAM,
    BadHeartbeat,
    Heartbeat,
    LeaseGrant,
    decode_grant,
    decode_hint,
    encode,
)

LOG = logging.getLogger(__name__)
# Send times are kept this long to match grants to them; a later grant is useless anyway.
_SENT_HORIZON = 60.0


class HeartbeatSender:
    """Sends a signed heartbeat for each of ``hosts`` every ``interval`` seconds.

    ``alive(host)`` decides per beat whether that host can send now (the simulated cloud
    uses it for power loss, isolation and hung hosts); ``delay(host)`` returns an extra
    delay or None to drop the datagram (simulated loss and jitter). A real agent passes
    one host and neither.

    Every heartbeat goes to each of ``servers`` (or to the one ``server``: give exactly
    one of the two) -- to every address of a name, resolved again every
    ``resolve_interval`` seconds off the sending thread (``vigil.agent.resolve``) --, the
    same datagram with the same sequence number: several
    vigil-servers share the hosts, and each keeps hearing every host so that the one that
    takes a segment over knows which hosts are alive. Once the owner of the host's
    segment says so (an owner hint), every heartbeat goes to it and to the others only
    every few seconds, for as long as its hints last (``vigil.agent.fanout``). A send
    that fails to one server does not stop the others; it is logged once per host and
    server until heartbeats reach that server again. Grants may come from any of them
    (only the owner of the host's segment answers; they are signed and matched to what
    was sent).

    With ``watchdog`` > 0 (self-fencing), each heartbeat reports that watchdog timeout and
    the server answers with a lease grant; ``on_lease(host, expires)`` then receives the
    monotonic time the lease ends: the heartbeat's *send* time plus the TTL, so network
    delay can only shorten a lease, never lengthen it. ``on_grant(grant, received_at)``
    receives every valid grant with its monotonic receipt time (the peer guard's input),
    and each next heartbeat acknowledges the last grant received (``ack``): the server
    counts only acknowledged grants when it judges whether a peer was connected.

    ``kernel_boot_id(host)`` gives the host's kernel boot id, sent with every heartbeat
    (a real agent reads ``/proc/sys/kernel/random/boot_id``; see ``read_kernel_boot_id``).
    """

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        server: tuple[str, int] | None = None,
        servers: Sequence[tuple[str, int]] | None = None,
        key: bytes,
        interval: float,
        alive: Callable[[str], bool] | None = None,
        delay: Callable[[str], float | None] | None = None,
        watchdog: float = 0.0,
        on_lease: Callable[[str, float], None] | None = None,
        on_grant: Callable[[LeaseGrant, float], None] | None = None,
        kernel_boot_id: Callable[[str], str] | None = None,
        peer_window: float = 0.0,
        resolve_interval: float = 30.0,
    ) -> None:
        if (server is None) == (servers is None):
            raise ValueError("give exactly one of server and servers")
        self._servers = ServerAddresses(
            [server] if server is not None else list(servers or ()), interval=resolve_interval
        )
        self._hosts = list(hosts)
        self.key = key  # the host's agent key; replaced when its key file changes
        self._interval = interval
        self._alive = alive
        self._delay = delay
        self._watchdog = watchdog
        self._on_lease = on_lease
        self._on_grant = on_grant
        self._kernel_boot_id = kernel_boot_id
        self._peer_window = peer_window
        self._acked = dict.fromkeys(self._hosts, 0)
        self._boot = {h: uuid.uuid4().hex for h in self._hosts}
        self._seq = dict.fromkeys(self._hosts, 0)
        self._sent: dict[tuple[str, str, int], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, name="heartbeat-sender", daemon=True)
        self._listener = threading.Thread(
            target=self._listen, name="heartbeat-listener", daemon=True
        )
        self._timers: list[threading.Timer] = []
        # (host, server) whose last heartbeat to that server could not be sent
        self._failing: set[tuple[str, tuple[str, int]]] = set()
        self._failing_lock = threading.Lock()  # the sender thread and delay timers send
        self._fanout = Fanout()  # under self._lock
        self._foreign_hints: set[tuple[str, int]] = set()  # said once each

    def start(self) -> None:
        self._servers.start()
        self._thread.start()
        self._listener.start()  # grants (self-fencing) and owner hints (several servers)

    def stop(self) -> None:
        self._stop.set()
        self._servers.stop()
        for thread in (self._thread, self._listener):
            if thread.is_alive():
                thread.join(timeout=5)
        for t in self._timers:
            t.cancel()
        self._sock.close()

    def restart_agent(self, host: str) -> None:
        """A new agent process on ``host``: new boot id, sequence from zero."""
        with self._lock:
            self._boot[host] = uuid.uuid4().hex
            self._seq[host] = 0
            self._acked[host] = 0
            self._fanout.forget(host)

    @property
    def servers(self) -> list[tuple[str, int]]:
        """The addresses heartbeats go to now (every address of each configured name)."""
        return list(self._servers.current())

    def _send(self, datagram: bytes, host: str) -> None:
        servers = self._servers.current()
        with self._lock:
            targets = self._fanout.targets(host, servers, time.monotonic())
        for server in targets:  # one failing must not keep it from the others
            try:
                self._sock.sendto(datagram, server)
            except OSError as exc:  # the server being away must not stop the agent
                with self._failing_lock:
                    first = (host, server) not in self._failing
                    self._failing.add((host, server))
                if first:  # said once, until heartbeats go out to it again
                    LOG.warning("host %s: heartbeats not sent to %s:%s: %s", host, *server, exc)
                continue
            if not self._failing:
                continue  # the common case: nothing failed, no lock taken
            with self._failing_lock:
                recovered = (host, server) in self._failing
                self._failing.discard((host, server))
            if recovered:
                LOG.warning("host %s: heartbeats sent to %s:%s again", host, *server)

    def _beat(self, host: str) -> None:
        with self._lock:
            self._seq[host] += 1
            boot, seq, ack = self._boot[host], self._seq[host], self._acked[host]
            now = time.monotonic()
            self._sent[(host, boot, seq)] = now
            fanned = self._fanout.fanned(host, now)
        kernel = ""
        if self._kernel_boot_id is not None:
            try:
                kernel = self._kernel_boot_id(host)
            except (OSError, ValueError) as exc:
                LOG.debug("host %s: no kernel boot id: %s", host, exc)
        beat = Heartbeat(
            host,
            boot,
            seq,
            time.time(),
            self._watchdog,
            kernel_boot_id=kernel,
            ack=ack,
            peer_window=self._peer_window if self._watchdog else 0.0,
            fanned=fanned,
        )
        datagram = encode(beat, self.key)
        extra = 0.0 if self._delay is None else self._delay(host)
        if extra is None:
            return  # lost on the way
        if extra > 0:
            timer = threading.Timer(extra, self._send, (datagram, host))
            timer.daemon = True
            timer.start()
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        else:
            self._send(datagram, host)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            for host in self._hosts:
                if self._alive is None or self._alive(host):
                    self._beat(host)
            with self._lock:
                horizon = time.monotonic() - _SENT_HORIZON
                self._sent = {k: t for k, t in self._sent.items() if t >= horizon}
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def owners(self, host: str) -> list[tuple[str, int]]:
        """The servers whose owner hint for ``host`` is in force now."""
        with self._lock:
            return self._fanout.owners(host, time.monotonic())

    def _hint(self, datagram: bytes, source: tuple[str, int]) -> None:
        try:
            hint = decode_hint(datagram, self.key)
        except BadHeartbeat as exc:
            LOG.warning("owner hint from %s:%s refused: %s", *source, exc)
            return
        if hint.host not in self._boot:
            return
        if source not in self._servers.current():
            if source not in self._foreign_hints:  # said once: heartbeats still go to all
                self._foreign_hints.add(source)
                LOG.warning(
                    "host %s: owner hint from %s:%s, not an address heartbeats go to: "
                    "ignored (every heartbeat keeps going to every server)",
                    hint.host,
                    *source,
                )
            return
        with self._lock:
            self._fanout.hinted(hint.host, source, hint.ttl, hint.others, time.monotonic())

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                datagram, source = self._sock.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)  # not yet bound (nothing sent yet) or a transient error
                continue
            if datagram.startswith(HINT_MAGIC):
                self._hint(datagram, source[:2])
                continue
            if self._on_lease is None:
                continue  # no self-fencing: no grant is wanted
            try:
                grant = decode_grant(datagram, self.key)
            except BadHeartbeat as exc:
                LOG.warning("lease grant refused: %s", exc)
                continue
            received = time.monotonic()
            with self._lock:
                sent = self._sent.get((grant.host, grant.boot_id, grant.seq))
                if self._boot.get(grant.host) != grant.boot_id:
                    sent = None  # a grant to an earlier agent process
                if sent is not None and grant.seq > self._acked.get(grant.host, 0):
                    self._acked[grant.host] = grant.seq
            if sent is None:
                continue  # for an earlier boot, or too old to matter
            self._on_lease(grant.host, sent + grant.ttl)
            if self._on_grant is not None:
                self._on_grant(grant, received)


def read_kernel_boot_id(_host: str = "") -> str:
    """This machine's kernel boot id: new at every boot of the host."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()
