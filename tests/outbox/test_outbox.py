"""The outbox: events written with the change, delivered in order at least once, retried
with backoff, dead-lettered after the last try — one sink's trouble never holds another."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import new_store, wait_until

from vigil.clock import SystemClock
from vigil.drivers.errors import PermanentError, TemporaryError
from vigil.drivers.notifier import MemoryNotifier, Notifier
from vigil.engine.outbox import DeliverySettings, OutboxDispatcher, Sink
from vigil.events import make_event
from vigil.model import Event, Host, HostState, Segment
from vigil.store import NotFoundError
from vigil.store.sql import SqlStore

FAST = DeliverySettings(attempts=4, backoff=0.05, backoff_max=0.2, poll=0.05)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = new_store(tmp_path, Segment("s1"), [Host("c1", "s1")])
    yield s
    s.close()


class Flaky(Notifier):
    """Fails the first ``failures`` attempts at each event, then takes it."""

    def __init__(self, failures: int, *, permanent: bool = False, delay: float = 0.0) -> None:
        self.failures, self.permanent, self.delay = failures, permanent, delay
        self.tries: dict[str, int] = {}
        self.got: list[Event] = []
        self.lock = threading.Lock()

    def publish(self, event: Event) -> None:
        time.sleep(self.delay)
        with self.lock:
            n = self.tries[event.id] = self.tries.get(event.id, 0) + 1
            if n <= self.failures:
                raise (PermanentError if self.permanent else TemporaryError)(f"try {n} refused")
            self.got.append(event)


def emit(store: SqlStore, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        e = make_event("vigil.host.failure.suspected", at=float(i), host="c1", reason=f"r{i}")
        # each event written with a state change, as the engine does
        state = HostState.SUSPECT if i % 2 == 0 else HostState.UP
        store.set_host_state("c1", state, reason=f"r{i}", at=float(i), events=[e])
        ids.append(e.id)
    return ids


def test_events_are_written_in_the_transaction_of_their_change(store: SqlStore) -> None:
    e = make_event("vigil.host.failure.suspected", at=1.0, host="c1", reason="x")
    # an invalid transition writes neither the state nor its event
    with pytest.raises(Exception, match="not allowed"):
        store.set_host_state("c1", HostState.RECOVERED, reason="x", at=1.0, events=[e])
    assert store.list_events() == []
    store.set_host_state("c1", HostState.SUSPECT, reason="x", at=1.0, events=[e])
    (stored,) = store.list_events()
    assert (stored.id, stored.host, stored.seq) == (e.id, "c1", 1)


def test_every_event_delivered_in_order_to_every_sink(store: SqlStore) -> None:
    a, b = MemoryNotifier(), MemoryNotifier()
    d = OutboxDispatcher(
        store, clock=SystemClock(), settings=FAST, sinks=lambda: [Sink("a", a), Sink("b", b)]
    )
    d.start()
    try:
        ids = emit(store, 30)
        d.wake()
        wait_until(
            lambda: len(a.events) == 30 and len(b.events) == 30,
            "len(a.events) == 30 and len(b.events) == 30",
            10.0,
            every=0.01,
        )
        assert [e.id for e in a.events] == ids
        assert [e.id for e in b.events] == ids
    finally:
        d.stop()


def test_a_failing_sink_retries_with_backoff_and_others_go_on(store: SqlStore) -> None:
    good, flaky = MemoryNotifier(), Flaky(failures=3)
    d = OutboxDispatcher(
        store,
        clock=SystemClock(),
        settings=FAST,
        sinks=lambda: [Sink("good", good), Sink("flaky", flaky)],
    )
    d.start()
    try:
        ids = emit(store, 3)
        d.wake()
        wait_until(lambda: len(good.events) == 3, "len(good.events) == 3", 10.0, every=0.01)
        wait_until(lambda: len(flaky.got) == 3, "len(flaky.got) == 3", 10.0, every=0.01)
        assert [e.id for e in flaky.got] == ids  # in order, each on its 4th try
        assert all(n == 4 for n in flaky.tries.values())
        assert store.list_dead_letters() == []
    finally:
        d.stop()


def test_the_cursor_moves_once_a_round_and_before_a_failure_is_recorded(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's deliveries are recorded in one write (not one per event); a failure
    first records what was delivered before it, then its own attempt (which a later
    record of deliveries would otherwise clear)."""
    recorded: list[int] = []
    record = store.sink_delivered

    def counting(name: str, seq: int) -> None:
        recorded.append(seq)
        record(name, seq)

    monkeypatch.setattr(store, "sink_delivered", counting)
    flaky = Flaky(failures=0)
    failed_once: list[str] = []
    third: list[str] = []

    def publish(event: Event) -> None:
        if third and event.id == third[0] and not failed_once:
            failed_once.append(event.id)
            raise TemporaryError("not now")
        flaky.got.append(event)

    flaky.publish = publish  # type: ignore[method-assign]
    slow = DeliverySettings(attempts=4, backoff=0.05, backoff_max=0.2, poll=1.0)
    d = OutboxDispatcher(
        store, clock=SystemClock(), settings=slow, sinks=lambda: [Sink("s", flaky)]
    )
    d.start()
    try:
        # A new sink starts at the end; its worker then sleeps a poll (no wake-up): the
        # five events are all there for its next round.
        wait_until(lambda: store.get_sink("s"), "the sink", 5.0, ignoring=(NotFoundError,))
        ids = emit(store, 5)
        third.append(ids[2])
        seqs = [e.seq for e in store.list_events()][-5:]
        wait_until(lambda: len(flaky.got) == 5, "all five delivered", 10.0, every=0.01)
        wait_until(lambda: store.get_sink("s").cursor == seqs[-1], "the cursor at the end", 5.0)
    finally:
        d.stop()
    assert [e.id for e in flaky.got] == ids  # in order, each once
    assert recorded == [seqs[1], seqs[-1]]  # before the failure; then the second round's


