"""Operator requests in SQL: restore a host, restart an instance — recorded before the
engine's workers carry them out (``vigil.engine.requests``).

``SqlRequests`` implements ``RequestStore`` on ``SessionBase``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from vigil.model import Event, InvalidTransition, OperatorRequest, RequestKind, StepStatus
from vigil.store.base import NotFoundError, RequestStore
from vigil.store.mapping import record_of
from vigil.store.rows import HostRow, RequestRow
from vigil.store.session import SessionBase


class SqlRequests(SessionBase, RequestStore):
    """One row a request; its status moves PENDING → RUNNING → an outcome."""

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
        with self._write(events) as s:
            row = RequestRow(
                kind=str(RequestKind(kind)),
                target=target,
                host=host,
                status=str(StepStatus.PENDING),
                reason=reason,
                attempts=0,
                next_attempt_at=at,
                created_at=at,
                finished_at=None,
                detail="",
            )
            s.add(row)
            s.flush()
            return record_of(OperatorRequest, row)

    def get_request(self, request_id: int) -> OperatorRequest:
        with self._read() as s:
            return record_of(OperatorRequest, _request_row(s, request_id))

    def list_requests(self, *, statuses: Sequence[StepStatus] = ()) -> list[OperatorRequest]:
        with self._read() as s:
            query = sa.select(RequestRow).order_by(RequestRow.id)
            if statuses:
                query = query.where(RequestRow.status.in_([str(x) for x in statuses]))
            return [record_of(OperatorRequest, row) for row in s.scalars(query)]

    def start_request(self, request_id: int, *, at: float) -> OperatorRequest:
        with self._write() as s:
            row = _request_row(s, request_id, lock=True)
            if StepStatus(row.status) is not StepStatus.PENDING:
                raise InvalidTransition(f"request {request_id} is {row.status}, not pending")
            row.status = str(StepStatus.RUNNING)
            row.attempts += 1
            s.flush()
            return record_of(OperatorRequest, row)

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
        status = StepStatus(status)
        if status not in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.PENDING):
            raise ValueError(f"finish_request: {status.value} is not an outcome")
        with self._write(events) as s:
            row = _request_row(s, request_id, lock=True)
            if StepStatus(row.status) is not StepStatus.RUNNING:
                raise InvalidTransition(f"request {request_id} is {row.status}, not running")
            row.status = str(status)
            row.detail = detail
            if status is StepStatus.PENDING:
                row.next_attempt_at = at if next_attempt_at is None else next_attempt_at
            else:
                row.finished_at = at
            s.flush()
            return record_of(OperatorRequest, row)

    def requeue_running_requests(
        self, *, at: float, segment: str | None = None, hostless: bool = True
    ) -> int:
        with self._write() as s:
            query = sa.update(RequestRow).where(RequestRow.status == str(StepStatus.RUNNING))
            if segment is not None:
                hosts = sa.select(HostRow.name).where(HostRow.segment == segment)
                about: sa.ColumnElement[bool] = RequestRow.host.in_(hosts)
                if hostless:
                    about = sa.or_(about, RequestRow.host.is_(None))
                query = query.where(about)
            result = s.connection().execute(
                query.values(status=str(StepStatus.PENDING), next_attempt_at=at)
            )
            return result.rowcount


def _request_row(s: Session, request_id: int, *, lock: bool = False) -> RequestRow:
    row = s.get(RequestRow, request_id, with_for_update=lock)
    if row is None:
        raise NotFoundError(f"request {request_id} not found")
    return row
