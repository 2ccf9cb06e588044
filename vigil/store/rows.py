"""The tables of vigil's store, as SQLAlchemy ORM rows on one ``Base``.

One schema for SQLite (embedded, single server), PostgreSQL and MariaDB/MySQL.
``vigil/store/migrations`` creates these tables (``vigil.store.db.upgrade``); the test
that the migrated schema matches ``Base.metadata`` keeps the two in step. The rows are
the store's own: the SQL modules of ``vigil.store`` turn them into ``vigil.model``
records (``vigil.store.mapping``) and nothing outside the store sees them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

_NAME = 255  # names and identifiers (hosts, segments, instances)
_ENUM = 32  # enumeration values, stored as their string value


class Base(DeclarativeBase):
    # Named constraints, so that later migrations can address them on every backend.
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


# MySQL/MariaDB: utf8mb4 for any text, and a binary collation so that names compare and
# sort exactly as on PostgreSQL and SQLite ("node1" and "Node1" are different hosts).
# SQLite: AUTOINCREMENT, so that a deleted row's integer id is never given again (an old
# client's id must not address a new segment; PostgreSQL and MariaDB sequences never
# reuse). It only applies to a single integer primary key; migration 0007.
_MYSQL_TABLE: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "sqlite_autoincrement": True,
}


class SegmentRow(Base):
    __tablename__ = "segments"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(_NAME), unique=True)
    description: Mapped[str] = mapped_column(sa.Text)
    default_policy: Mapped[str] = mapped_column(sa.String(_ENUM))
    max_failed_share: Mapped[float] = mapped_column(sa.Double)
    max_parallel_evacuations: Mapped[int] = mapped_column(sa.Integer)
    paused: Mapped[bool] = mapped_column(sa.Boolean)
    pause_reason: Mapped[str] = mapped_column(sa.Text)


class HostRow(Base):
    __tablename__ = "hosts"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(_NAME), unique=True)
    # Names are immutable once created, so they serve as the foreign keys: every
    # record then reads back without a join.
    segment: Mapped[str] = mapped_column(sa.ForeignKey("segments.name"), index=True)
    state: Mapped[str] = mapped_column(sa.String(_ENUM))
    maintenance: Mapped[bool] = mapped_column(sa.Boolean)
    reserved: Mapped[bool] = mapped_column(sa.Boolean)
    fencing: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)
    state_reason: Mapped[str] = mapped_column(sa.Text)
    state_changed_at: Mapped[float] = mapped_column(sa.Double)
    boot_id: Mapped[str | None] = mapped_column(sa.String(_NAME), default=None)


class InstancePolicyRow(Base):
    __tablename__ = "instance_policies"
    __table_args__ = _MYSQL_TABLE

    instance_id: Mapped[str] = mapped_column(sa.String(_NAME), primary_key=True)
    policy: Mapped[str] = mapped_column(sa.String(_ENUM))
    priority: Mapped[int] = mapped_column(sa.Integer)


class InstanceProjectRow(Base):
    """The project of each instance, as Nova last told vigil: what a project member may
    see is decided by it, and every event about the instance is stamped with it."""

    __tablename__ = "instance_projects"
    __table_args__ = _MYSQL_TABLE

    instance_id: Mapped[str] = mapped_column(sa.String(_NAME), primary_key=True)
    project_id: Mapped[str] = mapped_column(sa.String(_NAME), index=True)


class FailureRow(Base):
    __tablename__ = "failures"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    # A host's history goes with it (delete_host refuses while a recovery is active).
    host: Mapped[str] = mapped_column(sa.ForeignKey("hosts.name", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(_ENUM))
    status: Mapped[str] = mapped_column(sa.String(_ENUM), index=True)
    reason: Mapped[str] = mapped_column(sa.Text)
    sources: Mapped[list[str]] = mapped_column(sa.JSON)
    first_seen: Mapped[float] = mapped_column(sa.Double)
    last_seen: Mapped[float] = mapped_column(sa.Double)
    count: Mapped[int] = mapped_column(sa.Integer)


class RecoveryRow(Base):
    __tablename__ = "recoveries"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    failure_id: Mapped[int] = mapped_column(
        sa.ForeignKey("failures.id", ondelete="CASCADE"), index=True
    )
    host: Mapped[str] = mapped_column(sa.ForeignKey("hosts.name", ondelete="CASCADE"), index=True)
    # The host's segment when the recovery opened; not a foreign key, it is history.
    segment: Mapped[str] = mapped_column(sa.String(_NAME))
    status: Mapped[str] = mapped_column(sa.String(_ENUM), index=True)
    created_at: Mapped[float] = mapped_column(sa.Double)
    started_at: Mapped[float | None] = mapped_column(sa.Double)
    finished_at: Mapped[float | None] = mapped_column(sa.Double)
    reason: Mapped[str] = mapped_column(sa.Text)


class StepRow(Base):
    __tablename__ = "steps"
    # The unique (recovery_id, seq) index also serves the foreign key.
    __table_args__ = (sa.UniqueConstraint("recovery_id", "seq"), _MYSQL_TABLE)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    recovery_id: Mapped[int] = mapped_column(sa.ForeignKey("recoveries.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(sa.Integer)
    kind: Mapped[str] = mapped_column(sa.String(_ENUM))
    status: Mapped[str] = mapped_column(sa.String(_ENUM), index=True)
    instance_id: Mapped[str | None] = mapped_column(sa.String(_NAME))
    instance_name: Mapped[str | None] = mapped_column(sa.String(_NAME))
    priority: Mapped[int] = mapped_column(sa.Integer)
    attempts: Mapped[int] = mapped_column(sa.Integer)
    next_attempt_at: Mapped[float] = mapped_column(sa.Double)
    started_at: Mapped[float | None] = mapped_column(sa.Double)
    finished_at: Mapped[float | None] = mapped_column(sa.Double)
    detail: Mapped[str] = mapped_column(sa.Text)
    result: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    target_host: Mapped[str | None] = mapped_column(sa.String(_NAME))
    # An evacuation's input: its instance's status before the failure (migration 0008).
    status_before: Mapped[str | None] = mapped_column(sa.String(_ENUM))
    # The owner's epoch the step was last started under (migration 0011).
    epoch: Mapped[int | None] = mapped_column(sa.Integer)


class ControlRow(Base):
    __tablename__ = "control"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    paused: Mapped[bool] = mapped_column(sa.Boolean)
    reason: Mapped[str] = mapped_column(sa.Text)
    changed_at: Mapped[float] = mapped_column(sa.Double)


CONTROL_ID = 1  # the control table holds one row


class EventRow(Base):
    """The transactional outbox: written in the transaction of the change it reports;
    ``seq`` is the delivery order."""

    __tablename__ = "events"
    __table_args__ = _MYSQL_TABLE

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    event_type: Mapped[str] = mapped_column(sa.String(_NAME))
    timestamp: Mapped[float] = mapped_column(sa.Double)
    host: Mapped[str | None] = mapped_column(sa.String(_NAME), index=True)
    instance_id: Mapped[str | None] = mapped_column(sa.String(_NAME))
    priority: Mapped[str] = mapped_column(sa.String(_ENUM))
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    project_id: Mapped[str | None] = mapped_column(sa.String(_NAME), index=True, default=None)


class SinkRow(Base):
    __tablename__ = "sinks"
    __table_args__ = _MYSQL_TABLE

    name: Mapped[str] = mapped_column(sa.String(_NAME), primary_key=True)
    cursor: Mapped[int] = mapped_column(sa.Integer)
    attempts: Mapped[int] = mapped_column(sa.Integer)
    next_attempt_at: Mapped[float] = mapped_column(sa.Double)
    last_error: Mapped[str] = mapped_column(sa.Text)


class DeadLetterRow(Base):
    __tablename__ = "dead_letters"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    sink: Mapped[str] = mapped_column(sa.String(_NAME), index=True)
    event_seq: Mapped[int] = mapped_column(sa.Integer)
    event_id: Mapped[str] = mapped_column(sa.String(64))
    event_type: Mapped[str] = mapped_column(sa.String(_NAME))
    attempts: Mapped[int] = mapped_column(sa.Integer)
    error: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[float] = mapped_column(sa.Double)


class SubscriptionRow(Base):
    __tablename__ = "subscriptions"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(_NAME), unique=True)
    url: Mapped[str] = mapped_column(sa.Text)
    secret: Mapped[str] = mapped_column(sa.Text)
    event_types: Mapped[list[str]] = mapped_column(sa.JSON)
    created_at: Mapped[float] = mapped_column(sa.Double)
    project_id: Mapped[str | None] = mapped_column(sa.String(_NAME), default=None)


class GuestFailureRow(Base):
    """A guest failure episode of one instance (``vigil.model.InstanceFailure``)."""

    __tablename__ = "guest_failures"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    instance_id: Mapped[str] = mapped_column(sa.String(_NAME), index=True)
    host: Mapped[str] = mapped_column(sa.String(_NAME))  # history: not a foreign key
    kind: Mapped[str] = mapped_column(sa.String(_ENUM))
    status: Mapped[str] = mapped_column(sa.String(_ENUM), index=True)
    reason: Mapped[str] = mapped_column(sa.Text)
    first_seen: Mapped[float] = mapped_column(sa.Double)
    last_seen: Mapped[float] = mapped_column(sa.Double)
    count: Mapped[int] = mapped_column(sa.Integer)
    seen_count: Mapped[int] = mapped_column(sa.Integer)
    occurrences: Mapped[list[float]] = mapped_column(sa.JSON)
    detail: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    restarts: Mapped[int] = mapped_column(sa.Integer)
    next_restart_at: Mapped[float] = mapped_column(sa.Double)
    action_status: Mapped[str | None] = mapped_column(sa.String(_ENUM))
    action_attempts: Mapped[int] = mapped_column(sa.Integer)
    action_detail: Mapped[str] = mapped_column(sa.Text)
    changed_at: Mapped[float] = mapped_column(sa.Double)


class GuestReportRow(Base):
    """The id of every agent report received: a retried report is recorded once."""

    __tablename__ = "guest_reports"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    failure_id: Mapped[int] = mapped_column(
        sa.ForeignKey("guest_failures.id", ondelete="CASCADE"), index=True
    )
    received_at: Mapped[float] = mapped_column(sa.Double)


class HostServicesRow(Base):
    """The latest service report of a host's agent (``vigil.model.HostServices``)."""

    __tablename__ = "host_services"
    __table_args__ = _MYSQL_TABLE

    host: Mapped[str] = mapped_column(
        sa.ForeignKey("hosts.name", ondelete="CASCADE"), primary_key=True
    )
    # {name: {"up": bool, "since": float, "detail": str}}
    services: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    reported_at: Mapped[float] = mapped_column(sa.Double)
    hold: Mapped[str] = mapped_column(sa.String(_ENUM))
    hold_reason: Mapped[str] = mapped_column(sa.Text)
    changed_at: Mapped[float] = mapped_column(sa.Double)
    # The keeper's failed attempts at its pending action, and when to try again (0009).
    action_attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(sa.Double, default=0.0)


