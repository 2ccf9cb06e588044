"""Guest failures in SQL: agents' reports folded into one failure per instance and
episode, each report recorded once; the guest engine's restart state.

``SqlGuests`` implements ``GuestStore`` on ``SessionBase``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from vigil.model import (
    GUEST_FAILURE_TRANSITIONS,
    Event,
    GuestFailureKind,
    GuestFailureStatus,
    GuestReport,
    InstanceFailure,
    StepStatus,
    check_transition,
)
from vigil.store.base import GuestStore, NotFoundError
from vigil.store.mapping import record_of
from vigil.store.rows import GuestFailureRow, GuestReportRow, HostRow, InstanceProjectRow
from vigil.store.session import SessionBase, converted, same

# Reports of these kinds fold into one failure: a crash loop is one episode.
_GUEST_GROUPS: Mapping[GuestFailureKind, tuple[GuestFailureKind, ...]] = {
    GuestFailureKind.CRASHED: (GuestFailureKind.CRASHED, GuestFailureKind.STOPPED_FAILED),
    GuestFailureKind.STOPPED_FAILED: (GuestFailureKind.CRASHED, GuestFailureKind.STOPPED_FAILED),
    GuestFailureKind.WATCHDOG: (GuestFailureKind.WATCHDOG,),
    GuestFailureKind.IO_ERROR: (GuestFailureKind.IO_ERROR,),
}
_OCCURRENCES_KEPT = 32


def _guest_failure(row: GuestFailureRow) -> InstanceFailure:
    # a stored empty action status reads as none, as it always has
    status = StepStatus(row.action_status) if row.action_status else None
    return record_of(InstanceFailure, row, action_status=status)


def _optional_step_status(value: Any) -> str | None:
    return None if value is None else str(StepStatus(value))


_GUEST_FIELDS: Mapping[str, Callable[[Any], Any]] = {
    "reason": same,
    "seen_count": int,
    "restarts": int,
    "next_restart_at": float,
    "action_status": _optional_step_status,
    "action_attempts": int,
    "action_detail": same,
}


class SqlGuests(SessionBase, GuestStore):
    """Guest failures and the ids of the reports received."""

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
            # failure" per instance and group), in the lock order of vigil.store.session.
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
        project_id: str | None = None,
    ) -> list[InstanceFailure]:
        query = sa.select(GuestFailureRow)
        if project_id is not None:
            query = query.join(
                InstanceProjectRow, InstanceProjectRow.instance_id == GuestFailureRow.instance_id
            ).where(InstanceProjectRow.project_id == project_id)
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
        values = converted(changes, _GUEST_FIELDS, "guest failure")
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

    def requeue_running_guest_actions(self, *, at: float, segment: str | None = None) -> int:
        with self._write() as s:
            query = sa.select(GuestFailureRow).where(
                GuestFailureRow.action_status == str(StepStatus.RUNNING)
            )
            if segment is not None:
                query = query.where(
                    GuestFailureRow.host.in_(
                        sa.select(HostRow.name).where(HostRow.segment == segment)
                    )
                )
            rows = s.scalars(query).all()
            for row in rows:
                row.action_status = str(StepStatus.PENDING)
                row.next_restart_at = at
                row.changed_at = at
            return len(rows)
