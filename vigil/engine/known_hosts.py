"""The hosts as the engine's latest snapshot read them, shared with the threads that must
not read the store per call: the lease keeper (may this host have a lease? was its agent
ever heard?) and the heartbeat receiver (is this a host vigil knows?).

Made before the engine and the lease keeper and handed to both, so neither asks the
other: the engine replaces its content whole at each snapshot (one reference swap, safe
to read from any thread)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vigil.engine.heartbeat import HeartbeatTable
from vigil.model import Host, HostState


class KnownHosts:
    def __init__(self, heartbeats: HeartbeatTable, hosts: Iterable[Host] = ()) -> None:
        self._heartbeats = heartbeats
        self._hosts: Mapping[str, Host] = {h.name: h for h in hosts}

    def replace(self, hosts: Iterable[Host]) -> None:
        self._hosts = {h.name: h for h in hosts}

    def share(self, hosts: Mapping[str, Host]) -> None:
        """Read ``hosts`` from now on: a mapping its owner replaces, never changes."""
        self._hosts = hosts

    def get(self, name: str) -> Host | None:
        return self._hosts.get(name)

    def all(self) -> Mapping[str, Host]:
        return self._hosts

    def is_known(self, name: str) -> bool:
        return name in self._hosts

    def agent_known(self, name: str) -> bool:
        """Whether a vigil agent has ever been heard from the host: in this process, or
        (its kernel boot id stored) in an earlier one. A host never heard cannot have
        reset itself by its watchdog: it is never taken as self-fenced."""
        host = self._hosts.get(name)
        return self._heartbeats.age(name) is not None or (
            host is not None and host.boot_id is not None
        )

    def may_grant(self, name: str) -> bool:
        """Whether a self-fencing lease may go to this host: a known host that is not
        failed or recovered, by the stored state (which survives a restart of this
        server, unlike the lease keeper's revocations)."""
        host = self._hosts.get(name)
        return host is not None and host.state not in (HostState.FAILED, HostState.RECOVERED)
