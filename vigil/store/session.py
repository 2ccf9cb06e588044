"""The transactions every part of the SQL store runs in, and the helpers they share.

``SessionBase`` holds the engine and two session factories; each aggregate's mixin
(``vigil.store.hosts``, ``failures``, ``steps``, ``recoveries``, ``guests``,
``host_services``, ``apps``, ``outbox``) builds on it, and ``vigil.store.sql.SqlStore`` is
their composition.

Concurrency. Every public method is one transaction in its own session (``_read`` or
``_write``), so one store may be shared by any number of threads; a write's events go
to the outbox in the same transaction. Writes that concern a host's failures,
recoveries or steps first lock that host's row (``SELECT ... FOR UPDATE``,
``_host_row(..., lock=True)``): this serialises them per host — two observers cannot
both create "the" failure of a host, two planners cannot hand out the same step number
— and gives every such write the same lock order, so they cannot deadlock one another.
Servers run writes at READ COMMITTED, so a statement issued after the lock is granted
sees what the previous holder committed; reads run at REPEATABLE READ for a consistent
view across the queries of one call. SQLite has no row locks: its writes start with
``BEGIN IMMEDIATE``, which takes the database's write lock up front (waiting up to
``busy_timeout``) instead of failing when a reader later tries to write. The threads of
one process also queue for that lock on a lock of their own (``_one_writer``): SQLite's
busy handler waits by sleeping, up to 100 ms at a time, so a hundred threads writing at
once (a rack failure's evacuations) would leave the database idle between writes; a
Python lock hands it over as soon as it is free. Another process (``vigil`` commands on
the same file) still meets ``busy_timeout``.

Fencing tokens. A segment's owner makes its writes inside ``acting_as(token)``: each
write transaction then first reads the segment's row of ``segment_owners`` with a shared
lock (``FOR SHARE``) and refuses (``StaleEpoch``, nothing written) unless the token's
owner and epoch are still the segment's. A takeover raises the epoch with an UPDATE of
that row, which waits for the old owner's writes in flight and makes every later one
fail: the conditional write that makes a server which lost its lease, and has not
noticed yet, unable to record — hence to start — anything. The token is carried by a
context variable (``vigil.store.base.acting_as``), not by an argument of each of the
store's forty writing methods, so that no write of an owner's code path can forget it;
the reactions enter it around each handler and each worker job (``vigil.engine``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from vigil.model import (
    HOST_TRANSITIONS,
    Event,
    HostState,
    OwnerToken,
    RecoveryStatus,
    check_transition,
)
from vigil.store.base import NotFoundError, StaleEpoch, current_token
from vigil.store.db import _SQLITE_IMMEDIATE, make_engine, unavailable
from vigil.store.rows import (
    Base,
    ControlRow,
    EventRow,
    HostRevisionRow,
    HostRow,
    InstanceProjectRow,
    RecoveryRow,
    RevisionRow,
    SegmentOwnerRow,
    SegmentRow,
    StepRow,
)

ACTIVE_RECOVERY = (RecoveryStatus.PENDING, RecoveryStatus.RUNNING, RecoveryStatus.PAUSED)


_T = TypeVar("_T")


class SessionBase:
    """The engine and the read and write transactions; the row helpers every aggregate
    uses (all run inside the caller's transaction)."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        idle_transaction_timeout: float | None = None,
        pool: tuple[int, int, float] | None = None,
    ) -> None:
        self._engine = make_engine(
            url, echo=echo, idle_transaction_timeout=idle_transaction_timeout, pool=pool
        )
        self._projects_written: dict[str, str] = {}  # instance -> project, as last written
        reader: Engine
        writer: Engine
        self._one_writer: AbstractContextManager[Any] = nullcontext()
        if self._engine.dialect.name == "sqlite":
            reader = self._engine
            writer = self._engine.execution_options(**{_SQLITE_IMMEDIATE: True})
            self._one_writer = threading.RLock()
        else:
            reader = self._engine.execution_options(isolation_level="REPEATABLE READ")
            writer = self._engine
        self._reads = sessionmaker(reader, expire_on_commit=False)
        self._writes = sessionmaker(writer, expire_on_commit=False)
        event.listen(self._writes, "before_flush", _note_changes)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with unavailable(), self._reads.begin() as session:
            yield session

    @contextmanager
    def _write(self, events: Sequence[Event] = ()) -> Iterator[Session]:
        """A write transaction; ``events`` go to the outbox in the same transaction."""
        with self._one_writer, unavailable(), self._writes.begin() as session:
            token = current_token()
            if token is not None:
                self._check_token(session, token)
            yield session
            if events:
                self._outbox(session, events)
            session.flush()
            _raise_revision(session)

    @staticmethod
    def _check_token(s: Session, token: OwnerToken) -> None:
        """Refuse the write unless ``token`` is the segment's current one; the shared
        lock holds a takeover's UPDATE of the epoch until this transaction ends."""
        row = s.scalar(
            sa.select(SegmentOwnerRow)
            .where(SegmentOwnerRow.segment == token.segment)
            .with_for_update(read=True)
        )
        if row is None or row.owner != token.owner or row.epoch != token.epoch:
            now = f"{row.owner} holds epoch {row.epoch}" if row is not None else "no owner"
            raise StaleEpoch(
                f"segment {token.segment}: {token.owner}'s epoch {token.epoch} is stale "
                f"({now}); nothing written"
            )

    @staticmethod
    def _outbox(s: Session, events: Sequence[Event]) -> None:
        """Events computed inside a transaction (they name a row it just created). An
        event about an instance is stamped with the instance's project, as vigil last
        learnt it from Nova (``InstanceProjectRow``), unless it carries one."""
        unknown = {e.instance_id for e in events if e.instance_id and e.project_id is None}
        projects: dict[str, str] = {}
        if unknown:
            query = sa.select(InstanceProjectRow.instance_id, InstanceProjectRow.project_id)
            for chunk in chunks(sorted(unknown)):
                rows = s.execute(query.where(InstanceProjectRow.instance_id.in_(chunk)))
                projects.update((r.instance_id, r.project_id) for r in rows)
        s.add_all(
            EventRow(
                id=e.id,
                event_type=e.event_type,
                timestamp=e.timestamp,
                host=e.host,
                instance_id=e.instance_id,
                priority=e.priority,
                payload=dict(e.payload),
                project_id=e.project_id or projects.get(e.instance_id or ""),
            )
            for e in events
        )

    @staticmethod
    def _host_row(s: Session, name: str, *, lock: bool = False) -> HostRow:
        query = sa.select(HostRow).where(HostRow.name == name)
        row = s.scalar(query.with_for_update() if lock else query)
        if row is None:
            raise NotFoundError(f"host {name!r} does not exist")
        return row

    @staticmethod
    def _move_host(row: HostRow, state: HostState, *, reason: str, at: float) -> None:
        current = HostState(row.state)
        check_transition(HOST_TRANSITIONS, current, state, what=f"host {row.name}")
        if current != state:
            row.state = str(state)
            row.state_reason = reason
            row.state_changed_at = at