class RequestRow(Base):
    """An operator's request carried out by the engine's workers (migration 0010)."""

    __tablename__ = "operator_requests"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(_ENUM))
    target: Mapped[str] = mapped_column(sa.String(_NAME))
    host: Mapped[str | None] = mapped_column(sa.String(_NAME))
    status: Mapped[str] = mapped_column(sa.String(_ENUM), index=True)
    reason: Mapped[str] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(sa.Integer)
    next_attempt_at: Mapped[float] = mapped_column(sa.Double)
    created_at: Mapped[float] = mapped_column(sa.Double)
    finished_at: Mapped[float | None] = mapped_column(sa.Double)
    detail: Mapped[str] = mapped_column(sa.Text)


class SegmentOwnerRow(Base):
    """Who owns each segment and its epoch, the fencing token (migration 0011)."""

    __tablename__ = "segment_owners"
    __table_args__ = _MYSQL_TABLE

    segment: Mapped[str] = mapped_column(sa.String(_NAME), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(_NAME))
    epoch: Mapped[int] = mapped_column(sa.Integer)
    taken_at: Mapped[float] = mapped_column(sa.Double)


class RevisionRow(Base):
    """The store's change counter, one row (migration 0012): ``n`` rises with every
    committed write to hosts, their recoveries and steps, segments or the control row;
    ``full`` rises when a change cannot be told host by host (a host deleted, steps
    requeued in bulk). Readers that keep these in memory (``vigil.engine.book``) read
    again only what changed since the revision they hold."""

    __tablename__ = "revisions"
    __table_args__ = _MYSQL_TABLE

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(sa.BigInteger)
    full: Mapped[int] = mapped_column(sa.BigInteger)


