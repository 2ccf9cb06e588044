"""What Masakari's API knows beyond vigil's model, in tables of their own.

vigil's segments and hosts are the records; Masakari's extra fields (a segment's uuid,
recovery method, service type and ``enabled``; a host's uuid, type and control
attributes) and its notifications live here, keyed by the vigil segment or host name,
so that vigil's own store and API need not know Masakari exists. Tables come from
migration 0003. Each method is one transaction; timestamps are passed in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from vigil.store.db import _SQLITE_IMMEDIATE, make_engine, unavailable
from vigil.store.rows import Base

# On vigil's metadata, so that the check that the migrated schema matches the models
# (tests/store) sees these tables too.
_META = Base.metadata
SEGMENTS = sa.Table(
    "masakari_segments",
    _META,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("recovery_method", sa.String(32), nullable=False),
    sa.Column("service_type", sa.String(255), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=True),
)
HOSTS = sa.Table(
    "masakari_hosts",
    _META,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("control_attributes", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=True),
)
NOTIFICATIONS = sa.Table(
    "masakari_notifications",
    _META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uuid", sa.String(36), nullable=False, unique=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("source_host_uuid", sa.String(36), nullable=False),
    sa.Column("segment_uuid", sa.String(36), nullable=False),
    sa.Column("generated_time", sa.Double, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("recovery_id", sa.Integer, nullable=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=True),
    sa.Index("ix_masakari_notifications_host", "hostname", "type"),
    sqlite_autoincrement=True,  # ids never reused (migration 0007)
)


@dataclass(frozen=True)
class SegmentExtra:
    uuid: str
    name: str  # the vigil segment
    recovery_method: str = "auto"
    service_type: str = "COMPUTE"
    enabled: bool = True
    created_at: float = 0.0
    updated_at: float | None = None


@dataclass(frozen=True)
class HostExtra:
    uuid: str
    name: str  # the vigil host
    type: str = ""
    control_attributes: str = ""
    created_at: float = 0.0
    updated_at: float | None = None


@dataclass(frozen=True)
class Notification:
    uuid: str
    type: str  # COMPUTE_HOST, VM, PROCESS
    hostname: str
    source_host_uuid: str
    segment_uuid: str
    generated_time: float
    payload: Mapping[str, str]
    status: str  # as recorded; the API derives the live status from the recovery
    created_at: float
    message: str = ""
    recovery_id: int | None = None
    updated_at: float | None = None
    id: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


class MasakariRecords:
    """The masakari_* tables of vigil's database (the same URL as vigil's store)."""

    def __init__(self, url: str) -> None:
        self._engine = make_engine(url)
        # Writers take SQLite's write lock up front (as vigil's store does): a read that
        # upgrades to a write inside a transaction would fail "database is locked".
        self._writer = (
            self._engine.execution_options(**{_SQLITE_IMMEDIATE: True})
            if self._engine.dialect.name == "sqlite"
            else self._engine
        )

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        with unavailable(), self._engine.connect() as c:
            yield c

    @contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        with unavailable(), self._writer.begin() as c:
            yield c

    # --- segments ---------------------------------------------------------------------
    def segments(self) -> dict[str, SegmentExtra]:
        with self._reading() as c:
            rows = c.execute(sa.select(SEGMENTS)).mappings().all()
        return {r["name"]: SegmentExtra(**r) for r in rows}

    def put_segment(self, extra: SegmentExtra) -> SegmentExtra:
        """Insert or replace (by name); an existing row keeps its uuid and created_at."""
        try:
            return self._put_segment(extra)
        except sa.exc.IntegrityError:  # another request adopted the same record first
            return self._put_segment(extra)

    def _put_segment(self, extra: SegmentExtra) -> SegmentExtra:
        with self._writing() as c:
            old = c.execute(sa.select(SEGMENTS).where(SEGMENTS.c.name == extra.name)).mappings()
            row = old.first()
            if row is None:
                c.execute(sa.insert(SEGMENTS).values(**extra.__dict__))
                return extra
            kept = replace(extra, uuid=row["uuid"], created_at=row["created_at"])
            values = {k: v for k, v in kept.__dict__.items() if k != "uuid"}
            c.execute(sa.update(SEGMENTS).where(SEGMENTS.c.uuid == row["uuid"]).values(**values))
            return kept

    def delete_segment(self, name: str) -> None:
        with self._writing() as c:
            c.execute(sa.delete(SEGMENTS).where(SEGMENTS.c.name == name))

    # --- hosts ------------------------------------------------------------------------
    def hosts(self) -> dict[str, HostExtra]:
        with self._reading() as c:
            rows = c.execute(sa.select(HOSTS)).mappings().all()
        return {r["name"]: HostExtra(**r) for r in rows}

    def put_host(self, extra: HostExtra) -> HostExtra:
        """Insert or replace (by name); an existing row keeps its uuid and created_at."""
        try:
            return self._put_host(extra)
        except sa.exc.IntegrityError:  # another request adopted the same record first
            return self._put_host(extra)

    def _put_host(self, extra: HostExtra) -> HostExtra:
        with self._writing() as c:
            row = c.execute(sa.select(HOSTS).where(HOSTS.c.name == extra.name)).mappings().first()
            if row is None:
                c.execute(sa.insert(HOSTS).values(**extra.__dict__))
                return extra
            kept = replace(extra, uuid=row["uuid"], created_at=row["created_at"])
            values = {k: v for k, v in kept.__dict__.items() if k != "uuid"}
            c.execute(sa.update(HOSTS).where(HOSTS.c.uuid == row["uuid"]).values(**values))
            return kept

    def rename_host(self, old: str, new: str) -> None:
        with self._writing() as c:
            c.execute(sa.update(HOSTS).where(HOSTS.c.name == old).values(name=new))

    def delete_host(self, name: str) -> None:
        with self._writing() as c:
            c.execute(sa.delete(HOSTS).where(HOSTS.c.name == name))

    # --- notifications ----------------------------------------------------------------
    def add_notification(self, n: Notification) -> Notification:
        values = {k: v for k, v in n.__dict__.items() if k not in ("id", "extra")}
        values["payload"] = dict(n.payload)
        with self._writing() as c:
            new_id = c.execute(sa.insert(NOTIFICATIONS).values(**values)).inserted_primary_key
        return replace(n, id=int(new_id[0]) if new_id else 0)

    def notifications(self, *, hostname: str | None = None) -> list[Notification]:
        query = sa.select(NOTIFICATIONS).order_by(NOTIFICATIONS.c.id)
        if hostname is not None:
            query = query.where(NOTIFICATIONS.c.hostname == hostname)
        with self._reading() as c:
            rows = c.execute(query).mappings().all()
        return [Notification(**r) for r in rows]

    def get_notification(self, uuid: str) -> Notification | None:
        with self._reading() as c:
            row = (
                c.execute(sa.select(NOTIFICATIONS).where(NOTIFICATIONS.c.uuid == uuid))
                .mappings()
                .first()
            )
        return Notification(**row) if row else None

    def link_recovery(self, uuid: str, recovery_id: int, *, at: float) -> None:
        with self._writing() as c:
            c.execute(
                sa.update(NOTIFICATIONS)
                .where(NOTIFICATIONS.c.uuid == uuid)
                .values(recovery_id=recovery_id, updated_at=at)
            )
