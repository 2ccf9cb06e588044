"""Application checks in SQL (issue 17): one row per instance with declared checks —
its declaration, the state of each check and its current or last episode.

``SqlApps`` implements ``AppStore`` on ``SessionBase``. Every write first locks the
row of the instance's host (of each host concerned, in name order: the lock order of
``vigil.store.session``); an instance's host is not a foreign key (a row with an open
episode outlives its instance's place there), so a host that is no longer there has
nothing to lock — except the one ``sync_app_declarations`` is about, which must exist.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from vigil.model import AppEpisode, AppInstance, CheckState, Event
from vigil.store.base import AppStore, NotFoundError
from vigil.store.mapping import record_of
from vigil.store.rows import AppInstanceRow, HostRow
from vigil.store.session import SessionBase, chunks


def _to_json(record: CheckState | AppEpisode) -> dict[str, Any]:
    """Every field of ``record``, an enumeration as its value."""
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}


def _app_instance(row: AppInstanceRow) -> AppInstance:
    checks = {name: record_of(CheckState, SimpleNamespace(**v)) for name, v in row.checks.items()}
    episode = None if row.episode is None else record_of(AppEpisode, SimpleNamespace(**row.episode))
    return record_of(AppInstance, row, checks=checks, episode=episode)


def _lock_hosts(s: Session, names: Collection[str]) -> None:
    """Lock the rows of those of ``names`` that are hosts, in name order."""
    for chunk in chunks(sorted(set(names))):
        query = sa.select(HostRow.name).where(HostRow.name.in_(chunk)).order_by(HostRow.name)
        s.scalars(query.with_for_update()).all()


def _missing(instance_id: str) -> NotFoundError:
    return NotFoundError(f"application instance {instance_id!r} does not exist")


class SqlApps(SessionBase, AppStore):
    """Declarations, check states and episodes of the instances with application checks."""

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
        ids = sorted(declared)
        with self._write() as s:
            # The hosts the declared instances move from are locked with this one.
            moved_from: set[str] = set()
            for chunk in chunks(ids):
                moved_from.update(
                    s.scalars(
                        sa.select(AppInstanceRow.host).where(
                            AppInstanceRow.instance_id.in_(chunk), AppInstanceRow.host != host
                        )
                    )
                )
            _lock_hosts(s, {host, *moved_from})
            self._host_row(s, host)  # locked just above; NotFoundError for an unknown host
            rows = {
                r.instance_id: r
                for r in s.scalars(sa.select(AppInstanceRow).where(AppInstanceRow.host == host))
            }
            for chunk in chunks(ids):
                rows.update(
                    (r.instance_id, r)
                    for r in s.scalars(
                        sa.select(AppInstanceRow).where(AppInstanceRow.instance_id.in_(chunk))
                    )
                )
            changes: list[tuple[AppInstance | None, AppInstanceRow | None]] = []
            for instance_id in sorted(set(rows) | set(declared)):
                row = rows.get(instance_id)
                if instance_id not in declared:
                    assert row is not None
                    if not row.episode_open:
                        changes.append((_app_instance(row), None))
                        s.delete(row)
                    continue
                declaration, mode, error = declared[instance_id]
                if row is None:
                    row = AppInstanceRow(
                        instance_id=instance_id,
                        host=host,
                        declaration=dict(declaration),
                        mode=mode,
                        error=error,
                        checks={},
                        started_at=at,
                        last_beat_at=None,
                        reported_at=0.0,
                        episode=None,
                        episode_open=False,
                        updated_at=at,
                    )
                    s.add(row)
                    changes.append((None, row))
                    continue
                moved = row.host != host
                as_stored = (dict(row.declaration), row.mode, row.error)
                if not moved and as_stored == (dict(declaration), mode, error):
                    continue
                changes.append((_app_instance(row), row))
                row.host, row.declaration, row.mode, row.error = (
                    host,
                    dict(declaration),
                    mode,
                    error,
                )
                if moved:
                    row.started_at = at  # a move restarts the instance
                row.updated_at = at
            s.flush()
            for old, new in changes:
                self._outbox(s, events(old, None if new is None else _app_instance(new)))
            kept = s.scalars(
                sa.select(AppInstanceRow)
                .where(AppInstanceRow.host == host)
                .order_by(AppInstanceRow.instance_id)
            )
            return [_app_instance(r) for r in kept]

    def get_app_instance(self, instance_id: str) -> AppInstance | None:
        with self._read() as s:
            row = s.get(AppInstanceRow, instance_id)
            return None if row is None else _app_instance(row)

    def list_app_instances(
        self, *, host: str | None = None, episode_open: bool | None = None, limit: int = 10000
    ) -> list[AppInstance]:
        query = sa.select(AppInstanceRow)
        if host is not None:
            query = query.where(AppInstanceRow.host == host)
        if episode_open is not None:
            query = query.where(AppInstanceRow.episode_open == episode_open)
        query = query.order_by(AppInstanceRow.instance_id).limit(limit)
        with self._read() as s:
            return [_app_instance(r) for r in s.scalars(query)]

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
        with self._write() as s:
            row = self._locked_row(s, instance_id)
            if reported_at is not None and reported_at <= row.reported_at:
                return _app_instance(row)  # a retried or reordered older report
            old = _app_instance(row)
            row.checks = {**row.checks, **{name: _to_json(c) for name, c in checks.items()}}
            if reported_at is not None:
                row.reported_at = reported_at
            if last_beat_at is not None:
                # calls recorded out of order do not take the last heartbeat back
                row.last_beat_at = max(last_beat_at, row.last_beat_at or last_beat_at)
            row.updated_at = at
            s.flush()
            self._outbox(s, events(old))
            return _app_instance(row)

    def update_app_episode(
        self,
        instance_id: str,
        episode: AppEpisode | None,
        *,
        at: float,
        started_at: float | None = None,
        events: Sequence[Event] = (),
    ) -> AppInstance:
        # _write refuses it (StaleEpoch, nothing written) under a stale owner's token.
        with self._write(events) as s:
            row = self._locked_row(s, instance_id)
            row.episode = None if episode is None else _to_json(episode)
            row.episode_open = episode is not None and episode.open
            if started_at is not None:
                row.started_at = started_at
            row.updated_at = at
            s.flush()
            return _app_instance(row)

    @staticmethod
    def _locked_row(s: Session, instance_id: str) -> AppInstanceRow:
        """The instance's row, once its host's row is locked."""
        host = s.scalar(
            sa.select(AppInstanceRow.host).where(AppInstanceRow.instance_id == instance_id)
        )
        if host is None:
            raise _missing(instance_id)
        _lock_hosts(s, [host])
        row = s.get(AppInstanceRow, instance_id)  # read again: the lock's holder may have moved it
        if row is None:
            raise _missing(instance_id)
        return row
