"""What Masakari's records change in the engine's recoveries, owned here and wired by the
server (not installed by building the Masakari API):

- ``SegmentTargets``: a segment's Masakari recovery method as the destinations an
  evacuation tries, in order;
- ``replay_reports``: after a restart, the COMPUTE_HOST reports not acted on yet are
  handed to the engine again (they were persisted before they were acknowledged: S2).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vigil.clock import Clock
from vigil.engine.engine import Engine
from vigil.model import Host, HostState, Segment
from vigil.store import NotFoundError, Store
from vigil.store.masakari import MasakariRecords

LOG = logging.getLogger("vigil.engine")

# On start-up, reports younger than this are handed to the engine again (S2).
REPORT_REPLAY = 3600.0


def evacuation_targets(method: str, reserved: Sequence[str]) -> tuple[str | None, ...]:
    """Masakari's recovery methods as the destinations an evacuation tries in order, one
    per attempt (None: Nova's scheduler). No fixed waits between them: the next
    destination is the next attempt, after vigil's usual backoff."""
    hosts: tuple[str | None, ...] = tuple(reserved)
    if method == "reserved_host":
        # Masakari fails a reserved_host recovery that has no reserved host left; vigil
        # would rather recover: Nova's scheduler then chooses (and says so in the log).
        return hosts or (None,)
    if method == "rh_priority":
        return (*hosts, None)
    if method == "auto_priority":
        return (None, *hosts)
    return (None,)


class SegmentTargets:
    """``Engine.use_evacuation_targets``: per failed host, its segment's recovery method
    over the segment's usable reserved hosts."""

    def __init__(self, store: Store, records: MasakariRecords) -> None:
        self._store = store
        self._records = records

    def __call__(self, host: Host, segment: Segment) -> tuple[str | None, ...]:
        extra = self._records.segments().get(segment.name)
        method = extra.recovery_method if extra else "auto"
        if method not in ("reserved_host", "rh_priority", "auto_priority"):
            # Nova's scheduler chooses: no need to read the segment's hosts (once per
            # evacuation, a rack failure's 2,000 reads of a 10,000-host segment).
            return evacuation_targets(method, ())
        usable = (HostState.NEW, HostState.UP)
        reserved = [
            h.name
            for h in self._store.list_hosts(segment.name)
            if h.reserved and not h.maintenance and h.state in usable and h.name != host.name
        ]
        chosen = evacuation_targets(method, reserved)
        if method == "reserved_host" and not reserved:
            LOG.warning(
                "host %s: segment %s recovers to reserved hosts but has none usable: "
                "Nova's scheduler chooses",
                host.name,
                segment.name,
            )
        return chosen


def replay_reports(*, store: Store, engine: Engine, records: MasakariRecords, clock: Clock) -> int:
    """Hand the engine again the COMPUTE_HOST reports it has not acted on yet (after a
    restart: they were persisted before they were acknowledged)."""
    count = 0
    now = clock.wall()
    for n in records.notifications():
        if (
            n.type != "COMPUTE_HOST"
            or n.status != "new"
            or n.recovery_id is not None
            or now - n.created_at > REPORT_REPLAY
            or n.payload.get("event", "").upper() != "STOPPED"
        ):
            continue
        try:
            host = store.get_host(n.hostname)
        except NotFoundError:
            continue
        if host.state in (HostState.NEW, HostState.UP, HostState.SUSPECT):
            engine.report_down(
                n.hostname, source="masakari", reason="COMPUTE_HOST STOPPED (replayed)"
            )
            count += 1
    return count
