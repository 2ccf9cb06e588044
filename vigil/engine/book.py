"""The engine's book: the hosts and their active recoveries as the store holds them, kept
in memory and brought up to date each cycle from the store's change revisions.

At 10,000 hosts, reading every host from the store at every cycle (ten a second) costs
more than a core; so each cycle asks the store only what changed since the revision the
book holds (``Store.changes_since``: one small query when nothing did) and reads again
just those hosts, with their active recoveries and steps. Whoever wrote them — this
server's engine, its API, another server's — the revision names them (see
``vigil.store.session``). What cannot be told host by host (a host deleted, steps
requeued in bulk) makes the book read everything again, as on its first cycle.

The book is read on the decision thread only; ``hosts`` is replaced whole, never changed
in place, so a reference handed to another thread (``KnownHosts``) stays consistent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType

from vigil.engine.decide import ACTIVE_RECOVERY
from vigil.model import (
    Control,
    Host,
    HostState,
    Recovery,
    RecoveryStatus,
    Segment,
    StepKind,
    StepStatus,
)
from vigil.store.base import Store

# More hosts changed than this since the last cycle: one read of everything is cheaper
# than reading them by name (a server's first cycles after a restart of every agent).
READ_ALL_ABOVE = 500


class HostBook:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._revision = -1
        self._full: int | None = None
        self.hosts: Mapping[str, Host] = MappingProxyType({})
        # Hosts by segment, and those not UP (the ones the rule looks at whatever their
        # heartbeats say).
        self._members: dict[str, dict[str, Host]] = {}
        self.unsettled: frozenset[str] = frozenset()
        # Hosts of each segment not in maintenance: the storm guard's denominator.
        self.monitored: Mapping[str, int] = {}
        self.recoveries: Mapping[str, tuple[Recovery, ...]] = {}  # active ones, by host
        # Failed hosts with no active recovery whose last one ended FAILED at the fence.
        self.unfenced: Mapping[str, Recovery] = {}
        self.segments: Mapping[str, Segment] = {}
        self.control = Control()
        self.version = 0  # rises with every change read
        self.full_reads = 0  # how many times everything was read (tests, logs)

    def refresh(self) -> bool:
        """Bring the book up to date; whether anything changed."""
        changes = self._store.changes_since(self._revision)
        if changes.revision == self._revision and changes.full == self._full:
            return False
        if changes.full != self._full or len(changes.hosts) > READ_ALL_ABOVE:
            self._read(None)
        elif changes.hosts:
            self._read(changes.hosts)
        # Segments and the control row are few: read again at every change.
        self.segments = {s.name: s for s in self._store.list_segments()}
        self.control = self._store.get_control()
        self._revision, self._full = changes.revision, changes.full
        self.version += 1
        return True

    def _read(self, names: Collection[str] | None) -> None:
        """Read ``names`` again (None: every host) after the revision was read, so that
        what is read is at least as new as it: a change made meanwhile is read again at
        the next refresh, never missed."""
        store = self._store
        read = store.list_hosts(names=names)
        if names is None:
            self.full_reads += 1
            hosts = {h.name: h for h in read}
            active = store.list_recoveries(statuses=ACTIVE_RECOVERY, limit=len(hosts) + 1000)
            recoveries: dict[str, tuple[Recovery, ...]] = {}
            unfenced: dict[str, Recovery] = {}
        else:
            hosts = dict(self.hosts)
            for name in names:
                hosts.pop(name, None)
            hosts.update((h.name, h) for h in read)
            active = store.list_recoveries(statuses=ACTIVE_RECOVERY, hosts=names)
            recoveries = {h: r for h, r in self.recoveries.items() if h not in names}
            unfenced = {h: r for h, r in self.unfenced.items() if h not in names}
        by_host: dict[str, list[Recovery]] = {}
        for recovery in active:
            by_host.setdefault(recovery.host, []).append(recovery)
        recoveries.update((h, tuple(rs)) for h, rs in by_host.items())
        for name in hosts if names is None else names:
            host = hosts.get(name)
            if host is None or host.state != HostState.FAILED or name in recoveries:
                continue
            last = store.list_recoveries(host=name, limit=1)  # only failed hosts: few
            fence = last[0].step(StepKind.FENCE) if last else None
            if (
                last
                and last[0].status == RecoveryStatus.FAILED
                and fence is not None
                and fence.status == StepStatus.FAILED
            ):
                unfenced[name] = last[0]
        if names is None:  # everything read
            members: dict[str, dict[str, Host]] = {}
            for host in hosts.values():
                members.setdefault(host.segment, {})[host.name] = host
            unsettled = {n for n, h in hosts.items() if h.state != HostState.UP}
            segments = set(members)
            monitored: dict[str, int] = {}
        else:  # only what the changed hosts touch is copied: O(changes), not O(hosts)
            members = dict(self._members)
            unsettled = set(self.unsettled)
            monitored = dict(self.monitored)
            segments = set()
            copied: set[str] = set()
            for name in names:
                for was in (self.hosts.get(name), hosts.get(name)):
                    if was is None:
                        continue
                    segments.add(was.segment)
                    if was.segment not in copied:
                        copied.add(was.segment)
                        members[was.segment] = dict(members.get(was.segment, {}))
                    members[was.segment].pop(name, None)
                host = hosts.get(name)
                if host is not None:
                    members[host.segment][name] = host
                if host is not None and host.state != HostState.UP:
                    unsettled.add(name)
                else:
                    unsettled.discard(name)
        for segment in segments:
            group = members.get(segment, {})
            if not group:
                members.pop(segment, None)
                monitored.pop(segment, None)
            else:
                monitored[segment] = sum(1 for h in group.values() if not h.maintenance)
        self.hosts = MappingProxyType(hosts)
        self.recoveries = recoveries
        self.unfenced = unfenced
        self._members = members
        self.monitored = monitored
        self.unsettled = frozenset(unsettled)

    @property
    def members(self) -> Mapping[str, Mapping[str, Host]]:
        """The hosts of each segment, by name."""
        return self._members
