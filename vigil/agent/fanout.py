"""Which servers a heartbeat goes to, when several vigil-servers share the hosts.

Every server reading every heartbeat made each pay for all of them: at 3,000 hosts three
servers each spent 0.31 cores against one server's 0.35 (bench/scale.py), reading
datagrams in Python even where it only peeked at the host's name. So the owner of a
host's segment tells the host's agent it owns it (an ``OwnerHint``, signed, renewed
while heartbeats keep coming); while such a hint lasts, the agent sends every heartbeat
to that server and to the others only every ``others`` seconds, so that they still know
the host is alive (their host lists, and a server taking the segment over knows which
hosts it has). With no hint in force -- one server, or the owner dead or no longer the
owner -- every heartbeat goes to every server again, as before: a hint that is lost,
late or never sent costs CPU, never a heartbeat to the server that judges the host.

Every heartbeat says whether its agent follows an owner (``fanned``), and an agent that
starts following one keeps sending every heartbeat to every server for ``others`` more
seconds: so a server has always seen the flag before the stream it gets thins, and one
taking a segment over holds the silence of the hosts whose last heartbeat carried it
(``HeartbeatTable.hold``, for ``ttl + others``: the previous owner's hints lapse, or its
own hint reaches the agent), and of no other host -- a host that dies after the takeover
is found as fast as ever.

Pure and clock-free: the caller passes the monotonic time. Not thread-safe (one per
sending loop; the real agent's listener and sender share it under the sender's lock).
"""

from __future__ import annotations

from collections.abc import Sequence

Address = tuple[str, int]


class Fanout:
    """Each host's owner hints (server -> when it lapses) and when it last sent to all."""

    def __init__(self) -> None:
        self._owners: dict[str, dict[Address, float]] = {}
        self._others: dict[str, float] = {}  # seconds between sends to the other servers
        self._all_at: dict[str, float] = {}  # when the host's last heartbeat went to all
        self._since: dict[str, float] = {}  # when the host began following an owner

    def hinted(self, host: str, server: Address, ttl: float, others: float, now: float) -> None:
        """``server`` says it owns ``host``'s segment, for ``ttl`` seconds from ``now``."""
        if not self.fanned(host, now):
            self._since[host] = now
        self._owners.setdefault(host, {})[server] = now + ttl
        self._others[host] = others

    def forget(self, host: str) -> None:
        """A new agent on ``host`` (restarted): it knows no owner yet."""
        self._owners.pop(host, None)
        self._all_at.pop(host, None)
        self._since.pop(host, None)

    def fanned(self, host: str, now: float) -> bool:
        """Whether ``host`` follows an owner at ``now`` (what its heartbeats say)."""
        hints = self._owners.get(host)
        return hints is not None and any(until > now for until in hints.values())

    def owners(self, host: str, now: float) -> list[Address]:
        """The servers whose hint for ``host`` is in force at ``now``."""
        return [s for s, until in self._owners.get(host, {}).items() if until > now]

    def targets(self, host: str, servers: Sequence[Address], now: float) -> Sequence[Address]:
        """Where ``host``'s heartbeat sent at ``now`` goes: to each of ``servers`` with a
        hint in force (two, briefly, while ownership moves), and to every one of them
        when none has, for ``others`` seconds after the host began following an owner,
        and when the others last had one ``others`` seconds ago or more.
        A hint from an address no longer among ``servers`` does not count."""
        hints = self._owners.get(host)
        if hints:
            owners = [s for s in servers if hints.get(s, 0.0) > now]
            others = self._others[host]
            if (
                owners
                and now - self._since[host] >= others
                and now - self._all_at.get(host, float("-inf")) < others
            ):
                return owners
            if not owners and all(until <= now for until in hints.values()):
                del self._owners[host]  # all lapsed: forgotten, the common path is free
        self._all_at[host] = now
        return servers