# --- change revisions -----------------------------------------------------------------
#
# Every write transaction that changes a host, a recovery, a step, a segment or the
# control row raises the store's revision (``revisions.n``) as its last statement, and
# records it as the revision of each host it concerned (``host_revisions``), so that a
# reader holding revision r reads again only the hosts changed since (``changes_since``).
# The counter's row is locked by that last statement until the commit: writers take
# revisions in commit order (a reader never sees revision r+1 committed before r), and
# as ``host_revisions`` rows are only written under that lock no two writers can wait on
# each other there. What cannot be told host by host (a host deleted, steps requeued in
# bulk) raises ``full`` too: readers then read everything again.

_SEGMENT_WIDE = (SegmentRow, ControlRow)


def _note_changes(session: Session, _context: Any, _instances: Any) -> None:
    """Before each flush of a write session: which hosts its changes concern."""
    info = session.info
    touched: set[str] = info.setdefault("touched", set())
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, HostRow):
            touched.add(obj.name)
        elif isinstance(obj, RecoveryRow):
            touched.add(obj.host)
        elif isinstance(obj, StepRow):
            info.setdefault("recoveries", set()).add(obj.recovery_id)
        elif isinstance(obj, _SEGMENT_WIDE):
            info["changed"] = True
    for obj in session.deleted:
        if isinstance(obj, (HostRow, RecoveryRow, StepRow)):
            info["full"] = True
        elif isinstance(obj, _SEGMENT_WIDE):
            info["changed"] = True


def note_change(session: Session, *, full: bool = False) -> None:
    """A write that bypasses the ORM (a bulk UPDATE, an upsert) changed something the
    revision covers: ``full`` when it cannot name the hosts it concerned."""
    session.info["changed"] = True
    if full:
        session.info["full"] = True


def _raise_revision(session: Session) -> None:
    info = session.info
    touched: set[str] = info.pop("touched", set())
    recoveries: set[int] = info.pop("recoveries", set())
    full = bool(info.pop("full", False))
    changed = bool(info.pop("changed", False))
    if not (touched or recoveries or full or changed):
        return
    if recoveries:
        touched |= set(
            session.scalars(sa.select(RecoveryRow.host).where(RecoveryRow.id.in_(recoveries)))
        )
    bump = (
        sa.update(RevisionRow)
        .where(RevisionRow.id == 1)
        .values(n=RevisionRow.n + 1, full=RevisionRow.full + (1 if full else 0))
    )
    if session.connection().execute(bump).rowcount == 0:  # a schema made without 0012's row
        session.add(RevisionRow(id=1, n=1, full=1))
        session.flush()
    revision = session.scalar(sa.select(RevisionRow.n).where(RevisionRow.id == 1))
    for host in sorted(touched):
        upsert(session, HostRevisionRow, {"host": host, "revision": revision})
    info.pop("touched", None)  # the flush above noted nothing of interest


# --- field updates --------------------------------------------------------------------


def chunks(items: Sequence[_T], size: int = 500) -> Iterator[Sequence[_T]]:
    """``items`` in slices short enough for an ``IN (...)`` on every backend."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def same(value: Any) -> Any:
    return value


def enum_value(enum_type: Callable[[Any], Any]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        return str(enum_type(value))  # ValueError for a value the enumeration lacks

    return convert


def converted(
    changes: Mapping[str, Any], fields: Mapping[str, Callable[[Any], Any]], what: str
) -> dict[str, Any]:
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {', '.join(unknown)}")
    return {name: fields[name](value) for name, value in changes.items()}


def upsert(s: Session, model: type[Base], values: dict[str, Any]) -> None:
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
