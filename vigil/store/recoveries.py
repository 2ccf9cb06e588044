"""Host recoveries in SQL: declared with their failure and steps, paused, finished,
retried, withdrawn, extended.

``SqlRecoveries`` implements ``RecoveryStore``: these methods, with the failures'
(``vigil.store.failures``) and the steps' (``vigil.store.steps``). Every write locks the
recovery's host first (``_lock_recovery``), the lock order of ``vigil.store.session``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from vigil.model import (
    RECOVERY_TRANSITIONS,
    Event,
    FailureKind,
    FailureStatus,
    HostState,
    InvalidTransition,
    NewStep,
    Recovery,
    RecoveryStatus,
    Step,
    StepKind,
    StepStatus,
    check_transition,
)
from vigil.store.base import NotFoundError, RecoveryStore
from vigil.store.failures import SqlFailures
from vigil.store.mapping import record_of
from vigil.store.rows import FailureRow, RecoveryRow, StepRow
from vigil.store.session import ACTIVE_RECOVERY, chunks
from vigil.store.steps import SqlSteps


def _recovery(row: RecoveryRow, steps: Sequence[Step]) -> Recovery:
    return record_of(Recovery, row, steps=tuple(steps))


class SqlRecoveries(SqlFailures, SqlSteps, RecoveryStore):
    """Recoveries, with failures and steps: the whole of ``RecoveryStore``."""

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
                .where(RecoveryRow.host == host, RecoveryRow.status.in_(ACTIVE_RECOVERY))
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
            return _recovery(recovery, [record_of(Step, r) for r in step_rows])

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
        hosts: Collection[str] | None = None,
    ) -> list[Recovery]:
        query = sa.select(RecoveryRow)
        if host is not None:
            query = query.where(RecoveryRow.host == host)
        if statuses is not None:
            query = query.where(RecoveryRow.status.in_([str(RecoveryStatus(x)) for x in statuses]))
        order = (RecoveryRow.created_at.desc(), RecoveryRow.id.desc())
        with self._read() as s:
            if hosts is None:
                return self._with_steps(s, list(s.scalars(query.order_by(*order).limit(limit))))
            rows = [
                row
                for chunk in chunks(sorted(hosts))
                for row in s.scalars(query.where(RecoveryRow.host.in_(chunk)))
            ]
            rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
            return self._with_steps(s, rows[:limit])

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

    # --- helpers (all run inside the caller's transaction) --------------------------------

    def _lock_recovery(self, s: Session, recovery_id: int) -> RecoveryRow:
        """The recovery, after locking its host (the lock order of ``vigil.store.session``)."""
        host = s.scalar(sa.select(RecoveryRow.host).where(RecoveryRow.id == recovery_id))
        if host is None:
            raise NotFoundError(f"recovery {recovery_id} does not exist")
        self._host_row(s, host, lock=True)
        return s.get_one(RecoveryRow, recovery_id)

    @staticmethod
    def _with_steps(s: Session, rows: Sequence[RecoveryRow]) -> list[Recovery]:
        """Recoveries with their steps, loaded in one query for all of them."""
        steps: dict[int, list[Step]] = defaultdict(list)
        if rows:
            # Plain rows, not ORM objects: read-only, and a rack failure's recoveries
            # carry thousands of steps, each read by every cycle and listing that shows
            # it (the ORM's identity map and instrumentation cost several times more).
            table = StepRow.__table__
            query = (
                sa.select(table)
                .where(table.c.recovery_id.in_([r.id for r in rows]))
                .order_by(table.c.recovery_id, table.c.seq)
            )
            for step in s.execute(query):
                steps[step.recovery_id].append(record_of(Step, step))
        return [_recovery(r, steps[r.id]) for r in rows]

    @staticmethod
    def _move_recovery(row: RecoveryRow, status: RecoveryStatus) -> None:
        current = RecoveryStatus(row.status)
        check_transition(RECOVERY_TRANSITIONS, current, status, what=f"recovery {row.id}")
        row.status = str(status)
