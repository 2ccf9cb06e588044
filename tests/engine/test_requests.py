"""Operator requests as recorded intents: the rule, the retries, a restart of vigil."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from support import new_store

from vigil.clock import FakeClock
from vigil.drivers.errors import Conflict, TemporaryError
from vigil.engine.reconciler import RetryPolicy
from vigil.engine.requests import OperatorRequests, RequestsView, RunRequest, decide_requests
from vigil.events import make_event
from vigil.model import Event, OperatorRequest, RequestKind, Segment, StepStatus
from vigil.store.sql import SqlStore

RESTART = RequestKind.RESTART_INSTANCE


def req(
    id: int, target: str, status: StepStatus = StepStatus.PENDING, at: float = 0.0
) -> OperatorRequest:
    return OperatorRequest(id, RESTART, target, "c1", status, next_attempt_at=at)


def test_the_rule_runs_the_oldest_due_request_of_each_target_alone() -> None:
    view = RequestsView(
        now=10.0,
        requests=(
            req(1, "vm-a"),
            req(2, "vm-a"),  # behind request 1 of the same instance
            req(3, "vm-b", at=20.0),  # not due yet: and request 4 waits behind it
            req(4, "vm-b"),
            req(5, "vm-c"),  # a worker is on vm-c
            req(6, "vm-d", StepStatus.RUNNING),  # running (just started): 7 waits
            req(7, "vm-d"),
        ),
        busy=frozenset({"vm-c"}),
    )
    assert decide_requests(view) == [RunRequest(view.requests[0])]


class Nova:
    """A reboot that fails as told, then succeeds; counts the calls."""

    def __init__(self, failures: Sequence[Exception] = ()) -> None:
        self.failures = list(failures)
        self.reboots = 0
        self.gate = threading.Event()
        self.gate.set()

    def reboot(self, request: OperatorRequest) -> tuple[str, list[Event]]:
        self.gate.wait(10.0)
        self.reboots += 1
        if self.failures:
            raise self.failures.pop(0)
        event = make_event("vigil.consumer.action", at=0.0, instance_id=request.target)
        return "rebooted", [event]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = new_store(tmp_path, Segment("s1"))
    yield s
    s.close()


def reaction(store: SqlStore, clock: FakeClock, nova: Nova) -> OperatorRequests:
    r = OperatorRequests(
        store=store, clock=clock, retry=RetryPolicy(3, base=1.0, cap=4.0), wake=lambda: None
    )
    r.register(RESTART, nova.reboot)
    return r


def cycle(r: OperatorRequests) -> None:
    r.run_cycle()
    assert r.drain(10.0)


def test_a_temporary_error_is_retried_after_the_backoff_and_the_outcome_recorded(
    store: SqlStore,
) -> None:
    clock, nova = FakeClock(), Nova([TemporaryError("Nova is busy")])
    r = reaction(store, clock, nova)
    try:
        asked = r.submit(RESTART, "vm-1", host="c1", reason="consumer")
        cycle(r)
        retrying = store.get_request(asked.id)
        assert (retrying.status, retrying.attempts, retrying.detail) == (
            StepStatus.PENDING,
            1,
            "Nova is busy",
        )
        cycle(r)  # not before its backoff
        assert nova.reboots == 1
        clock.advance(1.0)
        cycle(r)
        done = r.outcome(asked.id, timeout=1.0)
        assert (done.status, done.attempts, nova.reboots) == (StepStatus.SUCCEEDED, 2, 2)
        assert [
            e.instance_id for e in store.list_events() if e.event_type == "vigil.consumer.action"
        ] == ["vm-1"]
    finally:
        r.close()


def test_a_refusal_ends_the_request_at_once_and_its_caller_gets_it(store: SqlStore) -> None:
    clock, nova = FakeClock(), Nova([Conflict("instance vm-1 is rebuilding")])
    r = reaction(store, clock, nova)
    try:
        asked = r.submit(RESTART, "vm-1", host="c1", reason="consumer")
        cycle(r)
        with pytest.raises(Conflict, match="rebuilding"):
            r.outcome(asked.id, timeout=1.0)
        assert store.get_request(asked.id).status == StepStatus.FAILED
        assert nova.reboots == 1
    finally:
        r.close()


def test_a_caller_that_waits_longer_than_the_cloud_answers_is_told_it_goes_on(
    store: SqlStore,
) -> None:
    clock, nova = FakeClock(), Nova()
    nova.gate.clear()  # Nova holds the reboot
    r = reaction(store, clock, nova)
    try:
        asked = r.submit(RESTART, "vm-1", host="c1", reason="consumer")
        r.run_cycle()
        with pytest.raises(TemporaryError, match=f"vigil carries it on \\(request {asked.id}\\)"):
            r.outcome(asked.id, timeout=0.2)
        nova.gate.set()
        assert r.outcome(asked.id, timeout=10.0).status == StepStatus.SUCCEEDED
    finally:
        r.close()


def test_a_request_running_when_vigil_died_is_carried_out_after_the_restart(
    store: SqlStore,
) -> None:
    clock, nova = FakeClock(), Nova()
    asked = store.add_request(RESTART, "vm-1", host="c1", reason="consumer", at=0.0)
    store.start_request(asked.id, at=0.0)  # then vigil died before Nova answered
    r = reaction(store, clock, nova)
    try:
        cycle(r)
        assert nova.reboots == 0  # RUNNING in the store: not run twice at once
        r.resume_after_restart()
        cycle(r)
        done = store.get_request(asked.id)
        assert (done.status, done.attempts, nova.reboots) == (StepStatus.SUCCEEDED, 2, 1)
    finally:
        r.close()
