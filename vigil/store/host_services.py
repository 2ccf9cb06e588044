"""Host services in SQL: each host's latest service snapshot from its agent, the hold
vigil put on its compute service, and the keeper's retry state.

``SqlHostServices`` implements ``ServiceStore`` on ``SessionBase``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa

from vigil.model import ComputeHold, Event, HostServices, ServiceState
from vigil.store.base import NotFoundError, ServiceStore
from vigil.store.mapping import record_of
from vigil.store.rows import HostServicesRow
from vigil.store.session import SessionBase


def _host_services(row: HostServicesRow) -> HostServices:
    services = {
        name: ServiceState(bool(v["up"]), float(v["since"]), str(v.get("detail", "")))
        for name, v in row.services.items()
    }
    return record_of(HostServices, row, services=services)


class SqlHostServices(SessionBase, ServiceStore):
    """Service snapshots, holds and retries, one row a host."""

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
