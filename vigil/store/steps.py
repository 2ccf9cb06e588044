"""A recovery's steps in SQL: started, finished, skipped, requeued after a restart.

``SqlSteps`` has the step methods of ``RecoveryStore`` and the step-row helpers a
recovery's writes use too (``vigil.store.recoveries``): adding steps, moving one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from vigil.model import (
    STEP_TRANSITIONS,
    Event,
    InvalidTransition,
    NewStep,
    OwnerToken,
    Step,
    StepKind,
    StepStatus,
    check_transition,
)
from vigil.store.base import (
    NotFoundError,
    StaleEpoch,
    StoreUnavailable,
    acting_as,
    current_token,
)
from vigil.store.group import GroupCommit
from vigil.store.mapping import record_of
from vigil.store.rows import RecoveryRow, StepRow
from vigil.store.session import SessionBase, chunks, note_change

_TERMINAL_STEP = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED)


@dataclass(frozen=True)
class _Outcome:
    """One ``finish_step`` call, as its caller made it (its owner's token included)."""

    step_id: int
    status: StepStatus
    at: float
    detail: str
    result: dict[str, Any] | None
    next_attempt_at: float | None
    new_steps: tuple[NewStep, ...]
    events: tuple[Event, ...]
    token: OwnerToken | None


class SqlSteps(SessionBase):
    """Steps; part of ``RecoveryStore`` (``SqlRecoveries`` is the whole)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outcomes: GroupCommit[_Outcome, Step] = GroupCommit(self._finish_steps)

    def start_step(self, step_id: int, *, at: float, events: Sequence[Event] = ()) -> Step:
        with self._write(events) as s:
            row = self._lock_step(s, step_id)
            self._move_step(row, StepStatus.RUNNING, expect=StepStatus.PENDING)
            row.attempts += 1
            token = current_token()
            row.epoch = token.epoch if token is not None else None
            if row.started_at is None:
                row.started_at = at
            s.flush()
            return record_of(Step, row)

    def start_steps(
        self, starts: Sequence[tuple[int, Sequence[Event]]], *, at: float
    ) -> list[Step]:
        events_of = dict(starts)
        token = current_token()
        started: list[StepRow] = []
        events: list[Event] = []
        with self._write() as s:
            hosts: set[str] = set()
            for chunk in chunks(sorted(events_of)):
                hosts.update(
                    s.scalars(
                        sa.select(RecoveryRow.host)
                        .join(StepRow, StepRow.recovery_id == RecoveryRow.id)
                        .where(StepRow.id.in_(chunk))
                    )
                )
            for host in sorted(hosts):  # locked in name order, as one by one
                self._host_row(s, host, lock=True)
            for step_id, _ in starts:
                row = s.get(StepRow, step_id)
                if row is None or StepStatus(row.status) != StepStatus.PENDING:
                    continue
                self._move_step(row, StepStatus.RUNNING, expect=StepStatus.PENDING)
                row.attempts += 1
                row.epoch = token.epoch if token is not None else None
                if row.started_at is None:
                    row.started_at = at
                started.append(row)
                events.extend(events_of[step_id])
            if events:
                self._outbox(s, events)
            s.flush()
            return [record_of(Step, row) for row in started]

    def finish_step(
        self,
        step_id: int,
        status: StepStatus,
        *,
        at: float,
        detail: str = "",
        result: Mapping[str, Any] | None = None,
        next_attempt_at: float | None = None,
        new_steps: Sequence[NewStep] = (),
        events: Sequence[Event] = (),
    ) -> Step:
        """Committed together with the outcomes other threads record at the same time
        (``vigil.store.group``): one transaction, one lock of each host, one revision."""
        status = StepStatus(status)
        if status not in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.PENDING):
            raise ValueError(f"finish_step: {status.value} is not an outcome")
        outcome = _Outcome(
            step_id,
            status,
            at,
            detail,
            None if result is None else dict(result),
            next_attempt_at,
            tuple(new_steps),
            tuple(events),
            current_token(),
        )
        return self._outcomes.submit(outcome)

    def _finish_steps(self, outcomes: Sequence[_Outcome]) -> list[Step | BaseException]:
        """A batch of outcomes, one transaction for each owner's token among them (a
        write is checked against its caller's token). A transaction that fails for
        another reason than the store or the token is done again one outcome at a time,
        so that one bad outcome fails only its own caller."""
        results: dict[int, Step | BaseException] = {}
        by_token: dict[OwnerToken | None, list[int]] = {}
        for i, outcome in enumerate(outcomes):
            by_token.setdefault(outcome.token, []).append(i)
        for token, indexes in by_token.items():
            group = [outcomes[i] for i in indexes]
            done: list[Step | BaseException]
            try:
                done = self._finish_group(token, group)
            except (StoreUnavailable, StaleEpoch) as exc:  # the whole group's
                done = [exc] * len(group)
            except Exception as exc:
                done = [exc] if len(group) == 1 else [self._finish_alone(token, o) for o in group]
            results.update(zip(indexes, done, strict=True))
        return [results[i] for i in range(len(outcomes))]

    def _finish_alone(self, token: OwnerToken | None, outcome: _Outcome) -> Step | BaseException:
        try:
            return self._finish_group(token, [outcome])[0]
        except Exception as exc:  # that caller's own error
            return exc

    def _finish_group(
        self, token: OwnerToken | None, outcomes: Sequence[_Outcome]
    ) -> list[Step | BaseException]:
        with acting_as(token), self._write() as s:
            ids = sorted({o.step_id for o in outcomes})
            hosts: set[str] = set()
            for chunk in chunks(ids):
                hosts.update(
                    s.scalars(
                        sa.select(RecoveryRow.host)
                        .join(StepRow, StepRow.recovery_id == RecoveryRow.id)
                        .where(StepRow.id.in_(chunk))
                    )
                )
            for host in sorted(hosts):  # locked in name order, as one by one
                self._host_row(s, host, lock=True)
            rows = {  # read after the locks: as their last writer committed them
                row.id: row
                for chunk in chunks(ids)
                for row in s.scalars(sa.select(StepRow).where(StepRow.id.in_(chunk)))
            }
            done: list[StepRow | BaseException] = []
            for outcome in outcomes:
                row = rows.get(outcome.step_id)
                if row is None:
                    done.append(NotFoundError(f"step {outcome.step_id} does not exist"))
                    continue
                try:
                    self._move_step(row, outcome.status, expect=StepStatus.RUNNING)
                except InvalidTransition as exc:  # nothing of this outcome is written
                    done.append(exc)
                    continue
                self._record_outcome(s, row, outcome)
                done.append(row)
            s.flush()
            return [x if isinstance(x, BaseException) else record_of(Step, x) for x in done]

    def _record_outcome(self, s: Session, row: StepRow, outcome: _Outcome) -> None:
        if outcome.status is StepStatus.PENDING:
            row.next_attempt_at = (
                outcome.at if outcome.next_attempt_at is None else outcome.next_attempt_at
            )
        else:
            row.finished_at = outcome.at
        row.detail = outcome.detail
        if outcome.result is not None:
            row.result = outcome.result
        if outcome.new_steps:
            s.flush()  # an earlier outcome of the batch may have added steps to it
            last = s.scalar(
                sa.select(sa.func.max(StepRow.seq)).where(StepRow.recovery_id == row.recovery_id)
            )
            self._add_steps(
                s,
                row.recovery_id,
                first_seq=(last or 0) + 1,
                steps=outcome.new_steps,
                at=outcome.at,
            )
        if outcome.events:
            self._outbox(s, outcome.events)

    def skip_step(self, step_id: int, *, at: float, detail: str) -> Step:
        with self._write() as s:
            row = self._lock_step(s, step_id)
            self._move_step(row, StepStatus.SKIPPED, expect=StepStatus.PENDING)
            row.finished_at = at
            row.detail = detail
            s.flush()
            return record_of(Step, row)

    def requeue_running_steps(self, *, at: float, segment: str | None = None) -> int:
        with self._write() as s:
            query = sa.update(StepRow).where(StepRow.status == str(StepStatus.RUNNING))
            if segment is not None:
                query = query.where(
                    StepRow.recovery_id.in_(
                        sa.select(RecoveryRow.id).where(RecoveryRow.segment == segment)
                    )
                )
            result = s.connection().execute(
                query.values(status=str(StepStatus.PENDING), next_attempt_at=at)
            )
            if result.rowcount:
                note_change(s, full=True)
            return result.rowcount

    # --- helpers (all run inside the caller's transaction) --------------------------------

    def _lock_step(self, s: Session, step_id: int) -> StepRow:
        """The step, after locking the host its recovery is about."""
        host = s.scalar(
            sa.select(RecoveryRow.host)
            .join(StepRow, StepRow.recovery_id == RecoveryRow.id)
            .where(StepRow.id == step_id)
        )
        if host is None:
            raise NotFoundError(f"step {step_id} does not exist")
        self._host_row(s, host, lock=True)
        return s.get_one(StepRow, step_id)

    @staticmethod
    def _add_steps(
        s: Session, recovery_id: int, *, first_seq: int, steps: Sequence[NewStep], at: float
    ) -> list[StepRow]:
        rows = []
        for seq, new in enumerate(steps, start=first_seq):
            status = StepStatus(new.status)
            rows.append(
                StepRow(
                    recovery_id=recovery_id,
                    seq=seq,
                    kind=str(StepKind(new.kind)),
                    status=str(status),
                    instance_id=new.instance_id,
                    instance_name=new.instance_name,
                    priority=new.priority,
                    attempts=0,
                    next_attempt_at=at,
                    started_at=None,
                    finished_at=at if status in _TERMINAL_STEP else None,
                    detail=new.detail,
                    result={},
                    target_host=new.target_host,
                    status_before=new.status_before,
                )
            )
        s.add_all(rows)
        s.flush()
        return rows

    @staticmethod
    def _move_step(row: StepRow, status: StepStatus, *, expect: StepStatus) -> None:
        current = StepStatus(row.status)
        # Stricter than the table's "same state is no change": starting a step that is
        # already running would run it twice.
        if current != expect:
            raise InvalidTransition(
                f"step {row.id}: is {current.value}, expected {expect.value} "
                f"to move to {status.value}"
            )
        check_transition(STEP_TRANSITIONS, current, status, what=f"step {row.id}")
        row.status = str(status)
