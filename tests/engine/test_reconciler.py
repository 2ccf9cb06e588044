"""The skeleton every reaction runs on: one retry formula, one loop, one dispatch."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from vigil.drivers.errors import PermanentError, TemporaryError
from vigil.engine.reconciler import Loop, Reaction, RetryPolicy, backoff
from vigil.store import StoreUnavailable


def test_backoff_doubles_from_its_base_and_is_capped() -> None:
    assert [backoff(n, base=0.5, cap=3.0) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_retry_policy_spends_its_budget_and_never_retries_a_permanent_error() -> None:
    steps = RetryPolicy(attempts=3, base=5.0, cap=300.0)
    busy = TemporaryError("Nova is busy")
    assert steps.after_failure(1, busy) == 5.0
    assert steps.after_failure(2, busy) == 10.0
    assert steps.after_failure(3, busy) is None  # the third try was the last
    assert steps.after_failure(1, PermanentError("no such server")) is None
    forever = RetryPolicy(attempts=0, base=5.0, cap=5.0)
    assert forever.after_failure(1000, busy) == 5.0


@dataclass(frozen=True)
class Ping:
    n: int


@dataclass(frozen=True)
class Held:
    n: int


class Counter(Reaction[int, object]):
    """Observes a number; the rule asks for a Ping (and a Held, never admitted) each
    cycle; the Ping handler fails on odd numbers, which must not stop the others."""

    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.pinged: list[int] = []
        self.recorded_count = 0
        self.handle(Ping, self._ping)
        self.handle(Held, lambda action: pytest.fail("a held action ran"))

    def observe(self) -> int:
        self.seen += 1
        return self.seen

    def decide(self, snapshot: int) -> Sequence[object]:
        return [Ping(snapshot), Held(snapshot), Ping(snapshot * 10)]

    def admit(self, action: object) -> bool:
        return not isinstance(action, Held)

    def _ping(self, action: Ping) -> None:
        if action.n % 2:
            raise RuntimeError("odd")
        self.pinged.append(action.n)

    def recorded(self) -> None:
        self.recorded_count += 1


def test_a_cycle_dispatches_by_type_and_one_failing_action_stops_none_of_the_others() -> None:
    counter = Counter()
    assert counter.run_cycle() == [Ping(1), Held(1), Ping(10)]
    assert counter.pinged == [10]
    assert counter.recorded_count == 2  # after each action carried out, held ones not


class Batches(Reaction[int, object]):
    """Pings handled together per parity (``batch_key``), Helds one by one."""

    name = "batches"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[object] = []
        self.handle_together(Ping, self.calls.append)
        self.handle(Held, self.calls.append)

    def observe(self) -> int:
        return 0

    def decide(self, snapshot: int) -> Sequence[object]:
        return [Held(0), Ping(1), Ping(2), Held(1), Ping(3), Ping(4)]

    def batch_key(self, action: object) -> object:
        return action.n % 2 if isinstance(action, Ping) else None


def test_actions_handled_together_go_in_one_call_per_key_where_the_first_stood() -> None:
    batches = Batches()
    batches.run_cycle()
    assert batches.calls == [Held(0), [Ping(1), Ping(3)], [Ping(2), Ping(4)], Held(1)]


def test_a_loop_cycles_each_tick_and_at_once_when_woken() -> None:
    counter = Counter()
    loop = Loop("test-loop", [counter], tick=30.0)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while counter.seen < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counter.seen == 1  # the first cycle, then a 30 s tick
        loop.wake()
        while counter.seen < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counter.seen == 2
    finally:
        stop.set()
        loop.wake()
        thread.join(5)
    assert not thread.is_alive()


class Outage(Counter):
    """Observes through a store that is away for cycles 2 to 5."""

    name = "outage"

    def observe(self) -> int:
        n = super().observe()
        if 2 <= n <= 5:
            raise StoreUnavailable("database unavailable: connection refused")
        return n


def test_a_failing_cycle_is_logged_when_it_starts_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage()
    loop = Loop("test-loop", [outage], tick=0.0)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    caplog.set_level("WARNING", logger="vigil.engine")
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while outage.seen < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        loop.wake()
        thread.join(5)
    records = [r for r in caplog.records if "outage cycle" in r.getMessage()]
    assert [r.getMessage() for r in records] == [
        "outage cycle failed: database unavailable: connection refused; retrying every tick",
        "outage cycle works again",
    ]
    assert all(r.exc_info is None for r in records)  # an outage is not a bug: no traceback
