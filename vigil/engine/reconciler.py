"""The one shape of every reaction: snapshot → pure rule → actions → handlers → events.

A reaction (``Reaction``) is three things:

- ``observe()`` reads what the rule needs — the store, the heartbeat table, what its
  workers found — into a snapshot. It never calls Nova, a BMC or the network.
- ``decide(snapshot)`` is the pure rule (``vigil.engine.decide``, ``.guest``,
  ``.services``): no I/O, the time comes in the snapshot.
- each action's type has one handler (``handle``), run in order on the decision thread,
  inside ``acting(action)``: the segment owner's token its writes are checked against.
  A handler only records (a store write with its events, in one transaction) and hands
  whatever waits on Nova, a BMC or the network to the reaction's workers
  (``vigil.engine.workers.KeyedWorkers``: at most one job per key, so the next snapshot
  sees the key busy and the rule leaves it alone; cancellable at the job's next wait). A
  worker writes its outcome, with its events, and wakes the loop.

A ``Loop`` runs reactions' cycles one after the other, every tick or at once when woken;
one failing cycle or action is logged and the loop goes on.

Retries (``RetryPolicy``) have one formula for every reaction, tenacity's: exponential
backoff from a base, capped, within a budget of attempts, none after a PermanentError.
The attempt number comes from what the caller persisted (a step's ``attempts``, a guest
failure's ``action_attempts``), so a restarted vigil resumes a retry where it was: that
is why vigil asks tenacity's strategies for the decision instead of letting tenacity's
``Retrying`` sleep on a thread.

Adding a reaction: a rule function with its snapshot and action types, a ``Reaction``
subclass that observes and registers a handler per action type, and a place in a
``Loop`` (doc/architecture.md).
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tenacity import (
    RetryCallState,
    retry_if_not_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)

from vigil.drivers.errors import PermanentError
from vigil.store.base import StoreUnavailable

LOG = logging.getLogger("vigil.engine")

S = TypeVar("S")  # a reaction's snapshot
A = TypeVar("A")  # its actions


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Seconds before retry number ``attempt`` (1: the first retry): ``base``, doubling
    each time, at most ``cap``; none before the first try (``attempt`` < 1)."""
    if attempt < 1:
        return 0.0
    return float(wait_exponential(multiplier=base, max=cap)(_state(attempt)))


