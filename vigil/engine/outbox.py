"""Delivering the outbox: every event to every sink, at least once, in order.

Each sink — a notifier configured for the server (the OpenStack bus, the log) or a webhook
subscription — has its own cursor in the store and its own thread, so a slow or dead
consumer delays nobody else and never the recovery: the engine only writes events, in the
transaction of the change they report. A sink delivers strictly in ``seq`` order (so
never out of order for a host); an event that keeps failing is retried with exponential
backoff and, after the last try, recorded as a dead letter so the sink moves on. The
cursor moves after deliveries are confirmed — once per round of up to ``batch`` events
(and before a failure is recorded), not once per event: a rack failure's thousands of
events would otherwise each wait for the store's writers — so a crash in between
delivers those events again after restart: consumers deduplicate on the event id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from vigil.clock import Clock
from vigil.drivers.errors import PermanentError, TemporaryError
from vigil.drivers.notifier import Notifier
from vigil.model import Event
from vigil.store import Store, StoreUnavailable

LOG = logging.getLogger("vigil.outbox")


def webhook_sink(subscription: str) -> str:
    """The sink name of a webhook subscription."""
    return f"webhook:{subscription}"


@dataclass(frozen=True)
class Sink:
    name: str
    notifier: Notifier
    wants: Callable[[Event], bool] = lambda _e: True


@dataclass(frozen=True)
class DeliverySettings:
    attempts: int = 8  # then a dead letter
    backoff: float = 0.5
    backoff_max: float = 60.0
    poll: float = 0.5  # the longest an event waits when a wake-up is missed
    batch: int = 200

    def delay(self, attempts: int) -> float:
        return float(min(self.backoff * 2 ** max(attempts - 1, 0), self.backoff_max))


class _Worker:
    def __init__(self, sink: Sink, store: Store, clock: Clock, settings: DeliverySettings):
        self.sink = sink
        self._store = store
        self._clock = clock
        self._settings = settings
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._delivered = 0  # the last seq delivered and not yet recorded as such
        self._thread = threading.Thread(target=self._run, name=f"outbox-{sink.name}", daemon=True)
        # When the oldest event not yet delivered to this sink happened (None: none
        # waits): the sink's lag, read by the metrics.
        self.oldest_pending: float | None = None

    def start(self) -> None:
        self._store.ensure_sink(self.sink.name)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        close = getattr(self.sink.notifier, "close", None)
        if callable(close):  # connections to a broker or a webhook endpoint
            try:
                close()
            except Exception as exc:
                LOG.warning("sink %s: closing its notifier failed: %s", self.sink.name, exc)

    def _run(self) -> None:
        failing = ""
        while not self._stop.is_set():
            try:
                idle = self._round()
            except Exception as exc:  # the store away, say: try again shortly, never die
                if str(exc) != failing:  # logged when it starts or changes, not each poll
                    _log_failure(f"sink {self.sink.name}: delivery round failed", exc)
                failing, idle = str(exc), self._settings.poll
            else:
                if failing:
                    LOG.warning("sink %s: delivery rounds work again", self.sink.name)
                failing = ""
            if idle > 0:
                self._wake.wait(idle)
                self._wake.clear()

    def _round(self) -> float:
        """Deliver what is due; return how long to sleep (0: go on at once)."""
        state = self._store.get_sink(self.sink.name)
        wait = state.next_attempt_at - self._clock.wall()
        if wait > 0:
            return min(wait, self._settings.poll)
        events = self._store.list_events(after=state.cursor, limit=self._settings.batch)
        if not events:
            self.oldest_pending = None
            return self._settings.poll
        attempts = state.attempts
        try:
            for event in events:
                self.oldest_pending = event.timestamp
                if self._stop.is_set():
                    return 0.0
                if self.sink.wants(event) and not self._deliver(event, attempts):
                    return 0.0  # back off: the next round reads the new next_attempt_at
                self._delivered = event.seq
                attempts = 0
            return 0.0
        finally:
            self._record_delivered()

    def _record_delivered(self) -> None:
        """Move the cursor past what this round delivered (or had no use for)."""
        if self._delivered:
            self._store.sink_delivered(self.sink.name, self._delivered)
            self._delivered = 0

    def _deliver(self, event: Event, attempts: int) -> bool:
        name = self.sink.name
        try:
            self.sink.notifier.publish(event)
        except (TemporaryError, PermanentError, Exception) as exc:
            attempts += 1
            now = self._clock.wall()
            permanent = isinstance(exc, PermanentError)
            if not isinstance(exc, (TemporaryError, PermanentError)):
                LOG.exception("sink %s: event %s: unexpected error", name, event.id)
            if permanent or attempts >= self._settings.attempts:
                self._store.dead_letter(name, event, attempts=attempts, error=str(exc), at=now)
                LOG.error(
                    "sink %s: event %s (%s, host %s) dead-lettered after %d attempt(s): %s",
                    name,
                    event.id,
                    event.event_type,
                    event.host,
                    attempts,
                    exc,
                )
                return True
            delay = self._settings.delay(attempts)
            self._record_delivered()  # first: it clears the attempts this one records
            self._store.sink_failed(
                name, attempts=attempts, next_attempt_at=now + delay, error=str(exc)
            )
            LOG.warning(
                "sink %s: event %s (%s, host %s) attempt %d failed, retrying in %.1fs: %s",
                name,
                event.id,
                event.event_type,
                event.host,
                attempts,
                delay,
                exc,
            )
            return False
        return True


class OutboxDispatcher:
    """Runs one worker per sink; ``sinks()`` is asked again every ``refresh`` seconds so
    that webhook subscriptions created or deleted through the API are picked up."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        sinks: Callable[[], list[Sink]],
        settings: DeliverySettings | None = None,
        refresh: float = 1.0,
        retention: float = 0.0,
        prune_every: float = 60.0,
    ) -> None:
        self._store = store
        # Events older than ``retention`` seconds (0: kept for ever) that every sink has
        # delivered are deleted, checked every ``prune_every`` seconds.
        self._retention = retention
        self._prune_every = prune_every
        self._pruned_at: float | None = None
        self._clock = clock
        self._sinks = sinks
        self._settings = settings or DeliverySettings()
        self._refresh = refresh
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)

    def start(self) -> None:
        self._sync()
        self._thread.start()

    def wake(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.wake()

    def lags(self) -> dict[str, float]:
        """Seconds since the oldest event not yet delivered happened, per sink (0: none
        waits)."""
        now = self._clock.wall()
        with self._lock:
            workers = list(self._workers.values())
        return {
            w.sink.name: max(0.0, now - w.oldest_pending) if w.oldest_pending is not None else 0.0
            for w in workers
        }

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.stop()

    def _sync(self) -> None:
        wanted = {s.name: s for s in self._sinks()}
        with self._lock:
            gone = [w for n, w in self._workers.items() if n not in wanted]
            for worker in gone:
                del self._workers[worker.sink.name]
            new = [
                _Worker(s, self._store, self._clock, self._settings)
                for n, s in wanted.items()
                if n not in self._workers
            ]
            for worker in new:
                self._workers[worker.sink.name] = worker
        for worker in gone:
            worker.stop()
        for worker in new:
            worker.start()

    def prune(self) -> int:
        """Delete the events past their retention that every sink has delivered, a
        thousand at a time (short transactions beside the engine's); how many."""
        if self._retention <= 0:
            return 0
        before = self._clock.wall() - self._retention
        total = 0
        while not self._stop.is_set():
            count = self._store.prune_events(before=before, limit=1000)
            total += count
            if count < 1000:
                break
        if total:
            LOG.info("outbox: %d event(s) older than %gs deleted", total, self._retention)
        return total

    def _run(self) -> None:
        failing = ""
        while not self._stop.wait(self._refresh):
            try:
                self._sync()
                now = self._clock.monotonic()
                if self._pruned_at is None or now - self._pruned_at >= self._prune_every:
                    self._pruned_at = now
                    self.prune()
            except Exception as exc:
                if str(exc) != failing:
                    _log_failure("outbox: refreshing the sinks failed", exc)
                failing = str(exc)
            else:
                failing = ""


def _log_failure(what: str, exc: Exception) -> None:
    """The database away is an outage, said in one line; anything else, a bug, with its
    traceback."""
    if isinstance(exc, StoreUnavailable):
        LOG.error("%s: %s", what, exc)
    else:
        LOG.exception(what)