class HostRevisionRow(Base):
    """The revision of the last change to each host, its recoveries or their steps."""

    __tablename__ = "host_revisions"
    __table_args__ = _MYSQL_TABLE

    host: Mapped[str] = mapped_column(sa.String(_NAME), primary_key=True)
    revision: Mapped[int] = mapped_column(sa.BigInteger, index=True)


class AppInstanceRow(Base):
    """An instance with application checks (``vigil.model.AppInstance``, migration 0013):
    its declaration, the state of its checks and its current or last episode."""

    __tablename__ = "app_instances"
    __table_args__ = _MYSQL_TABLE

    instance_id: Mapped[str] = mapped_column(sa.String(_NAME), primary_key=True)
    # Not a foreign key: a row with an open episode outlives its instance's place there.
    host: Mapped[str] = mapped_column(sa.String(_NAME), index=True)
    declaration: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    mode: Mapped[str] = mapped_column(sa.String(_ENUM))
    error: Mapped[str] = mapped_column(sa.Text)
    # {name: {"health": str, "failures": int, "last_run_at": float | None,
    #         "detail": str, "since": float | None}}
    checks: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    started_at: Mapped[float] = mapped_column(sa.Double)
    last_beat_at: Mapped[float | None] = mapped_column(sa.Double)
    reported_at: Mapped[float] = mapped_column(sa.Double)
    # Every field of vigil.model.AppEpisode (enumerations as their values), or NULL.
    episode: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    # The episode is there and open: what the engine's scan of open episodes selects by.
    episode_open: Mapped[bool] = mapped_column(sa.Boolean, index=True)
    updated_at: Mapped[float] = mapped_column(sa.Double)


class ClusterRow(Base):
    """An in-guest cluster (``vigil.model.Cluster``, migration 0015): what was asked and
    the cloud resources made for it; its members as a JSON list (a cluster has at most a
    few: they are read and written with it)."""

    __tablename__ = "clusters"
    __table_args__ = (sa.UniqueConstraint("project_key", "name"), _MYSQL_TABLE)

    id: Mapped[str] = mapped_column(sa.String(_NAME), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(_NAME))
    project_id: Mapped[str | None] = mapped_column(sa.String(_NAME), index=True)
    # project_id or "" — a unique constraint over a NULL column would not hold
    project_key: Mapped[str] = mapped_column(sa.String(_NAME))
    status: Mapped[str] = mapped_column(sa.String(_ENUM))
    # size, image, flavor, network, policy, want_vip: what was asked
    spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    # network_id, vip, vip_port_id, server_group_id, security_group_id: what was made
    resources: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    # [{"name", "address", "port_id", "instance_id"}]
    members: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)
    detail: Mapped[str] = mapped_column(sa.Text)
    authkey: Mapped[str] = mapped_column(sa.Text)
    report: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    created_at: Mapped[float] = mapped_column(sa.Double)
    updated_at: Mapped[float] = mapped_column(sa.Double)
