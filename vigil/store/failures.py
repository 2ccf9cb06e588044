"""A host's failures in SQL: observations recorded and folded, failures resolved.

``SqlFailures`` has the failure methods of ``RecoveryStore`` and the failure-row helpers
a recovery's writes use too (``vigil.store.recoveries``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from vigil.model import (
    FAILURE_TRANSITIONS,
    Event,
    Failure,
    FailureKind,
    FailureStatus,
    HostState,
    InvalidTransition,
    check_transition,
)
from vigil.store.base import NotFoundError
from vigil.store.mapping import record_of
from vigil.store.rows import FailureRow, RecoveryRow
from vigil.store.session import ACTIVE_RECOVERY, SessionBase


class SqlFailures(SessionBase):
    """Failures; part of ``RecoveryStore`` (``SqlRecoveries`` is the whole)."""

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
            return record_of(Failure, row), created

    def get_failure(self, failure_id: int) -> Failure:
        with self._read() as s:
            return record_of(Failure, self._failure_row(s, failure_id))

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
            return [record_of(Failure, r) for r in s.scalars(query)]

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
                    RecoveryRow.status.in_(ACTIVE_RECOVERY),
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
            return record_of(Failure, row)

    # --- helpers (all run inside the caller's transaction) --------------------------------

    @staticmethod
    def _failure_row(s: Session, failure_id: int) -> FailureRow:
        row = s.get(FailureRow, failure_id)
        if row is None:
            raise NotFoundError(f"failure {failure_id} does not exist")
        return row

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
    def _move_failure(row: FailureRow, status: FailureStatus) -> None:
        current = FailureStatus(row.status)
        check_transition(FAILURE_TRANSITIONS, current, status, what=f"failure {row.id}")
        row.status = str(status)
