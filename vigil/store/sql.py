"""The SQLAlchemy implementation of ``vigil.store.base.Store``.

The tables are in ``vigil.store.rows``; the engine and the migrations that create them
in ``vigil.store.db`` (``SqlStore`` never migrates on its own).

Concurrency. Every public method is one transaction in its own session, so one
``SqlStore`` may be shared by any number of threads. Writes that concern a host's
failures, recoveries or steps first lock that host's row (``SELECT ... FOR UPDATE``):
this serialises them per host — two observers cannot both create "the" failure of a
host, two planners cannot hand out the same step number — and gives every such write
the same lock order, so they cannot deadlock one another. Servers run writes at READ
COMMITTED, so a statement issued after the lock is granted sees what the previous
holder committed; reads run at REPEATABLE READ for a consistent view across the
queries of one call. SQLite has no row locks: its writes start with ``BEGIN
IMMEDIATE``, which takes the database's write lock up front (waiting up to
``busy_timeout``) instead of failing when a reader later tries to write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from vigil.model import (
    FAILURE_TRANSITIONS,
    GUEST_FAILURE_TRANSITIONS,
    HOST_TRANSITIONS,
    RECOVERY_TRANSITIONS,
    STEP_TRANSITIONS,
    ComputeHold,
    Control,
    DeadLetter,
    Event,
    Failure,
    FailureKind,
    FailureStatus,
    FenceMethod,
    GuestFailureKind,
    GuestFailureStatus,
    GuestReport,
    HaPolicy,
    Host,
    HostServices,
    HostState,
    InstanceFailure,
    InstancePolicy,
    InvalidTransition,
    NewStep,
    Recovery,
    RecoveryStatus,
    Segment,
    ServiceState,
    SinkState,
    Step,
    StepKind,
    StepStatus,
    Subscription,
    check_transition,
)
from vigil.store.base import AlreadyExists, InUse, NotFoundError, Store
from vigil.store.db import _SQLITE_IMMEDIATE, MIGRATIONS_DIR, alembic_config, make_engine, upgrade
from vigil.store.mapping import record_of
from vigil.store.rows import (
    CONTROL_ID,
    Base,
    ControlRow,
    DeadLetterRow,
    EventRow,
    FailureRow,
    GuestFailureRow,
    GuestReportRow,
    HostRow,
    HostServicesRow,
    InstancePolicyRow,
    RecoveryRow,
    SegmentRow,
    SinkRow,
    StepRow,
    SubscriptionRow,
)

__all__ = [
    "MIGRATIONS_DIR",
    "_SQLITE_IMMEDIATE",
    "Base",
    "SqlStore",
    "alembic_config",
    "make_engine",
    "upgrade",
]

_ACTIVE_RECOVERY = (RecoveryStatus.PENDING, RecoveryStatus.RUNNING, RecoveryStatus.PAUSED)
_TERMINAL_STEP = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED)


# Reports of these kinds fold into one failure: a crash loop is one episode.
_GUEST_GROUPS: Mapping[GuestFailureKind, tuple[GuestFailureKind, ...]] = {
    GuestFailureKind.CRASHED: (GuestFailureKind.CRASHED, GuestFailureKind.STOPPED_FAILED),
    GuestFailureKind.STOPPED_FAILED: (GuestFailureKind.CRASHED, GuestFailureKind.STOPPED_FAILED),
    GuestFailureKind.WATCHDOG: (GuestFailureKind.WATCHDOG,),
    GuestFailureKind.IO_ERROR: (GuestFailureKind.IO_ERROR,),
}
_OCCURRENCES_KEPT = 32


# --- rows to records ------------------------------------------------------------------


# Rows to records: one mechanism (``vigil.store.mapping``); only the fields whose stored
# form is not the record's are given here.


def _segment(row: SegmentRow) -> Segment:
    return record_of(Segment, row)


def _fencing_to_json(methods: Sequence[FenceMethod]) -> list[dict[str, Any]]:
    return [{"driver": m.driver, "options": dict(m.options)} for m in methods]


def _host(row: HostRow) -> Host:
    fencing = tuple(FenceMethod(m["driver"], dict(m["options"])) for m in row.fencing)
    return record_of(Host, row, fencing=fencing)


def _policy(row: InstancePolicyRow) -> InstancePolicy:
    return record_of(InstancePolicy, row)


def _failure(row: FailureRow) -> Failure:
    return record_of(Failure, row)


def _step(row: StepRow) -> Step:
    return record_of(Step, row)


def _event(row: EventRow) -> Event:
    return record_of(Event, row)


def _sink(row: SinkRow) -> SinkState:
    return record_of(SinkState, row)


def _subscription(row: SubscriptionRow) -> Subscription:
    return record_of(Subscription, row)


def _recovery(row: RecoveryRow, steps: Sequence[Step]) -> Recovery:
    return record_of(Recovery, row, steps=tuple(steps))


def _guest_failure(row: GuestFailureRow) -> InstanceFailure:
    # a stored empty action status reads as none, as it always has
    status = StepStatus(row.action_status) if row.action_status else None
    return record_of(InstanceFailure, row, action_status=status)


def _host_services(row: HostServicesRow) -> HostServices:
    services = {
        name: ServiceState(bool(v["up"]), float(v["since"]), str(v.get("detail", "")))
        for name, v in row.services.items()
    }
    return record_of(HostServices, row, services=services)


def _control(row: ControlRow) -> Control:
    return record_of(Control, row)


# --- field updates --------------------------------------------------------------------


def _same(value: Any) -> Any:
    return value


def _enum_value(enum_type: Callable[[Any], Any]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        return str(enum_type(value))  # ValueError for a value the enumeration lacks

    return convert


_SEGMENT_FIELDS: Mapping[str, Callable[[Any], Any]] = {
    "description": _same,
    "default_policy": _enum_value(HaPolicy),
    "max_failed_share": _same,
    "max_parallel_evacuations": _same,
    "paused": _same,
    "pause_reason": _same,
}

# "segment" is handled apart: it must name an existing segment.
_HOST_FIELDS: Mapping[str, Callable[[Any], Any]] = {
    "segment": _same,
    "maintenance": _same,
    "reserved": _same,
    "fencing": _fencing_to_json,
    "boot_id": _same,
}


def _converted(
    changes: Mapping[str, Any], fields: Mapping[str, Callable[[Any], Any]], what: str
) -> dict[str, Any]:
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {', '.join(unknown)}")
    return {name: fields[name](value) for name, value in changes.items()}


def _optional_step_status(value: Any) -> str | None:
    return None if value is None else str(StepStatus(value))


_GUEST_FIELDS: Mapping[str, Callable[[Any], Any]] = {
    "reason": _same,
    "seen_count": int,
    "restarts": int,
    "next_restart_at": float,
    "action_status": _optional_step_status,
    "action_attempts": int,
    "action_detail": _same,
}


# --- the store ------------------------------------------------------------------------


class SqlStore(Store):
    """``Store`` on a relational database; see the module docstring for concurrency."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self._engine = make_engine(url, echo=echo)
        reader: Engine
        writer: Engine
        if self._engine.dialect.name == "sqlite":
            reader = self._engine
            writer = self._engine.execution_options(**{_SQLITE_IMMEDIATE: True})
        else:
            reader = self._engine.execution_options(isolation_level="REPEATABLE READ")
            writer = self._engine
        self._reads = sessionmaker(reader, expire_on_commit=False)
        self._writes = sessionmaker(writer, expire_on_commit=False)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._reads.begin() as session:
            yield session

    @contextmanager
    def _write(self, events: Sequence[Event] = ()) -> Iterator[Session]:
        """A write transaction; ``events`` go to the outbox in the same transaction."""
        with self._writes.begin() as session:
            yield session
            if events:
                session.add_all(
                    EventRow(
                        id=e.id,
                        event_type=e.event_type,
                        timestamp=e.timestamp,
                        host=e.host,
                        instance_id=e.instance_id,
                        priority=e.priority,
                        payload=dict(e.payload),
                    )
                    for e in events
                )
                session.flush()

    # --- segments ---------------------------------------------------------------------

    def create_segment(self, segment: Segment) -> Segment:
        with self._write() as s:
            row = SegmentRow(
                name=segment.name,
                description=segment.description,
                default_policy=str(HaPolicy(segment.default_policy)),
                max_failed_share=segment.max_failed_share,
                max_parallel_evacuations=segment.max_parallel_evacuations,
                paused=segment.paused,
                pause_reason=segment.pause_reason,
            )
            s.add(row)
            try:
                s.flush()
            except IntegrityError as exc:
                raise AlreadyExists(f"segment {segment.name!r} already exists") from exc
            return _segment(row)

    def get_segment(self, name: str) -> Segment:
        with self._read() as s:
            return _segment(self._segment_row(s, name))

    def list_segments(self) -> list[Segment]:
        with self._read() as s:
            return [_segment(r) for r in s.scalars(sa.select(SegmentRow).order_by(SegmentRow.name))]

    def update_segment(self, name: str, *, events: Sequence[Event] = (), **changes: Any) -> Segment:
        values = _converted(changes, _SEGMENT_FIELDS, "update_segment")
        with self._write(events) as s:
            row = self._segment_row(s, name, lock=True)
            for field_name, value in values.items():
                setattr(row, field_name, value)
            s.flush()
            return _segment(row)

    def delete_segment(self, name: str) -> None:
        with self._write() as s:
            row = self._segment_row(s, name, lock=True)
            hosts = s.scalar(
                sa.select(sa.func.count()).select_from(HostRow).where(HostRow.segment == name)
            )
            if hosts:
                raise InUse(f"segment {name!r} still has {hosts} host(s)")
            s.delete(row)
            try:
                s.flush()
            except IntegrityError as exc:  # a host was added meanwhile
                raise InUse(f"segment {name!r} still has hosts") from exc

    # --- hosts ------------------------------------------------------------------------

    def create_host(self, host: Host) -> Host:
        try:
            with self._write() as s:
                self._segment_row(s, host.segment)
                row = HostRow(
                    name=host.name,
                    segment=host.segment,
                    state=str(HostState(host.state)),
                    maintenance=host.maintenance,
                    reserved=host.reserved,
                    fencing=_fencing_to_json(host.fencing),
                    state_reason=host.state_reason,
                    state_changed_at=host.state_changed_at,
                )
                s.add(row)
                s.flush()
                return _host(row)
        except IntegrityError as exc:
            raise self._host_insert_error(host) from exc

    def _host_insert_error(self, host: Host) -> Exception:
        """Which constraint refused the new host: its name, or its segment (deleted since)."""
        with self._read() as s:
            if s.scalar(sa.select(HostRow.id).where(HostRow.name == host.name)) is not None:
                return AlreadyExists(f"host {host.name!r} already exists")
        return NotFoundError(f"segment {host.segment!r} does not exist")

    def get_host(self, name: str) -> Host:
        with self._read() as s:
            return _host(self._host_row(s, name))

    def list_hosts(self, segment: str | None = None) -> list[Host]:
        query = sa.select(HostRow).order_by(HostRow.name)
        if segment is not None:
            query = query.where(HostRow.segment == segment)
        with self._read() as s:
            return [_host(r) for r in s.scalars(query)]

    def update_host(self, name: str, **changes: Any) -> Host:
        values = _converted(changes, _HOST_FIELDS, "update_host")
        with self._write() as s:
            row = self._host_row(s, name, lock=True)
            if "segment" in values:
                self._segment_row(s, values["segment"])
            for field_name, value in values.items():
                setattr(row, field_name, value)
            try:
                s.flush()
            except IntegrityError as exc:  # the new segment was deleted meanwhile
                raise NotFoundError(f"segment {values.get('segment')!r} does not exist") from exc
            return _host(row)

    def set_host_state(
        self,
        name: str,
        state: HostState,
        *,
        reason: str,
        at: float,
        events: Sequence[Event] = (),
    ) -> Host:
        with self._write(events) as s:
            row = self._host_row(s, name, lock=True)
            self._move_host(row, HostState(state), reason=reason, at=at)
            s.flush()
            return _host(row)

    def delete_host(self, name: str) -> None:
        with self._write() as s:
            row = self._host_row(s, name, lock=True)
            active = s.scalar(
                sa.select(RecoveryRow.id)
                .where(RecoveryRow.host == name, RecoveryRow.status.in_(_ACTIVE_RECOVERY))
                .limit(1)
            )
            if active is not None:
                raise InUse(f"host {name!r} is under recovery {active}")
            # SQLite enforces no foreign keys here: the cascade is done by hand.
            s.execute(sa.delete(HostServicesRow).where(HostServicesRow.host == name))
            s.delete(row)

    # --- instance policy overrides ----------------------------------------------------

    def set_instance_policy(self, policy: InstancePolicy) -> InstancePolicy:
        with self._write() as s:
            values = {
                "instance_id": policy.instance_id,
                "policy": str(HaPolicy(policy.policy)),
                "priority": policy.priority,
            }
            _upsert(s, InstancePolicyRow, values)
            return InstancePolicy(policy.instance_id, HaPolicy(policy.policy), policy.priority)

    def get_instance_policy(self, instance_id: str) -> InstancePolicy | None:
        with self._read() as s:
            row = s.get(InstancePolicyRow, instance_id)
            return None if row is None else _policy(row)

    def list_instance_policies(self) -> list[InstancePolicy]:
        query = sa.select(InstancePolicyRow).order_by(InstancePolicyRow.instance_id)
        with self._read() as s:
            return [_policy(r) for r in s.scalars(query)]

    def delete_instance_policy(self, instance_id: str) -> None:
        with self._write() as s:
            deleted = s.connection().execute(
                sa.delete(InstancePolicyRow).where(InstancePolicyRow.instance_id == instance_id)
            )
            if deleted.rowcount == 0:
                raise NotFoundError(f"no policy for instance {instance_id!r}")

    # --- failures ---------------------------------------------------------------------

    def record_failure(
        self, *, host: str, kind: FailureKind, reason: str, source: str, at: float
    ) -> tuple[Failure, bool]:
        with self._write() as s:
            self._host_row(s, host, lock=True)
            row, created = self._fold_failure(
                s, host=host, kind=FailureKind(kind), reason=reason, sources=[source], at=at
            )
            s.flush()
            return _failure(row), created

    def get_failure(self, failure_id: int) -> Failure:
        with self._read() as s:
            return _failure(self._failure_row(s, failure_id))

    def list_failures(
        self, *, host: str | None = None, status: FailureStatus | None = None, limit: int = 1000
    ) -> list[Failure]:
        query = sa.select(FailureRow)
        if host is not None:
            query = query.where(FailureRow.host == host)
        if status is not None:
            query = query.where(FailureRow.status == str(FailureStatus(status)))
        query = query.order_by(FailureRow.first_seen.desc(), FailureRow.id.desc()).limit(limit)
        with self._read() as s:
            return [_failure(r) for r in s.scalars(query)]

    # --- recoveries -------------------------------------------------------------------

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
        paused = paused_reason is not None
        with self._write(events) as s:
            host_row = self._host_row(s, host, lock=True)
            if unfenced is not None:
                # A failed host whose fence was never confirmed came back with a new boot
                # id: it did reset. Its declaration is over (resolved), the host in use.
                earlier = s.get_one(RecoveryRow, unfenced)
                old = s.get_one(FailureRow, earlier.failure_id)
                if RecoveryStatus(earlier.status) is not RecoveryStatus.FAILED:
                    raise InvalidTransition(f"recovery {unfenced} is {earlier.status}")
                self._move_failure(old, FailureStatus.RESOLVED)
                old.reason = f"{old.reason}; the host rebooted since (new boot id)"
                self._move_host(host_row, HostState.UP, reason=reason, at=at)
            active = s.scalar(
                sa.select(RecoveryRow)
                .where(RecoveryRow.host == host, RecoveryRow.status.in_(_ACTIVE_RECOVERY))
                .limit(1)
            )
            if active is not None:
                superseded = kind is FailureKind.HOST_DOWN and s.get_one(
                    FailureRow, active.failure_id
                ).kind == str(FailureKind.HOST_REBOOTED)
                if not superseded:
                    # FAILED -> FAILED passes the table as "no change", but a second
                    # recovery would fence and evacuate the same host twice.
                    raise InvalidTransition(f"host {host}: recovery {active.id} is already open")
                # Restarting the guests of a host that rebooted ends when the host fails:
                # its recovery takes the instances over.
                self._move_recovery(active, RecoveryStatus.FAILED)
                self._move_failure(s.get_one(FailureRow, active.failure_id), FailureStatus.ERROR)
                active.finished_at, active.reason = at, f"superseded: {reason}"
            if boot_id is not None:
                host_row.boot_id = boot_id
            if kind is FailureKind.HOST_DOWN:
                self._move_host(host_row, HostState.FAILED, reason=reason, at=at)
            failure, _ = self._fold_failure(
                s, host=host, kind=kind, reason=reason, sources=sources, at=at
            )
            self._move_failure(failure, FailureStatus.OPEN if paused else FailureStatus.RECOVERING)
            s.flush()
            recovery = RecoveryRow(
                failure_id=failure.id,
                host=host,
                segment=host_row.segment,
                status=str(RecoveryStatus.PAUSED if paused else RecoveryStatus.RUNNING),
                created_at=at,
                started_at=None if paused else at,
                finished_at=None,
                reason=paused_reason if paused_reason is not None else reason,
            )
            s.add(recovery)
            s.flush()
            step_rows = self._add_steps(s, recovery.id, first_seq=1, steps=steps, at=at)
            return _recovery(recovery, [_step(r) for r in step_rows])

    def get_recovery(self, recovery_id: int) -> Recovery:
        with self._read() as s:
            row = s.get(RecoveryRow, recovery_id)
            if row is None:
                raise NotFoundError(f"recovery {recovery_id} does not exist")
            return self._with_steps(s, [row])[0]

    def list_recoveries(
        self,
        *,
        host: str | None = None,
        statuses: Sequence[RecoveryStatus] | None = None,
        limit: int = 1000,
    ) -> list[Recovery]:
        query = sa.select(RecoveryRow)
        if host is not None:
            query = query.where(RecoveryRow.host == host)
        if statuses is not None:
            query = query.where(RecoveryRow.status.in_([str(RecoveryStatus(x)) for x in statuses]))
        query = query.order_by(RecoveryRow.created_at.desc(), RecoveryRow.id.desc()).limit(limit)
        with self._read() as s:
            return self._with_steps(s, list(s.scalars(query)))

    def set_recovery_status(
        self,
        recovery_id: int,
        status: RecoveryStatus,
        *,
        at: float,
        reason: str = "",
        events: Sequence[Event] = (),
    ) -> Recovery:
        status = RecoveryStatus(status)
        if status not in (RecoveryStatus.RUNNING, RecoveryStatus.PAUSED):
            raise ValueError(f"set_recovery_status: {status.value} (use finish_recovery)")
        with self._write(events) as s:
            row = self._lock_recovery(s, recovery_id)
            if RecoveryStatus(row.status) is RecoveryStatus.SUCCEEDED:
                raise InvalidTransition(
                    f"recovery {recovery_id} succeeded: only new steps (add_steps) reopen it"
                )
            failure = s.get_one(FailureRow, row.failure_id)
            self._move_recovery(row, status)
            if status is RecoveryStatus.RUNNING:
                self._move_failure(failure, FailureStatus.RECOVERING)
                if row.started_at is None:
                    row.started_at = at
                row.finished_at = None  # an operator's retry of a failed recovery
            else:
                self._move_failure(failure, FailureStatus.OPEN)
            row.reason = reason
            s.flush()
            return self._with_steps(s, [row])[0]

    def finish_recovery(
        self,
        recovery_id: int,
        status: RecoveryStatus,
        *,
        at: float,
        reason: str = "",
        events: Sequence[Event] = (),
    ) -> Recovery:
        status = RecoveryStatus(status)
        if status not in (RecoveryStatus.SUCCEEDED, RecoveryStatus.FAILED):
            raise ValueError(f"finish_recovery: {status.value} is not a final status")
        with self._write(events) as s:
            row = self._lock_recovery(s, recovery_id)
            failure = s.get_one(FailureRow, row.failure_id)
            self._move_recovery(row, status)
            rebooted = failure.kind == str(FailureKind.HOST_REBOOTED)
            if status is RecoveryStatus.SUCCEEDED:
                self._move_failure(failure, FailureStatus.RESOLVED)
            if status is RecoveryStatus.SUCCEEDED and not rebooted:
                # A fenced host stays out of use until an operator restores it; a host
                # whose guests were only started again after its reboot stays in use.
                host = self._host_row(s, row.host)  # locked by _lock_recovery
                self._move_host(
                    host,
                    HostState.RECOVERED,
                    reason=reason or f"recovery {recovery_id} succeeded",
                    at=at,
                )
            elif status is RecoveryStatus.FAILED:
                self._move_failure(failure, FailureStatus.ERROR)
            row.finished_at = at
            row.reason = reason
            s.flush()
            return self._with_steps(s, [row])[0]

    def withdraw_recovery(
        self,
        recovery_id: int,
        *,
        at: float,
        reason: str,
        host_state: HostState,
        events: Sequence[Event] = (),
    ) -> Recovery:
        with self._write(events) as s:
            row = self._lock_recovery(s, recovery_id)
            steps = list(s.scalars(sa.select(StepRow).where(StepRow.recovery_id == recovery_id)))
            # Reading the instances (record-instances) acts on nothing.
            acted = [
                st
                for st in steps
                if st.kind != str(StepKind.RECORD_INSTANCES)
                and (st.attempts or StepStatus(st.status) != StepStatus.PENDING)
            ]
            if RecoveryStatus(row.status) is not RecoveryStatus.PAUSED or acted:
                raise InvalidTransition(
                    f"recovery {recovery_id} is {row.status}"
                    + (f" and its {acted[0].kind} step has run" if acted else "")
                    + ": only a paused declaration that never acted can be withdrawn"
                )
            self._move_recovery(row, RecoveryStatus.WITHDRAWN)
            for st in steps:
                if StepStatus(st.status) is StepStatus.PENDING:
                    self._move_step(st, StepStatus.SKIPPED, expect=StepStatus.PENDING)
                    st.finished_at, st.detail = at, f"withdrawn: {reason}"
            self._move_failure(s.get_one(FailureRow, row.failure_id), FailureStatus.RESOLVED)
            host = self._host_row(s, row.host)  # locked by _lock_recovery
            if HostState(host.state) is HostState.FAILED:
                self._move_host(host, host_state, reason=f"declaration withdrawn: {reason}", at=at)
            row.finished_at, row.reason = at, f"withdrawn: {reason}"
            s.flush()
            return self._with_steps(s, [row])[0]

    def retry_recovery(
        self, recovery_id: int, *, at: float, events: Sequence[Event] = ()
    ) -> Recovery:
        with self._write(events) as s:
            row = self._lock_recovery(s, recovery_id)
            if RecoveryStatus(row.status) is not RecoveryStatus.FAILED:
                raise InvalidTransition(
                    f"recovery {recovery_id} is {row.status}: only a failed recovery is retried"
                )
            self._move_recovery(row, RecoveryStatus.RUNNING)
            self._move_failure(s.get_one(FailureRow, row.failure_id), FailureStatus.RECOVERING)
            row.finished_at = None
            row.reason = "retried by operator"
            failed = s.scalars(
                sa.select(StepRow).where(
                    StepRow.recovery_id == recovery_id, StepRow.status == str(StepStatus.FAILED)
                )
            )
            for step in failed:
                self._move_step(step, StepStatus.PENDING, expect=StepStatus.FAILED)
                step.attempts = 0
                step.next_attempt_at = at
                step.finished_at = None
            s.flush()
            return self._with_steps(s, [row])[0]

    def start_step(self, step_id: int, *, at: float, events: Sequence[Event] = ()) -> Step:
        with self._write(events) as s:
            row = self._lock_step(s, step_id)
            self._move_step(row, StepStatus.RUNNING, expect=StepStatus.PENDING)
            row.attempts += 1
            if row.started_at is None:
                row.started_at = at
            s.flush()
            return _step(row)

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
        status = StepStatus(status)
        if status not in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.PENDING):
            raise ValueError(f"finish_step: {status.value} is not an outcome")
        with self._write(events) as s:
            row = self._lock_step(s, step_id)
            self._move_step(row, status, expect=StepStatus.RUNNING)
            if status is StepStatus.PENDING:
                row.next_attempt_at = at if next_attempt_at is None else next_attempt_at
            else:
                row.finished_at = at
            row.detail = detail
            if result is not None:
                row.result = dict(result)
            if new_steps:
                last = s.scalar(
                    sa.select(sa.func.max(StepRow.seq)).where(
                        StepRow.recovery_id == row.recovery_id
                    )
                )
                self._add_steps(
                    s, row.recovery_id, first_seq=(last or 0) + 1, steps=new_steps, at=at
                )
            s.flush()
            return _step(row)

    def skip_step(self, step_id: int, *, at: float, detail: str) -> Step:
        with self._write() as s:
            row = self._lock_step(s, step_id)
            self._move_step(row, StepStatus.SKIPPED, expect=StepStatus.PENDING)
            row.finished_at = at
            row.detail = detail
            s.flush()
            return _step(row)

    def requeue_running_steps(self, *, at: float) -> int:
        with self._write() as s:
            result = s.connection().execute(
                sa.update(StepRow)
                .where(StepRow.status == str(StepStatus.RUNNING))
                .values(status=str(StepStatus.PENDING), next_attempt_at=at)
            )
            return result.rowcount

    def add_steps(
        self,
        recovery_id: int,
        steps: Sequence[NewStep],
        *,
        at: float,
        reason: str,
        events: Sequence[Event] = (),
    ) -> Recovery:
        with self._write(events) as s:
            row = self._lock_recovery(s, recovery_id)
            status = RecoveryStatus(row.status)
            if status in (RecoveryStatus.SUCCEEDED, RecoveryStatus.FAILED):
                self._move_recovery(row, RecoveryStatus.RUNNING)
                self._move_failure(s.get_one(FailureRow, row.failure_id), FailureStatus.RECOVERING)
                row.finished_at = None
            row.reason = reason
            last = s.scalar(
                sa.select(sa.func.max(StepRow.seq)).where(StepRow.recovery_id == recovery_id)
            )
            self._add_steps(s, recovery_id, first_seq=(last or 0) + 1, steps=steps, at=at)
            s.flush()
            return self._with_steps(s, [row])[0]

    def resolve_failure(
        self, failure_id: int, *, at: float, reason: str, events: Sequence[Event] = ()
    ) -> Failure:
        with self._write(events) as s:
            row = self._failure_row(s, failure_id)
            host = self._host_row(s, row.host, lock=True)
            row = self._failure_row(s, failure_id)
            active = s.scalar(
                sa.select(RecoveryRow.id)
                .where(
                    RecoveryRow.failure_id == failure_id,
                    RecoveryRow.status.in_(_ACTIVE_RECOVERY),
                )
                .limit(1)
            )
            if active is not None:
                raise InvalidTransition(
                    f"failure {failure_id}: recovery {active} is still active; "
                    "let it end (or fail) first"
                )
            self._move_failure(row, FailureStatus.RESOLVED)
            row.reason = f"{row.reason}; {reason}" if reason else row.reason
            row.last_seen = max(row.last_seen, at)
            if HostState(host.state) is HostState.FAILED:
                # Handled by hand: out of use, like a recovered host, until restored.
                self._move_host(host, HostState.RECOVERED, reason=f"handled: {reason}", at=at)
            s.flush()
            return _failure(row)

    # --- guest failures -----------------------------------------------------------------

    def record_guest_report(
        self,
        report: GuestReport,
        *,
        reason: str,
        received_at: float,
        events: Callable[[InstanceFailure, bool], Sequence[Event]] = lambda f, new: (),
    ) -> tuple[InstanceFailure, bool, bool]:
        with self._write() as s:
            # The host's lock serialises the reports of its instances (one "unresolved
            # failure" per instance and group), in the module's lock order.
            self._host_row(s, report.host, lock=True)
            seen = s.get(GuestReportRow, report.id)
            if seen is not None:
                return _guest_failure(s.get_one(GuestFailureRow, seen.failure_id)), False, True
            kind = GuestFailureKind(report.kind)
            row = s.scalar(
                sa.select(GuestFailureRow)
                .where(
                    GuestFailureRow.instance_id == report.instance_id,
                    GuestFailureRow.kind.in_([str(k) for k in _GUEST_GROUPS[kind]]),
                    GuestFailureRow.status != str(GuestFailureStatus.RESOLVED),
                )
                .order_by(GuestFailureRow.id.desc())
                .limit(1)
            )
            new = row is None
            if row is None:
                row = GuestFailureRow(
                    instance_id=report.instance_id,
                    host=report.host,
                    kind=str(kind),
                    status=str(GuestFailureStatus.OPEN),
                    reason=reason,
                    first_seen=report.at,
                    last_seen=report.at,
                    count=1,
                    seen_count=0,
                    occurrences=[report.at],
                    detail=dict(report.detail),
                    restarts=0,
                    next_restart_at=0.0,
                    action_status=None,
                    action_attempts=0,
                    action_detail="",
                    changed_at=received_at,
                )
                s.add(row)
            else:
                row.count += 1
                row.host = report.host
                row.reason = reason
                row.last_seen = max(row.last_seen, report.at)
                row.occurrences = [*row.occurrences, report.at][-_OCCURRENCES_KEPT:]
                row.detail = dict(report.detail)
            s.flush()
            s.add(GuestReportRow(id=report.id, failure_id=row.id, received_at=received_at))
            failure = _guest_failure(row)
            self._outbox(s, events(failure, new))
            return failure, new, False

    def get_guest_failure(self, failure_id: int) -> InstanceFailure:
        with self._read() as s:
            row = s.get(GuestFailureRow, failure_id)
            if row is None:
                raise NotFoundError(f"guest failure {failure_id} does not exist")
            return _guest_failure(row)

    def list_guest_failures(
        self,
        *,
        instance_id: str | None = None,
        statuses: Sequence[GuestFailureStatus] | None = None,
        limit: int = 1000,
    ) -> list[InstanceFailure]:
        query = sa.select(GuestFailureRow)
        if instance_id is not None:
            query = query.where(GuestFailureRow.instance_id == instance_id)
        if statuses is not None:
            query = query.where(
                GuestFailureRow.status.in_([str(GuestFailureStatus(x)) for x in statuses])
            )
        query = query.order_by(GuestFailureRow.id.desc()).limit(limit)
        with self._read() as s:
            return [_guest_failure(r) for r in s.scalars(query)]

    def update_guest_failure(
        self, failure_id: int, *, at: float, events: Sequence[Event] = (), **changes: Any
    ) -> InstanceFailure:
        status = changes.pop("status", None)
        values = _converted(changes, _GUEST_FIELDS, "guest failure")
        with self._write(events) as s:
            host = s.scalar(sa.select(GuestFailureRow.host).where(GuestFailureRow.id == failure_id))
            if host is None:
                raise NotFoundError(f"guest failure {failure_id} does not exist")
            self._host_row(s, host, lock=True)
            row = s.get_one(GuestFailureRow, failure_id)
            if status is not None:
                new = GuestFailureStatus(status)
                check_transition(
                    GUEST_FAILURE_TRANSITIONS,
                    GuestFailureStatus(row.status),
                    new,
                    what=f"guest failure {failure_id}",
                )
                row.status = str(new)
            for name, value in values.items():
                setattr(row, name, value)
            row.changed_at = at
            s.flush()
            return _guest_failure(row)

    def requeue_running_guest_actions(self, *, at: float) -> int:
        with self._write() as s:
            rows = s.scalars(
                sa.select(GuestFailureRow).where(
                    GuestFailureRow.action_status == str(StepStatus.RUNNING)
                )
            ).all()
            for row in rows:
                row.action_status = str(StepStatus.PENDING)
                row.next_restart_at = at
                row.changed_at = at
            return len(rows)

    # --- host services ------------------------------------------------------------------

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
        with self._write() as s:
            self._host_row(s, host, lock=True)
            row = s.get(HostServicesRow, host)
            old = _host_services(row) if row is not None else None
            if row is not None and reported_at <= row.reported_at:
                return _host_services(row), False  # a retried or reordered older report
            data = {
                name: {"up": st.up, "since": st.since, "detail": st.detail}
                for name, st in services.items()
            }
            if row is None:
                row = HostServicesRow(
                    host=host,
                    services=data,
                    reported_at=reported_at,
                    hold=str(ComputeHold.NONE),
                    hold_reason="",
                    changed_at=at,
                    action_attempts=0,
                    next_attempt_at=0.0,
                )
                s.add(row)
            else:
                row.services = data
                row.reported_at = reported_at
            s.flush()
            new = _host_services(row)
            self._outbox(s, events(old, new))
            return new, True

    def get_host_services(self, host: str) -> HostServices | None:
        with self._read() as s:
            row = s.get(HostServicesRow, host)
            return _host_services(row) if row is not None else None

    def list_host_services(self) -> list[HostServices]:
        with self._read() as s:
            rows = s.scalars(sa.select(HostServicesRow).order_by(HostServicesRow.host))
            return [_host_services(r) for r in rows]

    def set_compute_hold(
        self,
        host: str,
        hold: ComputeHold,
        reason: str,
        *,
        at: float,
        events: Sequence[Event] = (),
    ) -> HostServices:
        with self._write(events) as s:
            self._host_row(s, host, lock=True)
            row = s.get(HostServicesRow, host)
            if row is None:
                raise NotFoundError(f"host {host!r} has no service report")
            row.hold = str(ComputeHold(hold))
            row.hold_reason = reason
            row.changed_at = at
            row.action_attempts, row.next_attempt_at = 0, 0.0  # done: no retry pending
            s.flush()
            return _host_services(row)

    def set_service_retry(self, host: str, *, attempts: int, next_attempt_at: float) -> None:
        with self._write(()) as s:
            self._host_row(s, host, lock=True)
            row = s.get(HostServicesRow, host)
            if row is None:
                raise NotFoundError(f"host {host!r} has no service report")
            row.action_attempts = attempts
            row.next_attempt_at = next_attempt_at

    @staticmethod
    def _outbox(s: Session, events: Sequence[Event]) -> None:
        """Events computed inside a transaction (they name a row it just created)."""
        s.add_all(
            EventRow(
                id=e.id,
                event_type=e.event_type,
                timestamp=e.timestamp,
                host=e.host,
                instance_id=e.instance_id,
                priority=e.priority,
                payload=dict(e.payload),
            )
            for e in events
        )

    # --- the outbox ---------------------------------------------------------------------

    def append_events(self, events: Sequence[Event]) -> None:
        with self._write(events):
            pass

    def list_events(
        self, *, after: int = 0, limit: int = 100, host: str | None = None
    ) -> list[Event]:
        with self._read() as s:
            query = sa.select(EventRow).where(EventRow.seq > after)
            if host is not None:
                query = query.where(EventRow.host == host)
            rows = s.scalars(query.order_by(EventRow.seq).limit(limit))
            return [_event(r) for r in rows]

    def last_event_seq(self) -> int:
        with self._read() as s:
            return int(s.scalar(sa.select(sa.func.max(EventRow.seq))) or 0)

    def ensure_sink(self, name: str) -> SinkState:
        with self._write() as s:
            row = s.get(SinkRow, name, with_for_update=True)
            if row is None:
                row = self._new_sink(s, name)
            return _sink(row)

    @staticmethod
    def _new_sink(s: Session, name: str) -> SinkRow:
        # A new sink starts at the end: it is not sent the history before it existed.
        end = s.scalar(sa.select(sa.func.max(EventRow.seq))) or 0
        row = SinkRow(name=name, cursor=end, attempts=0, next_attempt_at=0.0, last_error="")
        s.add(row)
        s.flush()
        return row

    def get_sink(self, name: str) -> SinkState:
        with self._read() as s:
            row = s.get(SinkRow, name)
            if row is None:
                raise NotFoundError(f"sink {name!r} does not exist")
            return _sink(row)

    def sink_delivered(self, name: str, seq: int) -> None:
        with self._write() as s:
            row = s.get_one(SinkRow, name, with_for_update=True)
            row.cursor = max(row.cursor, seq)
            row.attempts, row.next_attempt_at, row.last_error = 0, 0.0, ""

    def sink_failed(self, name: str, *, attempts: int, next_attempt_at: float, error: str) -> None:
        with self._write() as s:
            row = s.get_one(SinkRow, name, with_for_update=True)
            row.attempts, row.next_attempt_at, row.last_error = attempts, next_attempt_at, error

    def dead_letter(self, name: str, event: Event, *, attempts: int, error: str, at: float) -> None:
        with self._write() as s:
            row = s.get_one(SinkRow, name, with_for_update=True)
            s.add(
                DeadLetterRow(
                    sink=name,
                    event_seq=event.seq,
                    event_id=event.id,
                    event_type=event.event_type,
                    attempts=attempts,
                    error=error,
                    at=at,
                )
            )
            row.cursor = max(row.cursor, event.seq)
            row.attempts, row.next_attempt_at, row.last_error = 0, 0.0, error

    def list_dead_letters(self, *, sink: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        with self._read() as s:
            query = sa.select(DeadLetterRow)
            if sink is not None:
                query = query.where(DeadLetterRow.sink == sink)
            rows = s.scalars(query.order_by(DeadLetterRow.id.desc()).limit(limit))
            return [
                DeadLetter(r.sink, r.event_seq, r.event_id, r.event_type, r.attempts, r.error, r.at)
                for r in rows
            ]

    # --- webhook subscriptions ------------------------------------------------------------

    def create_subscription(self, subscription: Subscription, *, sink: str) -> Subscription:
        with self._write() as s:
            row = SubscriptionRow(
                name=subscription.name,
                url=subscription.url,
                secret=subscription.secret,
                event_types=list(subscription.event_types),
                created_at=subscription.created_at,
            )
            s.add(row)
            try:
                s.flush()
            except IntegrityError:
                raise AlreadyExists(f"subscription {subscription.name!r} already exists") from None
            if s.get(SinkRow, sink) is None:
                self._new_sink(s, sink)
            return _subscription(row)

    def list_subscriptions(self) -> list[Subscription]:
        with self._read() as s:
            rows = s.scalars(sa.select(SubscriptionRow).order_by(SubscriptionRow.name))
            return [_subscription(r) for r in rows]

    def get_subscription(self, name: str) -> Subscription:
        with self._read() as s:
            row = s.scalar(sa.select(SubscriptionRow).where(SubscriptionRow.name == name))
            if row is None:
                raise NotFoundError(f"subscription {name!r} does not exist")
            return _subscription(row)

    def delete_subscription(self, name: str, *, sink: str) -> None:
        with self._write() as s:
            row = s.scalar(sa.select(SubscriptionRow).where(SubscriptionRow.name == name))
            if row is None:
                raise NotFoundError(f"subscription {name!r} does not exist")
            s.delete(row)
            s.execute(sa.delete(SinkRow).where(SinkRow.name == sink))

    # --- cloud-wide control -----------------------------------------------------------

    def get_control(self) -> Control:
        with self._read() as s:
            row = s.get(ControlRow, CONTROL_ID)
            return Control() if row is None else _control(row)

    def set_control(self, *, paused: bool, reason: str, at: float) -> Control:
        with self._write() as s:
            values = {"id": CONTROL_ID, "paused": paused, "reason": reason, "changed_at": at}
            _upsert(s, ControlRow, values)
            return Control(paused=paused, reason=reason, changed_at=at)

    # --- helpers (all run inside the caller's transaction) --------------------------------

    @staticmethod
    def _segment_row(s: Session, name: str, *, lock: bool = False) -> SegmentRow:
        query = sa.select(SegmentRow).where(SegmentRow.name == name)
        row = s.scalar(query.with_for_update() if lock else query)
        if row is None:
            raise NotFoundError(f"segment {name!r} does not exist")
        return row

    @staticmethod
    def _host_row(s: Session, name: str, *, lock: bool = False) -> HostRow:
        query = sa.select(HostRow).where(HostRow.name == name)
        row = s.scalar(query.with_for_update() if lock else query)
        if row is None:
            raise NotFoundError(f"host {name!r} does not exist")
        return row

    @staticmethod
    def _failure_row(s: Session, failure_id: int) -> FailureRow:
        row = s.get(FailureRow, failure_id)
        if row is None:
            raise NotFoundError(f"failure {failure_id} does not exist")
        return row

    def _lock_recovery(self, s: Session, recovery_id: int) -> RecoveryRow:
        """The recovery, after locking its host (the lock order of the module docstring)."""
        host = s.scalar(sa.select(RecoveryRow.host).where(RecoveryRow.id == recovery_id))
        if host is None:
            raise NotFoundError(f"recovery {recovery_id} does not exist")
        self._host_row(s, host, lock=True)
        return s.get_one(RecoveryRow, recovery_id)

    def _lock_step(self, s: Session, step_id: int) -> StepRow:
        """The step, after locking the host its recovery is about."""
        host = s.scalar(
            sa.select(RecoveryRow.host)
            .join(StepRow, StepRow.recovery_id == RecoveryRow.id)
            .where(StepRow.id == step_id)
        )
        if host is None:
            raise NotFoundError(f"step {step_id} does not exist")
        self._host_row(s, host, lock=True)
        return s.get_one(StepRow, step_id)

    @staticmethod
    def _fold_failure(
        s: Session,
        *,
        host: str,
        kind: FailureKind,
        reason: str,
        sources: Sequence[str],
        at: float,
    ) -> tuple[FailureRow, bool]:
        """The host's unresolved failure of ``kind`` with this observation folded in, or a
        new OPEN one. The caller holds the host's lock, which makes "unresolved" unique."""
        row = s.scalar(
            sa.select(FailureRow)
            .where(
                FailureRow.host == host,
                FailureRow.kind == str(kind),
                FailureRow.status != str(FailureStatus.RESOLVED),
            )
            .order_by(FailureRow.id.desc())
            .limit(1)
        )
        if row is None:
            row = FailureRow(
                host=host,
                kind=str(kind),
                status=str(FailureStatus.OPEN),
                reason=reason,
                sources=list(dict.fromkeys(sources)),
                first_seen=at,
                last_seen=at,
                count=1,
            )
            s.add(row)
            s.flush()
            return row, True
        row.count += 1
        # A new list, not an in-place append: the ORM does not see changes inside JSON.
        row.sources = list(dict.fromkeys([*row.sources, *sources]))
        row.last_seen = max(row.last_seen, at)
        return row, False

    @staticmethod
    def _add_steps(
        s: Session, recovery_id: int, *, first_seq: int, steps: Sequence[NewStep], at: float
    ) -> list[StepRow]:
        rows = []
        for seq, new in enumerate(steps, start=first_seq):
            status = StepStatus(new.status)
            rows.append(
                StepRow(
                    recovery_id=recovery_id,
                    seq=seq,
                    kind=str(StepKind(new.kind)),
                    status=str(status),
                    instance_id=new.instance_id,
                    instance_name=new.instance_name,
                    priority=new.priority,
                    attempts=0,
                    next_attempt_at=at,
                    started_at=None,
                    finished_at=at if status in _TERMINAL_STEP else None,
                    detail=new.detail,
                    result={},
                    target_host=new.target_host,
                    status_before=new.status_before,
                )
            )
        s.add_all(rows)
        s.flush()
        return rows

    @staticmethod
    def _with_steps(s: Session, rows: Sequence[RecoveryRow]) -> list[Recovery]:
        """Recoveries with their steps, loaded in one query for all of them."""
        steps: dict[int, list[Step]] = defaultdict(list)
        if rows:
            query = (
                sa.select(StepRow)
                .where(StepRow.recovery_id.in_([r.id for r in rows]))
                .order_by(StepRow.recovery_id, StepRow.seq)
            )
            for step in s.scalars(query):
                steps[step.recovery_id].append(_step(step))
        return [_recovery(r, steps[r.id]) for r in rows]

    @staticmethod
    def _move_host(row: HostRow, state: HostState, *, reason: str, at: float) -> None:
        current = HostState(row.state)
        check_transition(HOST_TRANSITIONS, current, state, what=f"host {row.name}")
        if current != state:
            row.state = str(state)
            row.state_reason = reason
            row.state_changed_at = at

    @staticmethod
    def _move_failure(row: FailureRow, status: FailureStatus) -> None:
        current = FailureStatus(row.status)
        check_transition(FAILURE_TRANSITIONS, current, status, what=f"failure {row.id}")
        row.status = str(status)

    @staticmethod
    def _move_recovery(row: RecoveryRow, status: RecoveryStatus) -> None:
        current = RecoveryStatus(row.status)
        check_transition(RECOVERY_TRANSITIONS, current, status, what=f"recovery {row.id}")
        row.status = str(status)

    @staticmethod
    def _move_step(row: StepRow, status: StepStatus, *, expect: StepStatus) -> None:
        current = StepStatus(row.status)
        # Stricter than the table's "same state is no change": starting a step that is
        # already running would run it twice.
        if current != expect:
            raise InvalidTransition(
                f"step {row.id}: is {current.value}, expected {expect.value} "
                f"to move to {status.value}"
            )
        check_transition(STEP_TRANSITIONS, current, status, what=f"step {row.id}")
        row.status = str(status)


def _upsert(s: Session, model: type[Base], values: dict[str, Any]) -> None:
    """Insert ``values`` or, if the primary key exists, replace the row's other columns —
    atomically, so that concurrent writers of the same key cannot collide."""
    key = [c.name for c in sa.inspect(model).primary_key]
    updates = {k: v for k, v in values.items() if k not in key}
    dialect = s.get_bind().dialect.name
    statement: sa.Executable
    if dialect == "postgresql":
        statement = (
            postgresql.insert(model)
            .values(values)
            .on_conflict_do_update(index_elements=key, set_=updates)
        )
    elif dialect == "sqlite":
        statement = (
            sqlite.insert(model)
            .values(values)
            .on_conflict_do_update(index_elements=key, set_=updates)
        )
    elif dialect in ("mysql", "mariadb"):
        statement = mysql.insert(model).values(values).on_duplicate_key_update(updates)
    else:
        raise NotImplementedError(f"no upsert for the {dialect} dialect")
    s.execute(statement)