def _state(attempt: int, outcome: BaseException | None = None) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    if outcome is not None:
        state.set_exception((type(outcome), outcome, outcome.__traceback__))
    return state


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of attempt is retried: at most ``attempts`` tries in all (0: no
    limit), ``backoff(n, base, cap)`` seconds after the n-th failure; a PermanentError
    is never retried."""

    attempts: int
    base: float
    cap: float

    def after_failure(self, attempt: int, error: BaseException) -> float | None:
        """Try ``attempt`` (1 = the first) failed with ``error``: seconds until the next
        try, or None when the attempt is given up."""
        state = _state(attempt, error)
        if not retry_if_not_exception_type(PermanentError)(state):
            return None
        stop = stop_after_attempt(self.attempts) if self.attempts > 0 else stop_never
        if stop(state):
            return None
        return backoff(attempt, base=self.base, cap=self.cap)


class Reaction(abc.ABC, Generic[S, A]):
    """observe → decide → one handler per action type (see the module docstring)."""

    #: names the reaction in the log
    name: str = "reaction"

    def __init__(self) -> None:
        self._handlers: dict[type, Callable[[Any], None]] = {}
        self._batched: dict[type, Callable[[list[Any]], None]] = {}

    def handle(self, kind: type[A], handler: Callable[[Any], None]) -> None:
        """``handler(action)`` carries out every action of type ``kind``."""
        self._handlers[kind] = handler

    def handle_together(self, kind: type[A], handler: Callable[[list[Any]], None]) -> None:
        """``handler(actions)`` carries out, in one go, every action of type ``kind`` a
        cycle decided that runs in the same context (``batch_key``): one transaction
        for a thousand hosts' first heartbeats instead of a thousand. Called where the
        first of them stands among the cycle's actions."""
        self._batched[kind] = handler

    def batch_key(self, action: A) -> object:
        """Actions of one batched kind with equal keys are handled together; they must
        share their ``acting`` context (the engine's: the segment)."""
        return None

    @abc.abstractmethod
    def observe(self) -> S:
        """The snapshot the rule decides on: reads only."""

    @abc.abstractmethod
    def decide(self, snapshot: S) -> Sequence[A]:
        """The pure rule."""

    def admit(self, action: A) -> bool:
        """Whether ``action`` is carried out this cycle (an operator's pause holds some)."""
        return True

    def acting(self, action: A) -> AbstractContextManager[None]:
        """The context its handler runs in: the owner's token of the segment the action
        is about (``vigil.store.acting_as``), so that the store refuses its writes once
        the segment was taken over."""
        return nullcontext()

    def recorded(self) -> None:
        """Called after each handled action (new events may wait in the outbox)."""

    def next_wait(self, tick: float) -> float:
        """Seconds until this reaction wants its next cycle (at most ``tick``)."""
        return tick

    def run_cycle(self) -> list[A]:
        actions = list(self.decide(self.observe()))
        units: list[list[A]] = []  # each handled at once: an action, or a batch
        batches: dict[tuple[type, object], list[A]] = {}
        for action in actions:
            if not self.admit(action):
                continue
            if type(action) in self._batched:
                key = (type(action), self.batch_key(action))
                if key not in batches:
                    batches[key] = []
                    units.append(batches[key])
                batches[key].append(action)
            else:
                units.append([action])
        for unit in units:
            kind = type(unit[0])
            try:
                with self.acting(unit[0]):
                    if kind in self._batched:
                        self._batched[kind](unit)
                    elif (handler := self._handlers.get(kind)) is not None:
                        handler(unit[0])
                    else:
                        raise TypeError(f"{self.name}: no handler for {kind.__name__}")
            except Exception:  # one action must not stop the others
                LOG.exception(
                    "%s: action %s failed", self.name, unit[0] if len(unit) == 1 else unit
                )
            self.recorded()
        return actions


class Loop:
    """The one poll loop: runs its reactions' cycles in order, every ``tick`` seconds (or
    sooner, when a reaction's ``next_wait`` says so) and at once when woken."""

    def __init__(self, name: str, reactions: Sequence[Reaction[Any, Any]], tick: float) -> None:
        self.name = name
        self._reactions = list(reactions)
        self._tick = tick
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: dict[str, str] = {}  # reaction -> its last failure, while failing
        # reaction -> (cycles run, seconds spent in them): what the metrics show
        self.spent: dict[str, tuple[int, float]] = {}

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event | None = None) -> None:
        """Cycle until ``stop`` (or ``close``) is set, on the calling thread."""
        stop = stop or self._stop
        while not stop.is_set() and not self._stop.is_set():
            # Cleared before the cycle: a wake during it (a report, a finished step)
            # makes the next cycle start at once instead of being lost.
            self._wake.clear()
            for reaction in self._reactions:
                started = time.perf_counter()
                try:
                    reaction.run_cycle()
                except Exception as exc:  # the loop must outlive any one bad cycle
                    self._failed(reaction.name, exc)
                else:
                    self._worked(reaction.name)
                cycles, seconds = self.spent.get(reaction.name, (0, 0.0))
                self.spent[reaction.name] = (cycles + 1, seconds + time.perf_counter() - started)
            wait = min(r.next_wait(self._tick) for r in self._reactions)
            self._wake.wait(max(0.0, wait))

    def _failed(self, name: str, exc: Exception) -> None:
        """Logged when a reaction starts failing or fails differently, not at every tick
        (the database away fails every cycle of every reaction, ten times a second)."""
        what = f"{type(exc).__name__}: {exc}"
        before = self._failing.get(name)
        self._failing[name] = what
        if before == what:
            return
        if isinstance(exc, StoreUnavailable):  # an outage, not a bug: no traceback
            LOG.error("%s cycle failed: %s; retrying every tick", name, exc)
        else:
            LOG.exception("%s cycle failed; retrying every tick", name)

    def _worked(self, name: str) -> None:
        if self._failing.pop(name, None) is not None:
            LOG.warning("%s cycle works again", name)

    def start(self) -> None:
        """Cycle on a thread of its own."""
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
