"""Segments, their hosts, instance policy overrides and the cloud-wide control, in SQL.

``SqlHosts`` implements ``HostStore`` and ``ControlStore`` on ``SessionBase``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vigil.model import (
    Control,
    Event,
    FenceMethod,
    HaPolicy,
    Host,
    HostState,
    InstancePolicy,
    InvalidTransition,
    Segment,
)
from vigil.store.base import (
    AlreadyExists,
    Changes,
    ControlStore,
    HostChange,
    HostStore,
    InUse,
    NotFoundError,
)
from vigil.store.mapping import record_of
from vigil.store.rows import (
    CONTROL_ID,
    ControlRow,
    HostRevisionRow,
    HostRow,
    HostServicesRow,
    InstancePolicyRow,
    InstanceProjectRow,
    RecoveryRow,
    RevisionRow,
    SegmentRow,
)
from vigil.store.session import (
    ACTIVE_RECOVERY,
    SessionBase,
    chunks,
    converted,
    enum_value,
    note_change,
    same,
    upsert,
)


def _fencing_to_json(methods: Sequence[FenceMethod]) -> list[dict[str, Any]]:
    return [{"driver": m.driver, "options": dict(m.options)} for m in methods]


def _host(row: HostRow) -> Host:
    fencing = tuple(FenceMethod(m["driver"], dict(m["options"])) for m in row.fencing)
    return record_of(Host, row, fencing=fencing)


_SEGMENT_FIELDS: Mapping[str, Callable[[Any], Any]] = {
    "description": same,
    "default_policy": enum_value(HaPolicy),
    "max_failed_share": same,
    "max_parallel_evacuations": same,
    "paused": same,
    "pause_reason": same,
}

# "segment" is handled apart: it must name an existing segment.
_HOST_FIELDS: Mapping[str, Callable[[Any], Any]] = {
    "segment": same,
    "maintenance": same,
    "reserved": same,
    "fencing": _fencing_to_json,
    "boot_id": same,
}


def _new_host_row(host: Host) -> HostRow:
    return HostRow(
        name=host.name,
        segment=host.segment,
        state=str(HostState(host.state)),
        maintenance=host.maintenance,
        reserved=host.reserved,
        fencing=_fencing_to_json(host.fencing),
        state_reason=host.state_reason,
        state_changed_at=host.state_changed_at,
    )


class SqlHosts(SessionBase, HostStore, ControlStore):
    """Segments, hosts, instance policies and the control row."""

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
            return record_of(Segment, row)

    def get_segment(self, name: str) -> Segment:
        with self._read() as s:
            return record_of(Segment, self._segment_row(s, name))

    def list_segments(self) -> list[Segment]:
        with self._read() as s:
            return [
                record_of(Segment, r)
                for r in s.scalars(sa.select(SegmentRow).order_by(SegmentRow.name))
            ]

    def update_segment(self, name: str, *, events: Sequence[Event] = (), **changes: Any) -> Segment:
        values = converted(changes, _SEGMENT_FIELDS, "update_segment")
        with self._write(events) as s:
            row = self._segment_row(s, name, lock=True)
            for field_name, value in values.items():
                setattr(row, field_name, value)
            s.flush()
            return record_of(Segment, row)

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
                row = _new_host_row(host)
                s.add(row)
                s.flush()
                return _host(row)
        except IntegrityError as exc:
            raise self._host_insert_error(host) from exc

    def create_hosts(self, hosts: Sequence[Host]) -> list[Host]:
        names = [h.name for h in hosts]
        twice = sorted(n for n, count in Counter(names).items() if count > 1)
        if twice:
            raise ValueError(f"hosts named twice: {', '.join(twice)}")
        with self._write() as s:
            segments = {h.segment for h in hosts}
            found = set(s.scalars(sa.select(SegmentRow.name).where(SegmentRow.name.in_(segments))))
            if segments - found:
                missing = ", ".join(repr(n) for n in sorted(segments - found))
                raise NotFoundError(f"segment(s) {missing} do not exist")
            taken = [
                name
                for chunk in chunks(sorted(names))
                for name in s.scalars(sa.select(HostRow.name).where(HostRow.name.in_(chunk)))
            ]
            if taken:
                raise AlreadyExists(f"host(s) {', '.join(repr(n) for n in taken)} already exist")
            rows = [_new_host_row(host) for host in hosts]
            s.add_all(rows)
            try:
                s.flush()
            except IntegrityError as exc:  # added or deleted meanwhile by another writer
                raise AlreadyExists(f"hosts or segments changed meanwhile: {exc.orig}") from exc
            return [_host(r) for r in rows]

    def _host_insert_error(self, host: Host) -> Exception:
        """Which constraint refused the new host: its name, or its segment (deleted since)."""
        with self._read() as s:
            if s.scalar(sa.select(HostRow.id).where(HostRow.name == host.name)) is not None:
                return AlreadyExists(f"host {host.name!r} already exists")
        return NotFoundError(f"segment {host.segment!r} does not exist")

    def get_host(self, name: str) -> Host:
        with self._read() as s:
            return _host(self._host_row(s, name))

    def list_hosts(
        self, segment: str | None = None, *, names: Collection[str] | None = None
    ) -> list[Host]:
        query = sa.select(HostRow).order_by(HostRow.name)
        if segment is not None:
            query = query.where(HostRow.segment == segment)
        with self._read() as s:
            if names is None:
                return [_host(r) for r in s.scalars(query)]
            rows = [
                row
                for chunk in chunks(sorted(names))
                for row in s.scalars(query.where(HostRow.name.in_(chunk)))
            ]
            return [_host(r) for r in sorted(rows, key=lambda r: r.name)]

    def changes_since(self, revision: int) -> Changes:
        with self._read() as s:
            row = s.get(RevisionRow, 1)
            if row is None:
                return Changes(0, 0)
            if row.n <= revision:
                return Changes(row.n, row.full)
            hosts = s.scalars(
                sa.select(HostRevisionRow.host).where(HostRevisionRow.revision > revision)
            )
            return Changes(row.n, row.full, frozenset(hosts))

    def update_host(self, name: str, **changes: Any) -> Host:
        values = converted(changes, _HOST_FIELDS, "update_host")
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

    def change_hosts(self, changes: Sequence[HostChange], *, at: float) -> list[str]:
        done: list[str] = []
        events: list[Event] = []
        by_name = {c.name: c for c in changes}
        with self._write() as s:
            for chunk in chunks(sorted(by_name)):  # locked in name order, as one by one
                query = sa.select(HostRow).where(HostRow.name.in_(chunk)).order_by(HostRow.name)
                for row in s.scalars(query.with_for_update()):
                    change = by_name[row.name]
                    if change.state is not None:
                        try:
                            self._move_host(row, change.state, reason=change.reason, at=at)
                        except InvalidTransition:
                            continue
                    if change.boot_id is not None:
                        row.boot_id = change.boot_id
                    done.append(row.name)
                    events.extend(change.events)
            if events:
                self._outbox(s, events)
        return done

    def delete_host(self, name: str) -> None:
        with self._write() as s:
            row = self._host_row(s, name, lock=True)
            active = s.scalar(
                sa.select(RecoveryRow.id)
                .where(RecoveryRow.host == name, RecoveryRow.status.in_(ACTIVE_RECOVERY))
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
            upsert(s, InstancePolicyRow, values)
            return InstancePolicy(policy.instance_id, HaPolicy(policy.policy), policy.priority)

    def get_instance_policy(self, instance_id: str) -> InstancePolicy | None:
        with self._read() as s:
            row = s.get(InstancePolicyRow, instance_id)
            return None if row is None else record_of(InstancePolicy, row)

    def instance_policies(self, instance_ids: Collection[str]) -> dict[str, InstancePolicy]:
        query = sa.select(InstancePolicyRow)
        with self._read() as s:
            return {
                row.instance_id: record_of(InstancePolicy, row)
                for chunk in chunks(sorted(set(instance_ids)))
                for row in s.scalars(query.where(InstancePolicyRow.instance_id.in_(chunk)))
            }

    def list_instance_policies(self, *, project_id: str | None = None) -> list[InstancePolicy]:
        query = sa.select(InstancePolicyRow).order_by(InstancePolicyRow.instance_id)
        if project_id is not None:
            query = query.join(
                InstanceProjectRow, InstanceProjectRow.instance_id == InstancePolicyRow.instance_id
            ).where(InstanceProjectRow.project_id == project_id)
        with self._read() as s:
            return [record_of(InstancePolicy, r) for r in s.scalars(query)]

    def delete_instance_policy(self, instance_id: str) -> None:
        with self._write() as s:
            deleted = s.connection().execute(
                sa.delete(InstancePolicyRow).where(InstancePolicyRow.instance_id == instance_id)
            )
            if deleted.rowcount == 0:
                raise NotFoundError(f"no policy for instance {instance_id!r}")

    # --- the projects of instances ---------------------------------------------------

    def note_instance_projects(self, projects: Mapping[str, str]) -> None:
        # Written only when new or changed (Nova reports the same projects at every
        # listing): the process remembers what it wrote.
        seen = self._projects_written
        changed = {i: p for i, p in projects.items() if seen.get(i) != p}
        if not changed:
            return
        with self._write() as s:
            for instance_id, project_id in sorted(changed.items()):
                values = {"instance_id": instance_id, "project_id": project_id}
                upsert(s, InstanceProjectRow, values)
        seen.update(changed)

    def instance_projects(self, instance_ids: Collection[str]) -> dict[str, str]:
        query = sa.select(InstanceProjectRow.instance_id, InstanceProjectRow.project_id)
        with self._read() as s:
            return {
                row.instance_id: row.project_id
                for chunk in chunks(sorted(set(instance_ids)))
                for row in s.execute(query.where(InstanceProjectRow.instance_id.in_(chunk)))
            }

    # --- cloud-wide control -----------------------------------------------------------

    def get_control(self) -> Control:
        with self._read() as s:
            row = s.get(ControlRow, CONTROL_ID)
            return Control() if row is None else record_of(Control, row)

    def set_control(self, *, paused: bool, reason: str, at: float) -> Control:
        with self._write() as s:
            values = {"id": CONTROL_ID, "paused": paused, "reason": reason, "changed_at": at}
            upsert(s, ControlRow, values)
            note_change(s)
            return Control(paused=paused, reason=reason, changed_at=at)

    # --- helpers ----------------------------------------------------------------------

    @staticmethod
    def _segment_row(s: Session, name: str, *, lock: bool = False) -> SegmentRow:
        query = sa.select(SegmentRow).where(SegmentRow.name == name)
        row = s.scalar(query.with_for_update() if lock else query)
        if row is None:
            raise NotFoundError(f"segment {name!r} does not exist")
        return row
