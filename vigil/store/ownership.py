"""Segment ownership in SQL: the epoch of each segment, raised at each takeover.

The check of a token before an owner's writes is in ``vigil.store.session``
(``SessionBase._check_token``): this module only moves the epoch.
"""

from __future__ import annotations

import sqlalchemy as sa

from vigil.model import SegmentOwner
from vigil.store.mapping import record_of
from vigil.store.rows import SegmentOwnerRow
from vigil.store.session import SessionBase


class SqlOwnership(SessionBase):
    """``OwnershipStore``."""

    def take_segment(self, segment: str, owner: str, *, at: float) -> SegmentOwner:
        with self._write() as s:
            # The exclusive row lock excludes the previous owner's writes in flight (they
            # hold the row shared); once committed, every later one is refused. NOWAIT:
            # one held by a frozen owner is not waited for (the ownership keeper must
            # go on renewing) — StoreUnavailable, and the keeper tries again next round,
            # by when the database has ended that owner's idle transaction
            # (``database.idle_transaction_timeout``).
            row = s.scalar(
                sa.select(SegmentOwnerRow)
                .where(SegmentOwnerRow.segment == segment)
                .with_for_update(nowait=True)
            )
            if row is None:
                row = SegmentOwnerRow(segment=segment, owner=owner, epoch=1, taken_at=at)
                s.add(row)
            else:
                row.owner, row.epoch, row.taken_at = owner, row.epoch + 1, at
            s.flush()
            return record_of(SegmentOwner, row)

    def list_segment_owners(self) -> list[SegmentOwner]:
        with self._read() as s:
            rows = s.scalars(sa.select(SegmentOwnerRow).order_by(SegmentOwnerRow.segment))
            return [record_of(SegmentOwner, row) for row in rows]
