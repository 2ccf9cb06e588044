"""vigil's domain model: plain data, enumerations and the state machines as tables.

Nothing here does I/O or imports another part of vigil. The store persists these
records, the engine decides on them, the API and CLI show them.

State machines are data (as in TaskFlow's ``states.py``): ``check_transition`` raises
``InvalidTransition`` for a move that is not in the table, so a bug that would put a
host or a recovery in an impossible state fails loudly instead of being persisted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

S = TypeVar("S", bound=enum.Enum)


class InvalidTransition(Exception):
    """A state change that the state machine does not allow."""


class HaPolicy(enum.StrEnum):
    """What the owner of an instance wants when its host fails."""

    KEEP_RUNNING = "keep-running"  # fence, then evacuate it automatically
    NOTIFY = "notify"  # fence, then tell; evacuate nothing
    OFF = "off"  # not protected


class HostState(enum.StrEnum):
    NEW = "new"  # known to vigil, no heartbeat seen yet
    UP = "up"  # heartbeats arrive
    SUSPECT = "suspect"  # heartbeats missed; corroborating before declaring
    FAILED = "failed"  # failure declared; a recovery owns the host
    RECOVERED = "recovered"  # fenced and its instances handled; out until an operator restores it


class FailureKind(enum.StrEnum):
    HOST_DOWN = "host-down"
    # The host came back with a new kernel boot id without vigil declaring it failed (its
    # watchdog reset it, or a power blip shorter than detection): its guests are off.
    HOST_REBOOTED = "host-rebooted"


class FailureStatus(enum.StrEnum):
    OPEN = "open"  # recorded, no recovery running yet (for example paused)
    RECOVERING = "recovering"
    RESOLVED = "resolved"
    ERROR = "error"  # recovery could not complete; an operator must look


class RecoveryStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"  # automatic action held (storm guard or operator); reason recorded
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a step failed for good (e.g. a fence that could not be confirmed)
    # A paused declaration that never acted, taken back: the host's heartbeats returned,
    # or an operator dismissed it. Nothing was fenced or moved.
    WITHDRAWN = "withdrawn"


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class StepKind(enum.StrEnum):
    """The steps of a host recovery, in the order they run."""

    FENCE = "fence"  # power off through the BMC, confirmed by a status read
    FORCE_DOWN = "force-down"  # Nova compute service forced down and disabled
    LIST_INSTANCES = "list-instances"  # read the host's instances, plan one step each
    EVACUATE = "evacuate"  # one instance: evacuate, then confirm ACTIVE elsewhere
    NOTIFY = "notify"  # one instance whose policy is notify: tell, move nothing
    # Read the host's instances and their states as they were before anything acts (runs
    # beside the fence, gates nothing): an evacuation restores each to that state.
    RECORD_INSTANCES = "record-instances"
    # A host that rebooted: read its instances, plan a start for each stopped HA one.
    FIND_STOPPED = "find-stopped"
    START = "start"  # one instance found stopped after its host rebooted: start it


HOST_TRANSITIONS: Mapping[HostState, frozenset[HostState]] = {
    HostState.NEW: frozenset({HostState.UP, HostState.SUSPECT}),
    HostState.UP: frozenset({HostState.SUSPECT}),
    # SUSPECT -> NEW: another's report about a host vigil never heard, not corroborated.
    HostState.SUSPECT: frozenset({HostState.UP, HostState.FAILED, HostState.NEW}),
    # FAILED -> UP or NEW only when a paused declaration that never acted is withdrawn
    # (heartbeats back: UP; dismissed by an operator while silent: NEW).
    HostState.FAILED: frozenset({HostState.RECOVERED, HostState.UP, HostState.NEW}),
    # Only an operator's restore brings a recovered host back into use.
    HostState.RECOVERED: frozenset({HostState.NEW}),
}

FAILURE_TRANSITIONS: Mapping[FailureStatus, frozenset[FailureStatus]] = {
    FailureStatus.OPEN: frozenset({FailureStatus.RECOVERING, FailureStatus.RESOLVED}),
    FailureStatus.RECOVERING: frozenset(
        {FailureStatus.RESOLVED, FailureStatus.ERROR, FailureStatus.OPEN}
    ),
    FailureStatus.ERROR: frozenset({FailureStatus.RESOLVED, FailureStatus.RECOVERING}),
    # A consumer's action after the fact (evacuate these instances now) reopens it.
    FailureStatus.RESOLVED: frozenset({FailureStatus.RECOVERING}),
}

RECOVERY_TRANSITIONS: Mapping[RecoveryStatus, frozenset[RecoveryStatus]] = {
    RecoveryStatus.PENDING: frozenset(
        {RecoveryStatus.RUNNING, RecoveryStatus.PAUSED, RecoveryStatus.FAILED}
    ),
    RecoveryStatus.RUNNING: frozenset(
        {RecoveryStatus.SUCCEEDED, RecoveryStatus.FAILED, RecoveryStatus.PAUSED}
    ),
    RecoveryStatus.PAUSED: frozenset(
        {RecoveryStatus.RUNNING, RecoveryStatus.FAILED, RecoveryStatus.WITHDRAWN}
    ),
    RecoveryStatus.WITHDRAWN: frozenset(),
    # An operator may retry a failed recovery once the cause is fixed.
    RecoveryStatus.FAILED: frozenset({RecoveryStatus.RUNNING}),
    # A consumer asks, after the fact, for more steps (evacuate these instances now).
    RecoveryStatus.SUCCEEDED: frozenset({RecoveryStatus.RUNNING}),
}

STEP_TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset({StepStatus.RUNNING, StepStatus.SKIPPED}),
    # running -> pending: a temporary error, retried after a backoff, or a step found
    # running after a crash (every step is idempotent, so it simply runs again).
    StepStatus.RUNNING: frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.PENDING}),
    StepStatus.FAILED: frozenset({StepStatus.PENDING}),  # operator retry
    StepStatus.SUCCEEDED: frozenset(),
    StepStatus.SKIPPED: frozenset(),
}


def check_transition(table: Mapping[S, frozenset[S]], current: S, new: S, *, what: str) -> None:
    """Raise InvalidTransition unless ``current -> new`` is in ``table`` (same state is a no-op)."""
    if current == new:
        return
    if new not in table[current]:
        raise InvalidTransition(f"{what}: {current.value} -> {new.value} is not allowed")


@dataclass(frozen=True)
class Segment:
    """A failover domain: hosts whose instances may be evacuated to one another."""

    name: str
    description: str = ""
    default_policy: HaPolicy = HaPolicy.OFF
    # Storm guard (S3): if more than this share of the segment's hosts fail at once,
    # automatic recovery in the segment pauses and an alarm is recorded.
    max_failed_share: float = 0.5
    max_parallel_evacuations: int = 8
    paused: bool = False
    pause_reason: str = ""
    id: int | None = None


@dataclass(frozen=True)
class FenceMethod:
    """One fencing level: a driver name and its options (secrets referenced, not stored)."""

    driver: str
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Host:
    name: str
    segment: str
    state: HostState = HostState.NEW
    maintenance: bool = False
    reserved: bool = False
    fencing: tuple[FenceMethod, ...] = ()
    state_reason: str = ""
    state_changed_at: float = 0.0
    boot_id: str | None = None  # the kernel boot id its agent last reported (None: never)
    id: int | None = None


@dataclass(frozen=True)
class InstancePolicy:
    """An operator's override of an instance's HA policy (metadata otherwise decides)."""

    instance_id: str
    policy: HaPolicy
    priority: int = 0


@dataclass(frozen=True)
class Failure:
    """Something observed to be wrong with a host; repeated observations fold into one."""

    id: int
    host: str
    kind: FailureKind
    status: FailureStatus
    reason: str
    sources: tuple[str, ...]  # who observed it: heartbeat, bmc, compute, agent, operator
    first_seen: float
    last_seen: float
    count: int = 1


@dataclass(frozen=True)
class Step:
    id: int
    recovery_id: int
    seq: int  # execution order within the recovery
    kind: StepKind
    status: StepStatus
    instance_id: str | None = None
    instance_name: str | None = None
    priority: int = 0
    attempts: int = 0
    next_attempt_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    detail: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)
    target_host: str | None = None  # a consumer's chosen destination for an evacuation
    # An evacuation's input: the status its instance had before the failure (None: not
    # known when it was planned, as for a consumer's evacuation)
    status_before: str | None = None
    # The owner's epoch it was last started under (None: started by a server running
    # without segment ownership); a step RUNNING under an older epoch is re-checked
    # against the cloud by the new owner before being done again.
    epoch: int | None = None


@dataclass(frozen=True)
class Recovery:
    id: int
    failure_id: int
    host: str
    segment: str
    status: RecoveryStatus
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    reason: str = ""
    steps: tuple[Step, ...] = ()

    def step(self, kind: StepKind) -> Step | None:
        """The first step of a kind (the host-level steps occur once)."""
        return next((s for s in self.steps if s.kind == kind), None)


@dataclass(frozen=True)
class NewStep:
    """A step to add to a recovery; the store assigns its id and sequence number."""

    kind: StepKind
    instance_id: str | None = None
    instance_name: str | None = None
    priority: int = 0
    status: StepStatus = StepStatus.PENDING
    detail: str = ""
    target_host: str | None = None
    status_before: str | None = None  # an evacuation's instance, before the failure


@dataclass(frozen=True)
class Control:
    """Cloud-wide switch: an operator can pause every automatic action with one command."""

    paused: bool = False
    reason: str = ""
    changed_at: float = 0.0


@dataclass(frozen=True)
class Event:
    """Something vigil observed or did, as published. ``id`` (a UUID) is the idempotency
    key consumers deduplicate on; ``seq`` orders events (the outbox's position)."""

    id: str
    event_type: str  # e.g. vigil.host.failure.confirmed; see vigil.events
    timestamp: float
    host: str | None = None
    instance_id: str | None = None
    priority: str = "INFO"
    payload: Mapping[str, Any] = field(default_factory=dict)
    seq: int = 0
    # The project (tenant) of ``instance_id``, as Nova last told vigil; None for an event
    # about no instance, or one whose project vigil never learnt. A project member sees
    # only the events of their project.
    project_id: str | None = None


@dataclass(frozen=True)
class Subscription:
    """A webhook consumer: events whose type matches ``event_types`` (exact or ``prefix.*``;
    none means all) are POSTed to ``url``, signed with ``secret``."""

    name: str
    url: str
    secret: str = field(repr=False, default="")
    event_types: tuple[str, ...] = ()
    created_at: float = 0.0
    id: int | None = None
    # A project member's subscription (None: an admin's, for every project): it is sent
    # only the events of instances of this project.
    project_id: str | None = None

    def wants(self, event: Event) -> bool:
        if self.project_id is not None and event.project_id != self.project_id:
            return False
        if not self.event_types:
            return True
        return any(
            event.event_type == t or (t.endswith(".*") and event.event_type.startswith(t[:-1]))
            for t in self.event_types
        )


@dataclass(frozen=True)
class SinkState:
    """Where one delivery sink (the bus, a webhook subscription...) stands in the outbox."""

    name: str
    cursor: int = 0  # seq of the last event delivered or dead-lettered
    attempts: int = 0  # failed attempts at the event after the cursor
    next_attempt_at: float = 0.0
    last_error: str = ""


@dataclass(frozen=True)
class DeadLetter:
    sink: str
    event_seq: int
    event_id: str
    event_type: str
    attempts: int
    error: str
    at: float


# --- host services (nova-compute, libvirtd) ------------------------------------------


@dataclass(frozen=True)
class ServiceState:
    """One watched service of a host as its agent last saw it (``vigil.agent.services``)."""

    up: bool
    since: float  # when the agent saw it change to this state (epoch seconds)
    detail: str = ""  # e.g. "no process matches 'nova-compute'", "pid 4242"


class ComputeHold(enum.StrEnum):
    """What vigil did to a host's compute service because a service of the host was down."""

    NONE = ""  # nothing: all up, or not yet acted on
    DISABLED = "disabled"  # vigil disabled it (its reason starts with SERVICE_HOLD_PREFIX)
    LEFT = "left"  # it was already disabled by someone else: left as it was, not to enable


# The disabled_reason vigil gives a compute service it disables because a service of its
# host is down; it enables again only a service whose reason still starts with this.
SERVICE_HOLD_PREFIX = "vigil: host services down:"


@dataclass(frozen=True)
class HostServices:
    """The latest service report of a host's agent and what vigil did about it."""

    host: str
    services: Mapping[str, ServiceState]
    reported_at: float  # when the agent took the snapshot (newer snapshots replace it)
    hold: ComputeHold = ComputeHold.NONE
    hold_reason: str = ""  # the disabled_reason set, or the one found (LEFT)
    changed_at: float = 0.0
    action_attempts: int = 0  # failed attempts at the pending action, in a row
    next_attempt_at: float = 0.0  # not before this (a retry after a Nova error)

    @property
    def down(self) -> tuple[str, ...]:
        return tuple(sorted(name for name, s in self.services.items() if not s.up))


# --- guest OS failures (libvirt instance monitor) -------------------------------------


class GuestFailureKind(enum.StrEnum):
    """What the host agent saw happen to a guest (libvirt domain events)."""

    WATCHDOG = "watchdog"  # the guest's i6300esb watchdog fired (detail: libvirt's action)
    CRASHED = "crashed"  # kernel panic reported by pvpanic, or QEMU stopped on a crash
    STOPPED_FAILED = "stopped-failed"  # QEMU died (killed, out of memory, assertion)
    IO_ERROR = "io-error"  # a disk I/O error paused or reported by the guest


class GuestFailureStatus(enum.StrEnum):
    OPEN = "open"  # recorded; the rule decides what to do
    RECOVERING = "recovering"  # a restart through Nova is planned or running
    RESOLVED = "resolved"  # running again (agent saw it start) or nothing to do
    NOTIFIED = "notified"  # policy notify: the owner was told, the guest left as it is
    ESCALATED = "escalated"  # restart budget exhausted or reset loop: an operator must look


GUEST_FAILURE_TRANSITIONS: Mapping[GuestFailureStatus, frozenset[GuestFailureStatus]] = {
    GuestFailureStatus.OPEN: frozenset(
        {
            GuestFailureStatus.RECOVERING,
            GuestFailureStatus.RESOLVED,
            GuestFailureStatus.NOTIFIED,
            GuestFailureStatus.ESCALATED,
        }
    ),
    GuestFailureStatus.RECOVERING: frozenset(
        {GuestFailureStatus.RESOLVED, GuestFailureStatus.ESCALATED, GuestFailureStatus.OPEN}
    ),
    GuestFailureStatus.RESOLVED: frozenset(),
    GuestFailureStatus.NOTIFIED: frozenset({GuestFailureStatus.RESOLVED}),
    GuestFailureStatus.ESCALATED: frozenset({GuestFailureStatus.RESOLVED}),
}


@dataclass(frozen=True)
class GuestReport:
    """One observation sent by a host agent. ``id`` (a UUID chosen by the agent) makes a
    retried report idempotent."""

    id: str
    host: str
    instance_id: str  # the libvirt domain UUID, which is the Nova instance UUID
    kind: GuestFailureKind
    at: float  # when the agent saw the event (epoch seconds)
    detail: Mapping[str, Any] = field(default_factory=dict)  # libvirt event, action, reason


@dataclass(frozen=True)
class InstanceFailure:
    """A guest failure episode of one instance. Reports of the same group (crashed and
    stopped-failed are one group: a crash loop is one failure) fold into it until it is
    resolved; ``count`` says how many arrived and ``seen_count`` how many the rule has
    already acted on. ``occurrences`` keeps the latest report times (the reset-loop
    window); ``restarts`` counts restarts issued in this episode (the budget)."""

    id: int
    instance_id: str
    host: str
    kind: GuestFailureKind
    status: GuestFailureStatus
    reason: str
    first_seen: float
    last_seen: float
    count: int = 1
    seen_count: int = 0
    occurrences: tuple[float, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)  # of the latest report
    restarts: int = 0
    next_restart_at: float = 0.0  # backoff: no restart before this
    action_status: StepStatus | None = None  # the restart step, if one is planned
    action_attempts: int = 0  # attempts of the current restart step
    action_detail: str = ""
    changed_at: float = 0.0  # last status or step change


class RequestKind(enum.StrEnum):
    """Operator requests that wait on the cloud, carried out by the engine's workers."""

    RESTORE_HOST = "restore-host"  # compute service up and enabled, the host monitored again
    RESTART_INSTANCE = "restart-instance"  # a consumer's hard reboot of an instance
    # in-guest clusters (vigil.engine.clusters): their cloud resources built or removed,
    # and a member powered off or on for its cluster's fence agent
    BUILD_CLUSTER = "build-cluster"
    DELETE_CLUSTER = "delete-cluster"
    POWER_OFF_MEMBER = "power-off-member"
    POWER_ON_MEMBER = "power-on-member"


@dataclass(frozen=True)
class OperatorRequest:
    """An operator's (or consumer's) request, recorded before it is carried out: PENDING
    (with its not-before time) → RUNNING → SUCCEEDED or FAILED, back to PENDING after a
    temporary error; one at a time per ``target`` (a host name, an instance id)."""

    id: int
    kind: RequestKind
    target: str
    host: str | None  # the host it concerns (named in its events and log lines)
    status: StepStatus
    reason: str = ""
    attempts: int = 0
    next_attempt_at: float = 0.0
    created_at: float = 0.0
    finished_at: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class OwnerToken:
    """A fencing token: ``owner`` (a vigil-server's member id) acts on ``segment`` under
    ``epoch``. The store refuses a write made under a token whose epoch is no longer the
    segment's (``vigil.store.StaleEpoch``): a server that lost its lease and has not
    noticed yet cannot record anything, hence cannot start a step."""

    segment: str
    owner: str
    epoch: int


@dataclass(frozen=True)
class SegmentOwner:
    """Who owns a segment now and under which epoch (each takeover adds one)."""

    segment: str
    owner: str
    epoch: int
    taken_at: float


# --- application checks (issue 17) -------------------------------------------------------


class Health(enum.StrEnum):
    """One application check's verdict."""

    UNKNOWN = "unknown"  # no result yet, or in its grace period
    HEALTHY = "healthy"
    FAILING = "failing"  # failed threshold times in a row
    SUSPENDED = "suspended"  # paused, migrating, rebuilding, or its host failing


@dataclass(frozen=True)
class CheckState:
    health: Health = Health.UNKNOWN
    failures: int = 0  # consecutive failed runs counted
    last_run_at: float | None = None
    detail: str = ""
    since: float | None = None  # when ``health`` last changed


class AppEpisodeStatus(enum.StrEnum):
    """Where an application failure stands (``AppInstance.episode``)."""

    RECOVERING = "recovering"  # keep-running: the ladder climbs
    NOTIFIED = "notified"  # notify: told, the owner acts
    ESCALATED = "escalated"  # the ladder is spent: no more action until it is closed
    RESOLVED = "resolved"  # every liveness check passes again
    CLOSED = "closed"  # closed by an operator or the owner


@dataclass(frozen=True)
class AppEpisode:
    """The current (or last) application failure of an instance: from its first failing
    liveness check to every check passing again, or closed by hand."""

    status: AppEpisodeStatus
    mode: str  # "keep-running" or "notify"
    opened_at: float
    reason: str
    attempts: int = 0  # ladder attempts made (an index into its rungs)
    last_action_at: float | None = None
    action: str = ""  # the rung of the last attempt ("restart-app", "soft-reboot", ...)
    action_status: StepStatus | None = None  # PENDING/RUNNING, then SUCCEEDED or FAILED
    action_id: str = ""  # the guest command's id of a restart-app attempt
    action_detail: str = ""
    closed_at: float | None = None
    closed_by: str = ""

    @property
    def open(self) -> bool:
        return self.status not in (AppEpisodeStatus.RESOLVED, AppEpisodeStatus.CLOSED)


@dataclass(frozen=True)
class AppInstance:
    """An instance with application checks: what its owner declared, the state of each
    check (run and judged by its host's agent; ``heartbeat`` checks judged by the
    server from the application's own calls) and its current or last episode."""

    instance_id: str
    host: str
    declaration: Mapping[str, str]  # the vigil:check:* and vigil:app_recovery keys in force
    mode: str = "keep-running"  # or "notify" (the instance's HA policy)
    error: str = ""  # why the declaration is refused ("field: reason"); no check runs then
    checks: Mapping[str, CheckState] = field(default_factory=dict)  # by check name
    started_at: float = 0.0  # last (re)start vigil knows of: grace counts from it
    last_beat_at: float | None = None  # the application's last heartbeat call
    reported_at: float = 0.0  # the ``at`` of the agent's last report
    episode: AppEpisode | None = None
    updated_at: float = 0.0


class ClusterStatus(enum.StrEnum):
    """An in-guest cluster's life: its cloud resources being built, built, failed to
    build (an operator looks, then deletes), being removed."""

    WAITING = "waiting"  # external: recorded, its resources not adopted yet
    BUILDING = "building"
    ACTIVE = "active"
    ERROR = "error"
    DELETING = "deleting"


@dataclass(frozen=True)
class ClusterMember:
    """One VM of an in-guest cluster: its name (corosync's node name), its address,
    fixed before it exists, its Neutron port and (once booted) its instance."""

    name: str
    address: str
    port_id: str = ""
    instance_id: str = ""


@dataclass(frozen=True)
class Cluster:
    """An in-guest cluster (``vigil.engine.clusters``): what was asked (size, image,
    flavor, network, a VIP or none, the members' HA policy) and the cloud resources
    built for it, recorded as they are made so that a crash resumes without making them
    twice. ``authkey`` is corosync's shared secret (base64), never shown."""

    id: str
    name: str
    project_id: str | None
    status: ClusterStatus
    size: int
    image: str
    flavor: str
    network: str
    policy: HaPolicy = HaPolicy.NOTIFY
    want_vip: bool = False
    # made by another tool (a Heat stack, doc/heat/): vigil adopts its resources (the
    # server group's members, their ports) and never deletes them
    external: bool = False
    detail: str = ""
    network_id: str = ""
    vip: str = ""
    vip_port_id: str = ""
    server_group_id: str = ""
    security_group_id: str = ""
    members: tuple[ClusterMember, ...] = ()
    authkey: str = ""
    # what the members last said of themselves (fence_vigil's monitor, every minute):
    # {"quorate": bool, "online": [names], "dc": name, "at": wall time, "by": member}
    report: Mapping[str, Any] | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def member(self, name: str) -> ClusterMember | None:
        return next((m for m in self.members if m.name == name), None)