def test_after_the_last_try_a_dead_letter_and_the_sink_moves_on(store: SqlStore) -> None:
    dead = Flaky(failures=99)
    d = OutboxDispatcher(
        store, clock=SystemClock(), settings=FAST, sinks=lambda: [Sink("dead", dead)]
    )
    d.start()
    try:
        ids = emit(store, 2)
        d.wake()
        wait_until(
            lambda: len(store.list_dead_letters()) == 2,
            "len(store.list_dead_letters()) == 2",
            10.0,
            every=0.01,
        )
        letters = store.list_dead_letters(sink="dead")
        assert sorted(dl.event_id for dl in letters) == sorted(ids)
        assert all(dl.attempts == FAST.attempts for dl in letters)
        assert store.get_sink("dead").cursor == store.last_event_seq()
    finally:
        d.stop()


def test_a_permanent_refusal_is_dead_lettered_at_once(store: SqlStore) -> None:
    refused = Flaky(failures=1, permanent=True)
    d = OutboxDispatcher(
        store, clock=SystemClock(), settings=FAST, sinks=lambda: [Sink("refused", refused)]
    )
    d.start()
    try:
        emit(store, 1)
        d.wake()
        wait_until(
            lambda: len(store.list_dead_letters()) == 1,
            "len(store.list_dead_letters()) == 1",
            10.0,
            every=0.01,
        )
        assert store.list_dead_letters()[0].attempts == 1
    finally:
        d.stop()


def test_a_crash_before_delivery_delivers_after_restart(store: SqlStore) -> None:
    first = MemoryNotifier()
    d = OutboxDispatcher(
        store, clock=SystemClock(), settings=FAST, sinks=lambda: [Sink("bus", first)]
    )
    d.start()
    ids = emit(store, 5)
    d.wake()
    wait_until(lambda: len(first.events) == 5, "len(first.events) == 5", 10.0, every=0.01)
    d.stop()
    # the server "dies" after these changes were committed, before any delivery
    later = emit(store, 4, start=5)
    second = MemoryNotifier()
    d2 = OutboxDispatcher(
        store, clock=SystemClock(), settings=FAST, sinks=lambda: [Sink("bus", second)]
    )
    d2.start()
    try:
        wait_until(lambda: len(second.events) == 4, "len(second.events) == 4", 10.0, every=0.01)
        assert [e.id for e in second.events] == later  # resumed at its cursor
        assert not set(ids) & {e.id for e in second.events}
    finally:
        d2.stop()


