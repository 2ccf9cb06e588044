"""The store interface.

Every method is one transaction: either all it describes is persisted or nothing is.
The composite methods (``open_host_recovery``, ``finish_step``, ``finish_recovery``)
exist so that a state change and what it implies are never half-written — a crash
between two separate writes would otherwise leave, say, a host FAILED with no recovery.

State changes are checked against the tables in ``vigil.model`` and raise
``vigil.model.InvalidTransition`` (nothing written) for a move the table forbids.
Timestamps are passed in (``at``), never read from a clock here.

The transactional outbox: the writing methods take ``events``, written in the same
transaction as the change they report (so a crash can neither lose an event of a change
that happened nor publish one of a change that did not). Delivery sinks (the bus, each
webhook subscription) keep a cursor in it and deliver in ``seq`` order.

``Store`` is the composition of one interface per aggregate (``HostStore``,
``RecoveryStore``, ...), so that code can depend on the part it needs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from vigil.model import (
    AppEpisode,
    AppInstance,
    CheckState,
    Cluster,
    ComputeHold,
    Control,
    DeadLetter,
    Event,
    Failure,
    FailureKind,
    FailureStatus,
    GuestFailureStatus,
    GuestReport,
    Host,
    HostServices,
    HostState,
    InstanceFailure,
    InstancePolicy,
    NewStep,
    OperatorRequest,
    OwnerToken,
    Recovery,
    RecoveryStatus,
    RequestKind,
    Segment,
    SegmentOwner,
    ServiceState,
    SinkState,
    Step,
    StepStatus,
    Subscription,
)

_TOKEN: ContextVar[OwnerToken | None] = ContextVar("vigil_owner_token", default=None)


@contextmanager
def acting_as(token: OwnerToken | None) -> Iterator[None]:
    """Every write of the store in this context (this thread, or this task) is made
    under ``token``, and refused if its epoch is stale. ``None``: no check (a server
    without segment ownership, the API's own records)."""
    reset = _TOKEN.set(token)
    try:
        yield
    finally:
        _TOKEN.reset(reset)


def current_token() -> OwnerToken | None:
    """The token the writes of this context are made under."""
    return _TOKEN.get()


class StoreError(Exception):
    pass


class NotFoundError(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class StaleEpoch(StoreError):
    """A write made under an owner's token whose epoch is no longer the segment's: the
    segment was taken over. Nothing was written; the writer must stop acting on it."""


class StoreUnavailable(StoreError):
    """The database did not answer, dropped the session, or a row this write needs is
    locked by a transaction that cannot be waited for (``take_segment``). Nothing was
    written; trying again later may succeed."""


class InUse(StoreError):
    """The record is referenced (a segment with hosts, a host under recovery)."""


@dataclass(frozen=True)
class Changes:
    """What changed in the store since a revision (``HostStore.changes_since``).

    ``revision`` is the store's now; ``full`` rises when what changed cannot be told host
    by host (a host deleted): a reader whose ``full`` differs reads everything again.
    ``hosts``: the hosts changed after the revision asked about — themselves, their
    recoveries or those recoveries' steps."""

    revision: int
    full: int
    hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class HostChange:
    """One host's change in a batch (``HostStore.change_hosts``): a move to ``state``
    (None: none) for ``reason``, a new kernel ``boot_id`` (None: unchanged), and the
    events written with it."""

    name: str
    state: HostState | None = None
    reason: str = ""
    boot_id: str | None = None
    events: tuple[Event, ...] = ()


class HostStore(abc.ABC):
    """Segments, their hosts, and instance policy overrides."""

    @abc.abstractmethod
    def changes_since(self, revision: int) -> Changes:
        """The store's revision and the hosts changed after ``revision``."""

    # --- segments ---------------------------------------------------------------------
    @abc.abstractmethod
    def create_segment(self, segment: Segment) -> Segment:
        """AlreadyExists if the name is taken."""

    @abc.abstractmethod
    def get_segment(self, name: str) -> Segment: ...

    @abc.abstractmethod
    def list_segments(self) -> list[Segment]:
        """Ordered by name."""

    @abc.abstractmethod
    def update_segment(self, name: str, *, events: Sequence[Event] = (), **changes: Any) -> Segment:
        """Fields: description, default_policy, max_failed_share, max_parallel_evacuations,
        paused, pause_reason. Unknown field -> ValueError."""

    @abc.abstractmethod
    def delete_segment(self, name: str) -> None:
        """InUse while hosts belong to it."""

    # --- hosts ------------------------------------------------------------------------
    @abc.abstractmethod
    def create_host(self, host: Host) -> Host:
        """NotFoundError if its segment does not exist; AlreadyExists for a taken name."""

    @abc.abstractmethod
    def create_hosts(self, hosts: Sequence[Host]) -> list[Host]:
        """All or none, in one transaction: ValueError for a name given twice,
        NotFoundError naming the segments that do not exist, AlreadyExists naming the
        hosts that do."""

    @abc.abstractmethod
    def get_host(self, name: str) -> Host: ...

    @abc.abstractmethod
    def list_hosts(
        self, segment: str | None = None, *, names: Collection[str] | None = None
    ) -> list[Host]:
        """Ordered by name; ``names``: only those (the ones that exist)."""

    @abc.abstractmethod
    def change_hosts(self, changes: Sequence[HostChange], *, at: float) -> list[str]:
        """Several hosts' changes in one transaction (the engine's moves of one cycle);
        a change whose move is not allowed, or of a host that no longer exists, is left
        out with its events. Returns the names of the hosts changed."""

    @abc.abstractmethod
    def update_host(self, name: str, **changes: Any) -> Host:
        """Fields: segment, maintenance, reserved, fencing. Unknown field -> ValueError."""

    @abc.abstractmethod
    def set_host_state(
        self,
        name: str,
        state: HostState,
        *,
        reason: str,
        at: float,
        events: Sequence[Event] = (),
    ) -> Host:
        """Checked against HOST_TRANSITIONS."""

    @abc.abstractmethod
    def delete_host(self, name: str) -> None:
        """InUse while a recovery of the host is pending, running or paused."""

    # --- instance policy overrides ----------------------------------------------------
    @abc.abstractmethod
    def set_instance_policy(self, policy: InstancePolicy) -> InstancePolicy:
        """Insert or replace."""

    @abc.abstractmethod
    def get_instance_policy(self, instance_id: str) -> InstancePolicy | None: ...

    @abc.abstractmethod
    def instance_policies(self, instance_ids: Collection[str]) -> dict[str, InstancePolicy]:
        """The overrides of those of ``instance_ids`` that have one, in one read (a
        host's planning reads its fifty instances' at once)."""

    @abc.abstractmethod
    def list_instance_policies(self, *, project_id: str | None = None) -> list[InstancePolicy]:
        """Every override; with ``project_id``, those of that project's instances."""

    # --- the projects of instances ----------------------------------------------------
    @abc.abstractmethod
    def note_instance_projects(self, projects: Mapping[str, str]) -> None:
        """Remember the project of each instance (instance id -> project id), as Nova
        reports it: events about the instance are stamped with it from now on."""

    @abc.abstractmethod
    def instance_projects(self, instance_ids: Collection[str]) -> dict[str, str]:
        """The known projects of those of ``instance_ids`` vigil has seen."""

    @abc.abstractmethod
    def delete_instance_policy(self, instance_id: str) -> None:
        """NotFoundError if there is none."""


class RecoveryStore(abc.ABC):
    """Host failures, and the recoveries with their steps that act on them; writes
    lock the failure's host first."""

    # --- failures -----------------------------------------------------------------------
    @abc.abstractmethod
    def record_failure(
        self, *, host: str, kind: FailureKind, reason: str, source: str, at: float
    ) -> tuple[Failure, bool]:
        """Record an observation. If the host already has an unresolved failure of that
        kind, fold into it (count + 1, source added, last_seen = at) and return
        (failure, False); otherwise create one (status OPEN) and return (failure, True).
        NotFoundError for an unknown host."""

    @abc.abstractmethod
    def get_failure(self, failure_id: int) -> Failure: ...

    @abc.abstractmethod
    def list_failures(
        self, *, host: str | None = None, status: FailureStatus | None = None, limit: int = 1000
    ) -> list[Failure]:
        """Newest first."""

    # --- recoveries -------------------------------------------------------------------
    @abc.abstractmethod
    def open_host_recovery(
        self,
        *,
        host: str,
        reason: str,
        sources: Sequence[str],
        at: float,
        steps: Sequence[NewStep],
        paused_reason: str | None = None,
        events: Sequence[Event] = (),
        kind: FailureKind = FailureKind.HOST_DOWN,
        boot_id: str | None = None,
        unfenced: int | None = None,
    ) -> Recovery:
        """Declare a host failed, in one transaction: record (or fold into) its HOST_DOWN
        failure, move the host to FAILED (checked), and create a recovery with ``steps``
        (seq 1, 2, ...). The recovery is RUNNING and the failure RECOVERING — or, with
        ``paused_reason``, PAUSED and OPEN. Returns the recovery with its steps.

        With ``kind`` HOST_REBOOTED (the host came back with a new boot id) the host's
        state is left as it is; a HOST_DOWN declaration ends such a recovery, still
        active, as FAILED (superseded). InvalidTransition for any other active recovery.
        ``boot_id``, if given, is stored as the host's boot id in the same transaction.
        ``unfenced``: a FAILED recovery of this FAILED host whose fence was never confirmed
        (the host has since rebooted): its failure is resolved and the host is UP again."""

    @abc.abstractmethod
    def withdraw_recovery(
        self,
        recovery_id: int,
        *,
        at: float,
        reason: str,
        host_state: HostState,
        events: Sequence[Event] = (),
    ) -> Recovery:
        """Take back a PAUSED declaration none of whose steps ever ran: the recovery
        WITHDRAWN, its steps SKIPPED, its failure RESOLVED and a FAILED host moved to
        ``host_state`` (UP: its heartbeats are back; NEW: dismissed while silent).
        InvalidTransition otherwise."""

    @abc.abstractmethod
    def get_recovery(self, recovery_id: int) -> Recovery:
        """With its steps, ordered by seq."""

    @abc.abstractmethod
    def list_recoveries(
        self,
        *,
        host: str | None = None,
        statuses: Sequence[RecoveryStatus] | None = None,
        limit: int = 1000,
        hosts: Collection[str] | None = None,
    ) -> list[Recovery]:
        """Newest first, each with its steps; ``hosts``: only of those hosts."""

    @abc.abstractmethod
    def set_recovery_status(
        self,
        recovery_id: int,
        status: RecoveryStatus,
        *,
        at: float,
        reason: str = "",
        events: Sequence[Event] = (),
    ) -> Recovery:
        """For RUNNING and PAUSED (checked against RECOVERY_TRANSITIONS). RUNNING sets
        started_at if unset and the failure to RECOVERING; PAUSED sets the failure OPEN."""

    @abc.abstractmethod
    def finish_recovery(
        self,
        recovery_id: int,
        status: RecoveryStatus,
        *,
        at: float,
        reason: str = "",
        events: Sequence[Event] = (),
    ) -> Recovery:
        """SUCCEEDED or FAILED, in one transaction with what follows from it:
        SUCCEEDED -> failure RESOLVED and host RECOVERED (a rebooted host stays as it is);
        FAILED -> failure ERROR."""

    @abc.abstractmethod
    def retry_recovery(
        self, recovery_id: int, *, at: float, events: Sequence[Event] = ()
    ) -> Recovery:
        """An operator retries a FAILED recovery (its cause fixed, e.g. a BMC back): its
        FAILED steps go back to PENDING with a fresh attempt budget, the recovery to
        RUNNING and the failure to RECOVERING. InvalidTransition unless it is FAILED."""

    @abc.abstractmethod
    def start_step(self, step_id: int, *, at: float, events: Sequence[Event] = ()) -> Step:
        """PENDING -> RUNNING, attempts + 1, started_at = at (first start only)."""

    @abc.abstractmethod
    def start_steps(
        self, starts: Sequence[tuple[int, Sequence[Event]]], *, at: float
    ) -> list[Step]:
        """``start_step`` for many steps (with each one's events) in one transaction:
        what one cycle starts, a rack failure's hundreds. A step that is no longer
        PENDING is left out, its events with it; the steps started are returned."""

    @abc.abstractmethod
    def finish_step(
        self,
        step_id: int,
        status: StepStatus,
        *,
        at: float,
        detail: str = "",
        result: Mapping[str, Any] | None = None,
        next_attempt_at: float | None = None,
        new_steps: Sequence[NewStep] = (),
        events: Sequence[Event] = (),
    ) -> Step:
        """RUNNING -> SUCCEEDED / FAILED (finished_at = at) or -> PENDING for a retry at
        ``next_attempt_at``. ``new_steps`` are appended to the same recovery in the same
        transaction (the list-instances step plans one step per instance this way)."""

    @abc.abstractmethod
    def skip_step(self, step_id: int, *, at: float, detail: str) -> Step:
        """PENDING -> SKIPPED."""

    @abc.abstractmethod
    def requeue_running_steps(self, *, at: float, segment: str | None = None) -> int:
        """After a restart or a takeover: every RUNNING step (of the recoveries of
        ``segment``'s hosts, or of all) back to PENDING (due now). Returns how many.
        Steps are idempotent — each checks the cloud before acting — so running one
        again is safe."""

    @abc.abstractmethod
    def add_steps(
        self,
        recovery_id: int,
        steps: Sequence[NewStep],
        *,
        at: float,
        reason: str,
        events: Sequence[Event] = (),
    ) -> Recovery:
        """Append steps (a consumer's "evacuate these now"); a finished recovery is
        reopened (RUNNING, failure RECOVERING)."""

    @abc.abstractmethod
    def resolve_failure(
        self, failure_id: int, *, at: float, reason: str, events: Sequence[Event] = ()
    ) -> Failure:
        """A consumer or operator marks a failure handled: RESOLVED, and a FAILED host
        RECOVERED (out of use until restored). InvalidTransition while a recovery of the
        failure is pending, running or paused."""


class GuestStore(abc.ABC):
    """Guest failures: what host agents' libvirt monitors report of instances."""

    @abc.abstractmethod
    def record_guest_report(
        self,
        report: GuestReport,
        *,
        reason: str,
        received_at: float,
        events: Callable[[InstanceFailure, bool], Sequence[Event]] = lambda f, new: (),
    ) -> tuple[InstanceFailure, bool, bool]:
        """Persist an agent's report, in one transaction: fold it into the instance's
        unresolved failure of the same group (count + 1, latest detail and time), or open
        one (OPEN). ``events(failure, new)`` gives the events to write with it. A report
        whose ``id`` was recorded before changes nothing. Returns (failure, new, duplicate).
        """

    @abc.abstractmethod
    def get_guest_failure(self, failure_id: int) -> InstanceFailure: ...

    @abc.abstractmethod
    def list_guest_failures(
        self,
        *,
        instance_id: str | None = None,
        statuses: Sequence[GuestFailureStatus] | None = None,
        limit: int = 1000,
        project_id: str | None = None,
    ) -> list[InstanceFailure]:
        """Newest first; with ``project_id``, of that project's instances only."""

    @abc.abstractmethod
    def update_guest_failure(
        self, failure_id: int, *, at: float, events: Sequence[Event] = (), **changes: Any
    ) -> InstanceFailure:
        """Fields: status (checked against GUEST_FAILURE_TRANSITIONS), reason, seen_count,
        restarts, next_restart_at, action_status, action_attempts, action_detail. Sets
        changed_at = at. Unknown field -> ValueError."""

    @abc.abstractmethod
    def requeue_running_guest_actions(self, *, at: float, segment: str | None = None) -> int:
        """After a restart (or a takeover of ``segment``: only its hosts' instances):
        restart steps left RUNNING back to PENDING (due now)."""


class ServiceStore(abc.ABC):
    """Host services: each host's latest snapshot from its agent's service watch
    (nova-compute, libvirtd) and what vigil did to its compute service."""

    @abc.abstractmethod
    def record_host_services(
        self,
        host: str,
        services: Mapping[str, ServiceState],
        *,
        reported_at: float,
        at: float,
        events: Callable[[HostServices | None, HostServices], Sequence[Event]] = (
            lambda old, new: ()
        ),
    ) -> tuple[HostServices, bool]:
        """Replace the host's service snapshot with a newer one, in one transaction with
        ``events(old, new)``. A snapshot not newer than the stored one (a retry, or one
        overtaken by a later report) changes nothing: returns (stored, False). The hold
        is kept. NotFoundError for an unknown host."""

    @abc.abstractmethod
    def get_host_services(self, host: str) -> HostServices | None: ...

    @abc.abstractmethod
    def list_host_services(self) -> list[HostServices]:
        """Every host with a service report, by name."""

    @abc.abstractmethod
    def set_compute_hold(
        self,
        host: str,
        hold: ComputeHold,
        reason: str,
        *,
        at: float,
        events: Sequence[Event] = (),
    ) -> HostServices:
        """Record what vigil did to the host's compute service (with its events); no
        retry is pending after it."""

    @abc.abstractmethod
    def set_service_retry(self, host: str, *, attempts: int, next_attempt_at: float) -> None:
        """The keeper's action on the host's compute service failed ``attempts`` times in
        a row: not before ``next_attempt_at`` again (kept across a restart)."""


class AppStore(abc.ABC):
    """Application checks (issue 17): per instance with declared checks, its
    declaration, the state of its checks and its current or last episode
    (``vigil.model.AppInstance``). Every write takes the instance's host lock (the
    order of ``vigil.store.session``) and writes its events in the same transaction."""

    @abc.abstractmethod
    def sync_app_declarations(
        self,
        host: str,
        declared: Mapping[str, tuple[Mapping[str, str], str, str]],
        *,
        at: float,
        events: Callable[[AppInstance | None, AppInstance | None], Sequence[Event]] = (
            lambda old, new: ()
        ),
    ) -> list[AppInstance]:
        """The instances on ``host`` with declared checks, as Nova shows them now:
        ``{instance_id: (declaration, mode, error)}``. A new instance gets a row
        (``started_at`` = ``at``); one that moved here from another host is updated (its
        host, declaration, mode, error; ``started_at`` = ``at``: a move restarts it);
        one whose declaration, mode or error changed is updated; a row of ``host`` whose
        instance is not in ``declared`` (deleted, moved away, no check declared any
        more) is removed unless its episode is open. ``events(old, new)`` for each row
        added (old None), changed, or removed (new None). Returns the host's rows."""

    @abc.abstractmethod
    def get_app_instance(self, instance_id: str) -> AppInstance | None: ...

    @abc.abstractmethod
    def list_app_instances(
        self, *, host: str | None = None, episode_open: bool | None = None, limit: int = 10000
    ) -> list[AppInstance]:
        """By instance id; ``episode_open`` True: only those with an open episode,
        False: only those without."""

    @abc.abstractmethod
    def update_app_checks(
        self,
        instance_id: str,
        checks: Mapping[str, CheckState],
        *,
        at: float,
        reported_at: float | None = None,
        last_beat_at: float | None = None,
        events: Callable[[AppInstance], Sequence[Event]] = lambda old: (),
    ) -> AppInstance:
        """Merge ``checks`` (by name) into the instance's check states; with
        ``reported_at`` (an agent's report): ignored and returned unchanged when not
        newer than the stored ``reported_at``; ``last_beat_at``: the application's
        heartbeat. ``events(old)`` with the row as it was. NotFoundError if unknown."""

    @abc.abstractmethod
    def update_app_episode(
        self,
        instance_id: str,
        episode: AppEpisode | None,
        *,
        at: float,
        started_at: float | None = None,
        events: Sequence[Event] = (),
    ) -> AppInstance:
        """Replace the instance's episode (with ``started_at``: a restart vigil caused
        begins the checks' grace period); in the owner's token of the host's segment
        when one is set (``acting_as``). NotFoundError if unknown."""


class OutboxStore(abc.ABC):
    """The outbox, its delivery sinks and dead letters, and webhook subscriptions."""

    # --- the outbox -----------------------------------------------------------------------
    @abc.abstractmethod
    def append_events(self, events: Sequence[Event]) -> None:
        """Events not tied to another write (e.g. a consumer's action that changed nothing
        here)."""

    @abc.abstractmethod
    def list_events(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        host: str | None = None,
        project_id: str | None = None,
    ) -> list[Event]:
        """Events with seq > ``after``, oldest first; with ``project_id``, only those about
        that project's instances."""

    @abc.abstractmethod
    def last_event_seq(self) -> int: ...

    @abc.abstractmethod
    def prune_events(self, *, before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` of the oldest events that happened before ``before``
        and that every sink has delivered (one not yet delivered is never deleted);
        how many were. Events go in their order: the first one too recent stops it."""

    @abc.abstractmethod
    def ensure_sink(self, name: str) -> SinkState:
        """The sink's state; a new sink starts at the end of the outbox."""

    @abc.abstractmethod
    def get_sink(self, name: str) -> SinkState: ...

    @abc.abstractmethod
    def sink_delivered(self, name: str, seq: int) -> None:
        """Move the cursor past event ``seq`` and clear the failure count."""

    @abc.abstractmethod
    def sink_failed(self, name: str, *, attempts: int, next_attempt_at: float, error: str) -> None:
        """Record a failed attempt at the event after the cursor."""

    @abc.abstractmethod
    def dead_letter(self, name: str, event: Event, *, attempts: int, error: str, at: float) -> None:
        """Give up on ``event`` for this sink: record it and move the cursor past it."""

    @abc.abstractmethod
    def list_dead_letters(self, *, sink: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        """Newest first."""

    # --- webhook subscriptions --------------------------------------------------------------
    @abc.abstractmethod
    def create_subscription(self, subscription: Subscription, *, sink: str) -> Subscription:
        """With its sink, starting at the end of the outbox. AlreadyExists for a taken name."""

    @abc.abstractmethod
    def list_subscriptions(self, *, project_id: str | None = None) -> list[Subscription]:
        """Every subscription; with ``project_id``, that project's members'."""

    @abc.abstractmethod
    def get_subscription(self, name: str) -> Subscription: ...

    @abc.abstractmethod
    def delete_subscription(self, name: str, *, sink: str) -> None: ...


class ControlStore(abc.ABC):
    """The cloud-wide pause."""

    @abc.abstractmethod
    def get_control(self) -> Control: ...

    @abc.abstractmethod
    def set_control(self, *, paused: bool, reason: str, at: float) -> Control: ...


class OwnershipStore(abc.ABC):
    """Segment ownership: each takeover raises the segment's epoch, the fencing token
    the store checks before the writes made under ``acting_as``."""

    @abc.abstractmethod
    def take_segment(self, segment: str, owner: str, *, at: float) -> SegmentOwner:
        """``owner`` now owns ``segment``, under the previous epoch + 1 (1 for the first):
        every write made under an older token is refused from now on. Called only once
        the coordination lock of the segment is held."""

    @abc.abstractmethod
    def list_segment_owners(self) -> list[SegmentOwner]: ...


class RequestStore(abc.ABC):
    """Operator requests (restore a host, restart an instance), carried out by the
    engine's workers (``vigil.engine.requests``)."""

    @abc.abstractmethod
    def add_request(
        self,
        kind: RequestKind,
        target: str,
        *,
        host: str | None,
        reason: str,
        at: float,
        events: Sequence[Event] = (),
    ) -> OperatorRequest:
        """Record a request, PENDING from ``at``."""

    @abc.abstractmethod
    def get_request(self, request_id: int) -> OperatorRequest: ...

    @abc.abstractmethod
    def list_requests(self, *, statuses: Sequence[StepStatus] = ()) -> list[OperatorRequest]:
        """Oldest first."""

    @abc.abstractmethod
    def start_request(self, request_id: int, *, at: float) -> OperatorRequest:
        """PENDING → RUNNING, one more attempt (written before the cloud is called)."""

    @abc.abstractmethod
    def finish_request(
        self,
        request_id: int,
        status: StepStatus,
        *,
        at: float,
        detail: str = "",
        next_attempt_at: float | None = None,
        events: Sequence[Event] = (),
    ) -> OperatorRequest:
        """RUNNING → SUCCEEDED, FAILED, or PENDING again (retried from
        ``next_attempt_at``), with the events of the outcome in one transaction."""

    @abc.abstractmethod
    def requeue_running_requests(
        self, *, at: float, segment: str | None = None, hostless: bool = True
    ) -> int:
        """Requests left RUNNING by a crash are PENDING again; how many. With ``segment``
        (a takeover): only those about its hosts, and those about no host if
        ``hostless``."""


class ClusterStore(abc.ABC):
    """In-guest clusters (issue 19, ``vigil.model.Cluster``): one record each, with its
    members, written as its cloud resources are made. Clusters are few (tens, not
    thousands): finding an instance's cluster reads them all."""

    @abc.abstractmethod
    def add_cluster(self, cluster: Cluster, *, events: Sequence[Event] = ()) -> Cluster:
        """Record a new cluster; AlreadyExists when its project has one of that name."""

    @abc.abstractmethod
    def get_cluster(self, cluster_id: str) -> Cluster:
        """NotFoundError for an unknown cluster."""

    @abc.abstractmethod
    def list_clusters(self, *, project_id: str | None = None) -> list[Cluster]:
        """Every cluster (of ``project_id`` only, when given), oldest first."""

    @abc.abstractmethod
    def update_cluster(
        self, cluster_id: str, *, at: float, events: Sequence[Event] = (), **changes: Any
    ) -> Cluster:
        """Change the named fields of the cluster's record (``members`` a tuple of
        ClusterMember); NotFoundError for an unknown cluster."""

    @abc.abstractmethod
    def delete_cluster(self, cluster_id: str, *, events: Sequence[Event] = ()) -> None:
        """Forget the cluster (its cloud resources removed already)."""


class Store(
    HostStore,
    ControlStore,
    RecoveryStore,
    GuestStore,
    ServiceStore,
    AppStore,
    ClusterStore,
    OutboxStore,
    RequestStore,
    OwnershipStore,
):
    """All of vigil's state: every part of the interface, on one database."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""
