"""The one execution primitive: keyed workers, busy keys, cooperative cancellation."""

from __future__ import annotations

import threading
import time

from support import wait_until

from vigil.clock import FakeClock
from vigil.engine.workers import Cancelled, KeyedWorkers


def test_a_key_is_busy_until_its_job_returns_then_its_follow_up_runs() -> None:
    workers = KeyedWorkers(2, "test")
    release = threading.Event()
    followed: list[str] = []
    try:
        assert workers.submit("c1", release.wait, 5.0, then=lambda: followed.append("c1"))
        assert workers.busy() == {"c1"}
        assert followed == []
        release.set()
        assert workers.drain(5.0)
        assert workers.busy() == set()
        assert followed == ["c1"]
    finally:
        workers.stop()


def test_a_cancelled_job_stops_at_its_next_wait_with_the_reason() -> None:
    workers = KeyedWorkers(1, "test")
    outcome: list[str] = []
    wait = workers.waiter("step-7")  # real time: wakes at the cancel, not after 60 s

    def job() -> None:
        try:
            wait(60.0)
            outcome.append("waited it out")
        except Cancelled as why:
            outcome.append(f"cancelled: {why}")

    try:
        workers.submit("step-7", job)
        time.sleep(0.05)
        started = time.monotonic()
        assert workers.cancel("step-7", "recovery 3 ended")
        wait_until(lambda: outcome, timeout=5.0, what="the job to stop")
        assert outcome == ["cancelled: recovery 3 ended"]
        assert time.monotonic() - started < 5.0
        assert workers.drain(5.0)
        assert not workers.cancel("step-7", "again")  # nothing in flight: nothing to cancel
    finally:
        workers.stop()


def test_a_cancel_reaches_a_job_waiting_on_an_injected_clock_and_only_its_own_key() -> None:
    clock = FakeClock()
    workers = KeyedWorkers(2, "test")
    gate = threading.Event()
    outcome: dict[str, str] = {}

    def job(key: str) -> None:
        wait = workers.waiter(key, clock.advance)
        try:
            gate.wait(5.0)
            for _ in range(100):
                wait(1.0)
            outcome[key] = "done"
        except Cancelled as why:
            outcome[key] = f"cancelled: {why}"

    try:
        workers.submit("a", job, "a")
        workers.submit("b", job, "b")
        workers.cancel("a", "operator")
        gate.set()
        assert workers.drain(5.0)
        assert outcome == {"a": "cancelled: operator", "b": "done"}
    finally:
        workers.stop()


def test_check_raises_only_once_the_key_is_cancelled() -> None:
    workers = KeyedWorkers(1, "test")
    seen: list[str] = []
    go = threading.Event()

    def job() -> None:
        workers.check("k")  # not cancelled yet: goes on
        seen.append("first check passed")
        go.wait(5.0)
        try:
            workers.check("k")
        except Cancelled:
            seen.append("second check raised")

    try:
        workers.submit("k", job)
        wait_until(lambda: seen, timeout=5.0, what="the first check")
        workers.cancel("k", "why not")
        go.set()
        assert workers.drain(5.0)
        assert seen == ["first check passed", "second check raised"]
    finally:
        workers.stop()


def test_urgent_work_never_waits_behind_a_full_pool() -> None:
    """Every worker holds a long job (evacuations waiting for ACTIVE): a fence submitted
    as urgent runs at once on the urgent lane, and is busy under its key like any job."""
    workers = KeyedWorkers(2, "test", urgent_threads=1)
    release = threading.Event()
    ran = threading.Event()
    try:
        for n in range(5):  # two run, three queue
            assert workers.submit(("evacuate", n), release.wait, 5.0)
        assert workers.submit("fence", ran.set, urgent=True)
        assert ran.wait(2.0), "the urgent job ran while the pool was full"
        wait_until(lambda: "fence" not in workers.busy())
        assert ("evacuate", 4) in workers.busy()
        release.set()
        assert workers.drain(5.0)
    finally:
        release.set()
        workers.stop()
