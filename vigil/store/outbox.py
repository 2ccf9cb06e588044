"""The outbox in SQL: events, the delivery sinks' cursors, dead letters, and webhook
subscriptions (each with its sink).

Events are written by every aggregate's writes (``SessionBase._write``); this module
reads them and keeps the sinks. ``SqlOutbox`` implements ``OutboxStore``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import takewhile

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vigil.model import DeadLetter, Event, SinkState, Subscription
from vigil.store.base import AlreadyExists, NotFoundError, OutboxStore
from vigil.store.mapping import record_of
from vigil.store.rows import DeadLetterRow, EventRow, SinkRow, SubscriptionRow
from vigil.store.session import SessionBase


class SqlOutbox(SessionBase, OutboxStore):
    """Events, sinks, dead letters and subscriptions."""

    # --- the outbox ---------------------------------------------------------------------

    def append_events(self, events: Sequence[Event]) -> None:
        with self._write(events):
            pass

    def list_events(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        host: str | None = None,
        project_id: str | None = None,
    ) -> list[Event]:
        with self._read() as s:
            query = sa.select(EventRow).where(EventRow.seq > after)
            if host is not None:
                query = query.where(EventRow.host == host)
            if project_id is not None:
                query = query.where(EventRow.project_id == project_id)
            rows = s.scalars(query.order_by(EventRow.seq).limit(limit))
            return [record_of(Event, r) for r in rows]

    def last_event_seq(self) -> int:
        with self._read() as s:
            return int(s.scalar(sa.select(sa.func.max(EventRow.seq))) or 0)

    def prune_events(self, *, before: float, limit: int = 1000) -> int:
        with self._write() as s:
            delivered = s.scalar(sa.select(sa.func.min(SinkRow.cursor)))
            if delivered is None:  # no sink: nothing waits for any event
                delivered = s.scalar(sa.select(sa.func.max(EventRow.seq))) or 0
            oldest = s.execute(
                sa.select(EventRow.seq, EventRow.timestamp)
                .where(EventRow.seq <= delivered)
                .order_by(EventRow.seq)
                .limit(limit)
            ).all()
            gone = list(takewhile(lambda row: row.timestamp < before, oldest))
            if gone:
                s.execute(sa.delete(EventRow).where(EventRow.seq <= gone[-1].seq))
            return len(gone)

    def ensure_sink(self, name: str) -> SinkState:
        try:
            with self._write() as s:
                row = s.get(SinkRow, name, with_for_update=True)
                if row is None:
                    row = self._new_sink(s, name)
                return record_of(SinkState, row)
        except IntegrityError:  # another server created it at the same moment: it is there
            with self._read() as s:
                return record_of(SinkState, s.get_one(SinkRow, name))

    @staticmethod
    def _new_sink(s: Session, name: str) -> SinkRow:
        # A new sink starts at the end: it is not sent the history before it existed.
        end = s.scalar(sa.select(sa.func.max(EventRow.seq))) or 0
        row = SinkRow(name=name, cursor=end, attempts=0, next_attempt_at=0.0, last_error="")
        s.add(row)
        s.flush()
        return row

    def get_sink(self, name: str) -> SinkState:
        with self._read() as s:
            row = s.get(SinkRow, name)
            if row is None:
                raise NotFoundError(f"sink {name!r} does not exist")
            return record_of(SinkState, row)

    def sink_delivered(self, name: str, seq: int) -> None:
        with self._write() as s:
            row = s.get_one(SinkRow, name, with_for_update=True)
            row.cursor = max(row.cursor, seq)
            row.attempts, row.next_attempt_at, row.last_error = 0, 0.0, ""

    def sink_failed(self, name: str, *, attempts: int, next_attempt_at: float, error: str) -> None:
        with self._write() as s:
            row = s.get_one(SinkRow, name, with_for_update=True)
            row.attempts, row.next_attempt_at, row.last_error = attempts, next_attempt_at, error

    def dead_letter(self, name: str, event: Event, *, attempts: int, error: str, at: float) -> None:
        with self._write() as s:
            row = s.get_one(SinkRow, name, with_for_update=True)
            s.add(
                DeadLetterRow(
                    sink=name,
                    event_seq=event.seq,
                    event_id=event.id,
                    event_type=event.event_type,
                    attempts=attempts,
                    error=error,
                    at=at,
                )
            )
            row.cursor = max(row.cursor, event.seq)
            row.attempts, row.next_attempt_at, row.last_error = 0, 0.0, error

    def list_dead_letters(self, *, sink: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        with self._read() as s:
            query = sa.select(DeadLetterRow)
            if sink is not None:
                query = query.where(DeadLetterRow.sink == sink)
            rows = s.scalars(query.order_by(DeadLetterRow.id.desc()).limit(limit))
            return [record_of(DeadLetter, r) for r in rows]

    # --- webhook subscriptions ------------------------------------------------------------

    def create_subscription(self, subscription: Subscription, *, sink: str) -> Subscription:
        with self._write() as s:
            row = SubscriptionRow(
                name=subscription.name,
                url=subscription.url,
                secret=subscription.secret,
                event_types=list(subscription.event_types),
                created_at=subscription.created_at,
                project_id=subscription.project_id,
            )
            s.add(row)
            try:
                s.flush()
            except IntegrityError:
                raise AlreadyExists(f"subscription {subscription.name!r} already exists") from None
            if s.get(SinkRow, sink) is None:
                self._new_sink(s, sink)
            return record_of(Subscription, row)

    def list_subscriptions(self, *, project_id: str | None = None) -> list[Subscription]:
        query = sa.select(SubscriptionRow).order_by(SubscriptionRow.name)
        if project_id is not None:
            query = query.where(SubscriptionRow.project_id == project_id)
        with self._read() as s:
            rows = s.scalars(query)
            return [record_of(Subscription, r) for r in rows]

    def get_subscription(self, name: str) -> Subscription:
        with self._read() as s:
            row = s.scalar(sa.select(SubscriptionRow).where(SubscriptionRow.name == name))
            if row is None:
                raise NotFoundError(f"subscription {name!r} does not exist")
            return record_of(Subscription, row)

    def delete_subscription(self, name: str, *, sink: str) -> None:
        with self._write() as s:
            row = s.scalar(sa.select(SubscriptionRow).where(SubscriptionRow.name == name))
            if row is None:
                raise NotFoundError(f"subscription {name!r} does not exist")
            s.delete(row)
            s.execute(sa.delete(SinkRow).where(SinkRow.name == sink))