def test_filters_and_new_sinks_start_at_the_end(store: SqlStore) -> None:
    emit(store, 3)  # history before the sink existed is not sent
    got = MemoryNotifier()
    d = OutboxDispatcher(
        store,
        clock=SystemClock(),
        settings=FAST,
        sinks=lambda: [Sink("filtered", got, lambda e: e.event_type.endswith(".recovery.end"))],
    )
    d.start()
    try:
        emit(store, 2, start=3)
        end = make_event(
            "vigil.recovery.end", at=9.0, host="c1", recovery_id=1, outcome="succeeded", reason="ok"
        )
        store.append_events([end])
        d.wake()
        wait_until(lambda: len(got.events) == 1, "len(got.events) == 1", 10.0, every=0.01)
        assert got.events[0].id == end.id
        wait_until(
            lambda: store.get_sink("filtered").cursor == store.last_event_seq(),
            'store.get_sink("filtered").cursor == store.last_even',
            10.0,
            every=0.01,
        )
    finally:
        d.stop()


def test_a_slow_consumer_does_not_slow_the_others(store: SqlStore) -> None:
    slow, fast = Flaky(failures=0, delay=0.3), MemoryNotifier()
    d = OutboxDispatcher(
        store,
        clock=SystemClock(),
        settings=FAST,
        sinks=lambda: [Sink("slow", slow), Sink("fast", fast)],
    )
    d.start()
    try:
        t0 = time.monotonic()
        emit(store, 5)
        d.wake()
        wait_until(lambda: len(fast.events) == 5, "len(fast.events) == 5", 10.0, every=0.01)
        assert time.monotonic() - t0 < 1.0  # the slow one needs 1.5 s for its five
        wait_until(lambda: len(slow.got) == 5, "len(slow.got) == 5", 10.0, every=0.01)
    finally:
        d.stop()


def test_retention_deletes_old_events_only_once_every_sink_has_them(store: SqlStore) -> None:
    """Events past ``retention`` go, oldest first, a sink's undelivered ones never; on
    the fake clock, pruning called as the dispatcher's thread calls it."""
    from vigil.clock import FakeClock

    store.ensure_sink("fast")
    store.ensure_sink("slow")
    emit(store, 10)  # events at t = 0 .. 9, seq 1 .. 10
    store.sink_delivered("fast", 8)
    store.sink_delivered("slow", 3)
    clock = FakeClock(start=12.0)
    d = OutboxDispatcher(store, clock=clock, sinks=lambda: [], retention=5.0)
    # Older than 12 - 5 = 7 s: seq 1 .. 7; "slow" has had only 1 .. 3.
    assert d.prune() == 3
    assert [e.seq for e in store.list_events()] == list(range(4, 11))
    store.sink_delivered("slow", 10)
    assert d.prune() == 4
    assert [e.seq for e in store.list_events()] == [8, 9, 10]
    clock.advance(100)
    assert d.prune() == 1  # all old now, but "fast" has had only up to 8
    assert [e.seq for e in store.list_events()] == [9, 10]
    # Retention 0: kept for ever.
    keep = OutboxDispatcher(store, clock=clock, sinks=lambda: [], retention=0.0)
    assert keep.prune() == 0
    # New events keep numbering on: nothing is given a deleted event's seq.
    store.sink_delivered("fast", 10)
    assert d.prune() == 2 and store.list_events() == []
    emit(store, 1, start=200)
    assert [e.seq for e in store.list_events()] == [11]
