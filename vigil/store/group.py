"""Group commit: many threads' small writes committed together, one transaction a batch.

A rack failure finishes thousands of steps within seconds, each on a worker thread of
its own. Committed one by one, each outcome is a transaction that locks its host's row,
takes a pooled connection while it waits for that lock, and ends on the store's one
revision row (``vigil.store.session``): on PostgreSQL, with the workers' threads and the
heartbeats sharing two cores, the commits queued behind one another while Nova sat idle
(bench/scale.py at 10,000 hosts: workers waiting on host locks held 40 of the 50
connections, 34 more waited for one; 0.58-0.73 of Nova's limit).

``GroupCommit.submit(item)`` returns once ``item`` is committed, as a direct call would,
with its result or its exception. The first caller that finds no commit under way leads:
it commits every item queued by then in one call of ``commit``, hands each waiting
caller its outcome, and passes the lead to the first caller that queued meanwhile (so
that no caller commits others' work for long). There is no thread of its own to start or
stop, and no added wait: a lone caller commits at once, as before.

No library of the field does this for a SQLAlchemy session (oslo.db has none, nor
SQLAlchemy); it is the leader/follower group commit of database logs, in forty lines.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


class _Waiting(Generic[_T, _R]):
    __slots__ = ("done", "error", "item", "lead", "result")

    def __init__(self, item: _T) -> None:
        self.item = item
        self.done = threading.Event()
        self.lead = False
        self.result: _R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[_T, _R]):
    """``commit(items)`` writes a batch and returns, in order, each item's result or the
    exception to raise to its caller; an exception it raises is every item's."""

    def __init__(self, commit: Callable[[Sequence[_T]], Sequence[_R | BaseException]]) -> None:
        self._commit = commit
        self._lock = threading.Lock()
        self._queue: list[_Waiting[_T, _R]] = []
        self._leading = False
        self.batches = 0  # committed batches and items, for tests and metrics
        self.items = 0

    def submit(self, item: _T) -> _R:
        mine: _Waiting[_T, _R] = _Waiting(item)
        with self._lock:
            self._queue.append(mine)
            lead = not self._leading
            self._leading = True
        if not lead:
            mine.done.wait()
            lead = mine.lead
        if lead:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            outcomes: Sequence[_R | BaseException] = self._commit([w.item for w in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"group commit: {len(outcomes)} outcomes for {len(batch)}")
        except BaseException as exc:  # each waiting caller gets it
            outcomes = [exc] * len(batch)
        with self._lock:
            self.batches += 1
            self.items += len(batch)
            if self._queue:  # the next batch is led by the first caller that queued
                self._queue[0].lead = True
                self._queue[0].done.set()
            else:
                self._leading = False
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                waiting.error = outcome
            else:
                waiting.result = outcome
            waiting.done.set()
