"""Which servers a host's next heartbeat goes to, when several vigil-servers share the
hosts (segment ownership).

Each server verifies only the heartbeats of the segments it holds, but reading a
datagram at all costs its interpreter ~10 µs: with every heartbeat sent to every server,
three servers each still read all of them (bench/scale.py --servers 1,3: 0.31 cores each
against 0.35 for one at 3,000 hosts). So the owner of a host's segment answers one of
its heartbeats in ``every`` with a signed owner hint (``vigil.wire.heartbeat.OwnerHint``);
for the hint's ``ttl`` the agent sends every heartbeat to that server and, to the
others, only those whose sequence number is a multiple of ``every``, the ones the owner
answers, so the hint is renewed while the owner lives. Each server then reads its own
hosts' heartbeats and one in ``every`` of the others'.

What keeps this safe (no host ever looks silent to the server that judges it):
- A hint names the server it came from: heartbeats go to that address only while it is
  one of the configured servers, and only to answer one of this agent's own recent
  heartbeats (same agent boot id, the sequence number at most two hints old), so a
  recorded hint cannot be replayed to divert them.
- A hint lapses ``ttl`` after the heartbeat it answered was sent: an owner that dies or
  gives its segment up stops hinting (a server hints only while its acting window is
  open, which closes before its locks can pass to another), and within ``ttl`` every
  agent of that segment sends every heartbeat to every server again. The server that
  takes the segment over counts no silence of its hosts for that long after the take
  (``vigil.engine.engine``: the routing grace).
- The other servers keep hearing every host, one heartbeat in ``every``: the one that
  takes a segment over knows which hosts were alive.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from vigil.wire.heartbeat import OwnerHint

Address = tuple[str, int]


class OwnerRoutes:
    """The owner hints in force, host by host; thread-safe."""

    def __init__(self) -> None:
        self._routes: dict[str, tuple[Address, int, float]] = {}  # host -> (owner, every, until)
        self._lock = threading.Lock()

    def targets(
        self, host: str, seq: int, servers: Sequence[Address], now: float
    ) -> Sequence[Address]:
        """Where heartbeat ``seq`` of ``host`` goes at monotonic time ``now``."""
        route = self._routes.get(host)
        if route is None:
            return servers
        owner, every, until = route
        if now >= until or owner not in servers:
            with self._lock:
                if self._routes.get(host) == route:
                    del self._routes[host]
            return servers
        if seq % every == 0:
            return servers
        return (owner,)

    def hinted(
        self,
        hint: OwnerHint,
        source: Address,
        *,
        boot_id: str,
        seq: int,
        interval: float,
        now: float,
    ) -> bool:
        """Take ``hint``, received from ``source`` at ``now`` by the agent whose boot id
        and last sequence number are ``boot_id`` and ``seq`` (heartbeats every
        ``interval`` s); whether it was taken. It lapses ``ttl`` after the heartbeat it
        answers was sent (reckoned from the sequence numbers sent since)."""
        behind = seq - hint.seq
        if hint.boot_id != boot_id or hint.every < 2 or behind < 0 or behind > 2 * hint.every:
            return False
        until = now + hint.ttl - behind * interval
        with self._lock:
            current = self._routes.get(hint.host)
            if current is not None and current[2] >= until:
                return False  # a later hint is in force
            self._routes[hint.host] = (source, hint.every, until)
        return True

    def forget(self, host: str) -> None:
        """A new agent (process) for ``host``: its hints answered the old one."""
        with self._lock:
            self._routes.pop(host, None)

    def owner(self, host: str, now: float) -> Address | None:
        """The server ``host``'s hint names, while in force."""
        route = self._routes.get(host)
        return route[0] if route is not None and now < route[2] else None
