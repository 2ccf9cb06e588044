"""The SQL store, as its users see it, on SQLite, PostgreSQL and MariaDB.

Every test runs once per backend. Each backend's database is created empty and brought to
the current schema with ``upgrade(url)`` once per session; every test starts from empty
tables.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from support import wait_until

from vigil.events import make_event
from vigil.model import (
    Cluster,
    ClusterMember,
    ClusterStatus,
    ComputeHold,
    Control,
    Event,
    FailureKind,
    FailureStatus,
    FenceMethod,
    GuestFailureKind,
    GuestReport,
    HaPolicy,
    Host,
    HostServices,
    HostState,
    InstancePolicy,
    InvalidTransition,
    NewStep,
    OwnerToken,
    Recovery,
    RecoveryStatus,
    RequestKind,
    Segment,
    SegmentOwner,
    ServiceState,
    SinkState,
    StepKind,
    StepStatus,
    Subscription,
)
from vigil.store.base import (
    AlreadyExists,
    HostChange,
    InUse,
    NotFoundError,
    StaleEpoch,
    StoreUnavailable,
    acting_as,
)
from vigil.store.rows import HostRow
from vigil.store.sql import Base, SqlStore, alembic_config, make_engine, upgrade
from vigil.store.steps import _Outcome

T0 = 1_700_000_000.25  # a realistic epoch, with a fraction that single precision would lose
DOWN = FailureKind.HOST_DOWN
PLAN = (NewStep(StepKind.FENCE), NewStep(StepKind.FORCE_DOWN), NewStep(StepKind.LIST_INSTANCES))

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("mariadb", marks=pytest.mark.mariadb, id="mariadb"),
]

SERVERS = BACKENDS[1:]  # with row locks and sessions the server can end


@pytest.fixture(scope="session", params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'vigil.db'}"
    else:
        url = str(request.getfixturevalue(f"{request.param}_url"))
    upgrade(url)
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[SqlStore]:
    store = SqlStore(db_url)
    with store.engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
    try:
        yield store
    finally:
        store.close()


# --- helpers --------------------------------------------------------------------------


def add_host(
    store: SqlStore, name: str = "node1", *, segment: str = "seg", state: HostState = HostState.UP
) -> Host:
    if segment not in {s.name for s in store.list_segments()}:
        store.create_segment(Segment(segment))
    return store.create_host(Host(name, segment, state=state))


def open_recovery(
    store: SqlStore, host: str = "node1", *, at: float = T0, paused_reason: str | None = None
) -> Recovery:
    add_host(store, host, state=HostState.SUSPECT)
    return store.open_host_recovery(
        host=host,
        reason="no heartbeat",
        sources=["heartbeat"],
        at=at,
        steps=PLAN,
        paused_reason=paused_reason,
    )


def run_in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for i in range(count) at once; results (or exceptions) in order."""
    barrier = threading.Barrier(count)

    def call(i: int) -> Any:
        barrier.wait()
        try:
            return work(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(call, range(count)))


# --- segments -------------------------------------------------------------------------


def test_create_get_and_list_segments(store: SqlStore) -> None:
    b = store.create_segment(Segment("b", description="rack b", max_parallel_evacuations=4))
    a = store.create_segment(
        Segment("a", default_policy=HaPolicy.KEEP_RUNNING, max_failed_share=0.3)
    )

    assert a.id is not None and b.id is not None and a.id != b.id
    assert b == Segment("b", description="rack b", max_parallel_evacuations=4, id=b.id)
    assert store.get_segment("a") == a
    assert store.list_segments() == [a, b]


def test_duplicate_segment_is_refused(store: SqlStore) -> None:
    first = store.create_segment(Segment("a", description="first"))
    with pytest.raises(AlreadyExists):
        store.create_segment(Segment("a", description="second"))
    assert store.list_segments() == [first]


def test_missing_segment(store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        store.get_segment("nope")
    with pytest.raises(NotFoundError):
        store.update_segment("nope", paused=True)
    with pytest.raises(NotFoundError):
        store.delete_segment("nope")


def test_update_segment(store: SqlStore) -> None:
    store.create_segment(Segment("a"))
    updated = store.update_segment(
        "a", paused=True, pause_reason="storm", default_policy="keep-running", max_failed_share=0.25
    )
    assert updated.paused and updated.pause_reason == "storm"
    assert updated.default_policy is HaPolicy.KEEP_RUNNING
    assert updated.max_failed_share == 0.25
    assert store.get_segment("a") == updated


def test_update_segment_with_a_bad_field_changes_nothing(store: SqlStore) -> None:
    before = store.create_segment(Segment("a", description="as it was"))
    with pytest.raises(ValueError, match="colour"):
        store.update_segment("a", description="changed", colour="red")
    with pytest.raises(ValueError):
        store.update_segment("a", description="changed", default_policy="sometimes")
    assert store.get_segment("a") == before


def test_delete_segment(store: SqlStore) -> None:
    store.create_segment(Segment("empty"))
    store.delete_segment("empty")
    with pytest.raises(NotFoundError):
        store.get_segment("empty")

    add_host(store, segment="busy")
    with pytest.raises(InUse):
        store.delete_segment("busy")
    assert store.get_segment("busy").name == "busy"
    store.delete_host("node1")
    store.delete_segment("busy")
    assert store.list_segments() == []


# --- hosts ----------------------------------------------------------------------------


def test_create_get_and_list_hosts(store: SqlStore) -> None:
    store.create_segment(Segment("s1"))
    store.create_segment(Segment("s2"))
    fencing = (
        FenceMethod("redfish", {"address": "10.0.0.5", "secret": "vault:bmc/n2"}),
        FenceMethod("ipmi"),
    )
    n2 = store.create_host(Host("n2", "s1", fencing=fencing, reserved=True))
    n1 = store.create_host(Host("n1", "s2", maintenance=True))
    n3 = store.create_host(Host("n3", "s1"))

    assert n2.id is not None
    assert n2 == Host("n2", "s1", fencing=fencing, reserved=True, id=n2.id)
    assert store.get_host("n2") == n2
    assert store.list_hosts() == [n1, n2, n3]
    assert store.list_hosts(segment="s1") == [n2, n3]
    assert store.list_hosts(segment="other") == []


def test_create_host_errors(store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        store.create_host(Host("n1", "no-such-segment"))
    add_host(store, "n1")
    with pytest.raises(AlreadyExists):
        store.create_host(Host("n1", "seg"))
    with pytest.raises(NotFoundError):
        store.get_host("n2")
    assert [h.name for h in store.list_hosts()] == ["n1"]


def test_names_are_case_sensitive(store: SqlStore) -> None:
    add_host(store, "node1")
    add_host(store, "Node1")
    assert store.get_host("Node1").name == "Node1"
    assert [h.name for h in store.list_hosts()] == ["Node1", "node1"]


def test_update_host(store: SqlStore) -> None:
    add_host(store, "n1", segment="s1")
    store.create_segment(Segment("s2"))
    fencing = (FenceMethod("redfish", {"address": "10.0.0.9"}),)

    updated = store.update_host("n1", segment="s2", maintenance=True, fencing=fencing)
    assert (updated.segment, updated.maintenance, updated.fencing) == ("s2", True, fencing)
    assert store.get_host("n1") == updated
    assert store.list_hosts(segment="s1") == []

    with pytest.raises(NotFoundError):
        store.update_host("n1", segment="s3")
    with pytest.raises(ValueError, match="state"):
        store.update_host("n1", reserved=True, state=HostState.FAILED)
    with pytest.raises(NotFoundError):
        store.update_host("n9", reserved=True)
    assert store.get_host("n1") == updated


def test_host_state_transitions(store: SqlStore) -> None:
    add_host(store, "n1", state=HostState.NEW)
    path = [HostState.UP, HostState.SUSPECT, HostState.FAILED, HostState.RECOVERED, HostState.NEW]
    for i, state in enumerate(path):
        host = store.set_host_state("n1", state, reason=f"step {i}", at=T0 + i)
        assert (host.state, host.state_reason, host.state_changed_at) == (
            state,
            f"step {i}",
            T0 + i,
        )
        assert store.get_host("n1") == host


def test_refused_host_transition_leaves_the_row_unchanged(store: SqlStore) -> None:
    before = add_host(store, "n1", state=HostState.UP)
    with pytest.raises(InvalidTransition):
        store.set_host_state("n1", HostState.FAILED, reason="skipping suspect", at=T0)
    with pytest.raises(InvalidTransition):
        store.set_host_state("n1", HostState.RECOVERED, reason="", at=T0)
    assert store.get_host("n1") == before
    with pytest.raises(NotFoundError):
        store.set_host_state("n9", HostState.UP, reason="", at=T0)


def test_same_host_state_changes_nothing(store: SqlStore) -> None:
    host = store.set_host_state(
        add_host(store, state=HostState.NEW).name, HostState.UP, reason="first", at=T0
    )
    again = store.set_host_state("node1", HostState.UP, reason="heartbeat", at=T0 + 5)
    assert again == host


def test_delete_host(store: SqlStore) -> None:
    add_host(store, "idle")
    store.delete_host("idle")
    with pytest.raises(NotFoundError):
        store.get_host("idle")
    with pytest.raises(NotFoundError):
        store.delete_host("idle")


def test_delete_host_under_recovery_is_refused(store: SqlStore) -> None:
    running = open_recovery(store, "n1")
    paused = open_recovery(store, "n2", paused_reason="storm guard")
    for recovery in (running, paused):
        with pytest.raises(InUse):
            store.delete_host(recovery.host)
        assert store.get_recovery(recovery.id) == recovery

    store.finish_recovery(running.id, RecoveryStatus.FAILED, at=T0 + 60, reason="fence failed")
    store.delete_host("n1")
    # Its history goes with it.
    assert store.list_failures(host="n1") == []
    with pytest.raises(NotFoundError):
        store.get_recovery(running.id)
    assert [r.id for r in store.list_recoveries()] == [paused.id]


# --- instance policies ----------------------------------------------------------------


def test_instance_policies(store: SqlStore) -> None:
    assert store.get_instance_policy("vm-1") is None
    p1 = store.set_instance_policy(InstancePolicy("vm-1", HaPolicy.KEEP_RUNNING, priority=5))
    assert p1 == InstancePolicy("vm-1", HaPolicy.KEEP_RUNNING, priority=5)
    assert store.get_instance_policy("vm-1") == p1

    replaced = store.set_instance_policy(InstancePolicy("vm-1", HaPolicy.NOTIFY))
    assert store.get_instance_policy("vm-1") == replaced == InstancePolicy("vm-1", HaPolicy.NOTIFY)
    p0 = store.set_instance_policy(InstancePolicy("vm-0", HaPolicy.OFF))
    assert store.list_instance_policies() == [p0, replaced]
    many = [f"vm-{i}" for i in range(1200)]  # more than one IN (...) chunk
    assert store.instance_policies([*many, "vm-1", "unknown"]) == {"vm-0": p0, "vm-1": replaced}
    assert store.instance_policies([]) == {}

    store.delete_instance_policy("vm-1")
    assert store.get_instance_policy("vm-1") is None
    with pytest.raises(NotFoundError):
        store.delete_instance_policy("vm-1")
    assert store.list_instance_policies() == [p0]


# --- failures -------------------------------------------------------------------------


def test_record_failure_creates_then_folds(store: SqlStore) -> None:
    add_host(store, "n1", state=HostState.SUSPECT)
    first, created = store.record_failure(
        host="n1", kind=DOWN, reason="no heartbeat", source="heartbeat", at=T0
    )
    assert created
    assert (first.host, first.kind, first.status, first.count) == ("n1", DOWN, "open", 1)
    assert (first.sources, first.first_seen, first.last_seen) == (("heartbeat",), T0, T0)
    assert first.reason == "no heartbeat"

    second, created = store.record_failure(
        host="n1", kind=DOWN, reason="power off", source="bmc", at=T0 + 5
    )
    third, created_again = store.record_failure(
        host="n1", kind=DOWN, reason="still nothing", source="heartbeat", at=T0 + 10
    )
    assert not created and not created_again
    assert third.id == second.id == first.id
    assert (third.count, third.sources) == (3, ("heartbeat", "bmc"))
    assert (third.first_seen, third.last_seen) == (T0, T0 + 10)
    assert third.reason == "no heartbeat"
    assert store.get_failure(first.id) == third
    assert store.list_failures() == [third]


def test_a_new_failure_after_the_old_one_is_resolved(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1")
    store.finish_recovery(recovery.id, RecoveryStatus.SUCCEEDED, at=T0 + 60)
    store.set_host_state("n1", HostState.NEW, reason="restored", at=T0 + 100)

    failure, created = store.record_failure(
        host="n1", kind=DOWN, reason="again", source="heartbeat", at=T0 + 200
    )
    assert created and failure.id != recovery.failure_id
    assert (failure.status, failure.count) == (FailureStatus.OPEN, 1)
    assert store.get_failure(recovery.failure_id).status is FailureStatus.RESOLVED


def test_failure_errors(store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        store.record_failure(host="ghost", kind=DOWN, reason="", source="heartbeat", at=T0)
    with pytest.raises(NotFoundError):
        store.get_failure(12345)
    assert store.list_failures() == []


def test_list_failures_newest_first_with_filters(store: SqlStore) -> None:
    for i, name in enumerate(["n2", "n1", "n3"]):
        add_host(store, name, state=HostState.SUSPECT)
        store.record_failure(host=name, kind=DOWN, reason="", source="heartbeat", at=T0 + i)
    recovery = store.open_host_recovery(
        host="n3", reason="", sources=["bmc"], at=T0 + 10, steps=PLAN
    )

    assert [f.host for f in store.list_failures()] == ["n3", "n1", "n2"]
    assert [f.host for f in store.list_failures(limit=2)] == ["n3", "n1"]
    assert [f.host for f in store.list_failures(host="n1")] == ["n1"]
    assert [f.host for f in store.list_failures(status=FailureStatus.OPEN)] == ["n1", "n2"]
    recovering = store.list_failures(status=FailureStatus.RECOVERING)
    assert [f.id for f in recovering] == [recovery.failure_id]


# --- recoveries -----------------------------------------------------------------------


def test_open_host_recovery(store: SqlStore) -> None:
    add_host(store, "n1", segment="rack-a", state=HostState.SUSPECT)
    observed, _ = store.record_failure(
        host="n1", kind=DOWN, reason="no heartbeat", source="heartbeat", at=T0
    )

    recovery = store.open_host_recovery(
        host="n1", reason="declared down", sources=["heartbeat", "bmc"], at=T0 + 10, steps=PLAN
    )

    assert (recovery.host, recovery.segment, recovery.status) == ("n1", "rack-a", "running")
    assert (recovery.created_at, recovery.started_at, recovery.finished_at) == (
        T0 + 10,
        T0 + 10,
        None,
    )
    assert [(s.seq, s.kind, s.status) for s in recovery.steps] == [
        (1, StepKind.FENCE, StepStatus.PENDING),
        (2, StepKind.FORCE_DOWN, StepStatus.PENDING),
        (3, StepKind.LIST_INSTANCES, StepStatus.PENDING),
    ]
    assert all(s.recovery_id == recovery.id and s.attempts == 0 for s in recovery.steps)
    assert store.get_recovery(recovery.id) == recovery

    failure = store.get_failure(recovery.failure_id)
    assert failure.id == observed.id  # folded into the failure already observed
    assert (failure.status, failure.count) == (FailureStatus.RECOVERING, 2)
    assert failure.sources == ("heartbeat", "bmc")

    host = store.get_host("n1")
    assert (host.state, host.state_reason, host.state_changed_at) == (
        HostState.FAILED,
        "declared down",
        T0 + 10,
    )


def test_open_host_recovery_paused(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1", paused_reason="storm guard: 3 of 4 hosts down")
    assert recovery.status is RecoveryStatus.PAUSED
    assert recovery.reason == "storm guard: 3 of 4 hosts down"
    assert recovery.started_at is None
    assert len(recovery.steps) == 3
    assert store.get_failure(recovery.failure_id).status is FailureStatus.OPEN
    assert store.get_host("n1").state is HostState.FAILED


def test_refused_open_host_recovery_writes_nothing(store: SqlStore) -> None:
    host = add_host(store, "n1", state=HostState.UP)
    with pytest.raises(InvalidTransition):
        store.open_host_recovery(host="n1", reason="", sources=["bmc"], at=T0, steps=PLAN)
    assert store.get_host("n1") == host
    assert store.list_failures() == []
    assert store.list_recoveries() == []

    with pytest.raises(NotFoundError):
        store.open_host_recovery(host="ghost", reason="", sources=["bmc"], at=T0, steps=PLAN)


def test_a_host_under_recovery_cannot_get_a_second_one(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1")
    failure = store.get_failure(recovery.failure_id)
    with pytest.raises(InvalidTransition):
        store.open_host_recovery(host="n1", reason="", sources=["bmc"], at=T0 + 5, steps=PLAN)
    assert store.get_failure(failure.id) == failure
    assert store.list_recoveries() == [recovery]


def test_list_recoveries_newest_first_with_steps_in_one_query(store: SqlStore) -> None:
    for i, name in enumerate(["n2", "n1", "n3"]):
        open_recovery(store, name, at=T0 + i)
    store.finish_recovery(store.list_recoveries(host="n2")[0].id, RecoveryStatus.FAILED, at=T0 + 9)

    step_queries = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "steps" in statement:
            step_queries.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        recoveries = store.list_recoveries()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)

    assert len(step_queries) == 1
    assert [r.host for r in recoveries] == ["n3", "n1", "n2"]
    assert all([s.seq for s in r.steps] == [1, 2, 3] for r in recoveries)
    assert all(all(s.recovery_id == r.id for s in r.steps) for r in recoveries)
    assert [r.host for r in store.list_recoveries(limit=2)] == ["n3", "n1"]
    assert [r.host for r in store.list_recoveries(host="n1")] == ["n1"]
    running = store.list_recoveries(statuses=[RecoveryStatus.RUNNING, RecoveryStatus.PAUSED])
    assert [r.host for r in running] == ["n3", "n1"]
    assert store.list_recoveries(statuses=[]) == []
    with pytest.raises(NotFoundError):
        store.get_recovery(12345)


def test_pause_and_resume_a_recovery(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1", paused_reason="operator")

    resumed = store.set_recovery_status(recovery.id, RecoveryStatus.RUNNING, at=T0 + 5)
    assert (resumed.status, resumed.started_at, resumed.reason) == ("running", T0 + 5, "")
    assert store.get_failure(recovery.failure_id).status is FailureStatus.RECOVERING

    paused = store.set_recovery_status(
        recovery.id, RecoveryStatus.PAUSED, at=T0 + 6, reason="storm guard"
    )
    assert (paused.status, paused.reason) == (RecoveryStatus.PAUSED, "storm guard")
    assert store.get_failure(recovery.failure_id).status is FailureStatus.OPEN

    again = store.set_recovery_status(recovery.id, RecoveryStatus.RUNNING, at=T0 + 7)
    assert again.started_at == T0 + 5  # set once
    assert store.get_recovery(recovery.id) == again


def test_set_recovery_status_refusals(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1")
    with pytest.raises(ValueError):
        store.set_recovery_status(recovery.id, RecoveryStatus.SUCCEEDED, at=T0)
    done = store.finish_recovery(recovery.id, RecoveryStatus.SUCCEEDED, at=T0 + 1)
    with pytest.raises(InvalidTransition):
        store.set_recovery_status(recovery.id, RecoveryStatus.RUNNING, at=T0 + 2)
    assert store.get_recovery(recovery.id) == done
    assert store.get_failure(recovery.failure_id).status is FailureStatus.RESOLVED
    with pytest.raises(NotFoundError):
        store.set_recovery_status(12345, RecoveryStatus.PAUSED, at=T0)


def test_finish_recovery_succeeded(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1")
    done = store.finish_recovery(recovery.id, RecoveryStatus.SUCCEEDED, at=T0 + 60)

    assert (done.status, done.finished_at, len(done.steps)) == ("succeeded", T0 + 60, 3)
    assert store.get_recovery(recovery.id) == done
    assert store.get_failure(recovery.failure_id).status is FailureStatus.RESOLVED
    host = store.get_host("n1")
    assert (host.state, host.state_changed_at) == (HostState.RECOVERED, T0 + 60)


def test_finish_recovery_failed_then_retried(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1")
    failed = store.finish_recovery(
        recovery.id, RecoveryStatus.FAILED, at=T0 + 60, reason="fence not confirmed"
    )
    assert (failed.status, failed.finished_at, failed.reason) == (
        "failed",
        T0 + 60,
        "fence not confirmed",
    )
    assert store.get_failure(recovery.failure_id).status is FailureStatus.ERROR
    assert store.get_host("n1").state is HostState.FAILED

    retried = store.set_recovery_status(recovery.id, RecoveryStatus.RUNNING, at=T0 + 120)
    assert (retried.status, retried.started_at, retried.finished_at) == ("running", T0, None)
    assert store.get_failure(recovery.failure_id).status is FailureStatus.RECOVERING


def test_retry_of_a_failed_recovery_gives_failed_steps_a_fresh_budget(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1")
    fence = recovery.steps[0]
    store.start_step(fence.id, at=T0 + 1)
    store.finish_step(fence.id, StepStatus.FAILED, at=T0 + 2, detail="BMC unreachable")
    store.finish_recovery(recovery.id, RecoveryStatus.FAILED, at=T0 + 3, reason="fence failed")

    retried = store.retry_recovery(recovery.id, at=T0 + 100)

    assert (retried.status, retried.finished_at) == (RecoveryStatus.RUNNING, None)
    step = retried.steps[0]
    assert (step.status, step.attempts, step.next_attempt_at, step.finished_at) == (
        StepStatus.PENDING,
        0,
        T0 + 100,
        None,
    )
    assert [s.status for s in retried.steps[1:]] == [StepStatus.PENDING, StepStatus.PENDING]
    assert store.get_failure(recovery.failure_id).status is FailureStatus.RECOVERING
    assert store.get_host("n1").state is HostState.FAILED
    # only a failed recovery can be retried, and a refusal writes nothing
    with pytest.raises(InvalidTransition):
        store.retry_recovery(recovery.id, at=T0 + 101)
    assert store.get_recovery(recovery.id) == retried


def test_finish_recovery_refusals(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1")
    with pytest.raises(ValueError):
        store.finish_recovery(recovery.id, RecoveryStatus.PAUSED, at=T0)
    done = store.finish_recovery(recovery.id, RecoveryStatus.SUCCEEDED, at=T0 + 1)
    with pytest.raises(InvalidTransition):
        store.finish_recovery(recovery.id, RecoveryStatus.FAILED, at=T0 + 2)
    assert store.get_recovery(recovery.id) == done
    assert store.get_failure(recovery.failure_id).status is FailureStatus.RESOLVED
    with pytest.raises(NotFoundError):
        store.finish_recovery(12345, RecoveryStatus.FAILED, at=T0)


def test_finish_recovery_with_an_invalid_host_move_writes_nothing(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1")
    # An operator restores the host behind the recovery's back.
    store.set_host_state("n1", HostState.RECOVERED, reason="", at=T0 + 1)
    host = store.set_host_state("n1", HostState.NEW, reason="restored", at=T0 + 2)
    failure = store.get_failure(recovery.failure_id)

    with pytest.raises(InvalidTransition, match="new -> recovered"):
        store.finish_recovery(recovery.id, RecoveryStatus.SUCCEEDED, at=T0 + 3)
    assert store.get_recovery(recovery.id) == recovery
    assert store.get_failure(failure.id) == failure
    assert store.get_host("n1") == host


# --- steps ----------------------------------------------------------------------------


def test_start_and_finish_a_step(store: SqlStore) -> None:
    fence = open_recovery(store).steps[0]
    started = store.start_step(fence.id, at=T0 + 1)
    assert (started.status, started.attempts, started.started_at) == ("running", 1, T0 + 1)

    done = store.finish_step(
        fence.id,
        StepStatus.SUCCEEDED,
        at=T0 + 2,
        detail="powered off",
        result={"power": "off", "method": {"driver": "redfish", "level": 1}},
    )
    assert (done.status, done.finished_at, done.detail) == ("succeeded", T0 + 2, "powered off")
    assert done.result == {"power": "off", "method": {"driver": "redfish", "level": 1}}
    assert store.get_recovery(fence.recovery_id).steps[0] == done


def test_steps_started_together_leave_out_those_no_longer_pending(store: SqlStore) -> None:
    a, b = open_recovery(store, "n1"), open_recovery(store, "n2")
    store.start_step(b.steps[0].id, at=T0)  # already running: left out, its event too
    base = max((e.seq for e in store.list_events(after=0)), default=0)

    started = store.start_steps(
        [
            (a.steps[0].id, [make_event("vigil.host.fence.start", at=T0 + 1, host="n1")]),
            (b.steps[0].id, [make_event("vigil.host.fence.start", at=T0 + 1, host="n2")]),
        ],
        at=T0 + 1,
    )

    assert [(s.id, s.status, s.attempts, s.started_at) for s in started] == [
        (a.steps[0].id, "running", 1, T0 + 1)
    ]
    assert store.get_recovery(a.id).steps[0] == started[0]
    assert store.get_recovery(b.id).steps[0].attempts == 1  # not started twice
    assert [e.host for e in store.list_events(after=base)] == ["n1"]


def test_a_step_retried_after_a_temporary_error(store: SqlStore) -> None:
    fence = open_recovery(store).steps[0]
    store.start_step(fence.id, at=T0 + 1)
    waiting = store.finish_step(
        fence.id, StepStatus.PENDING, at=T0 + 2, detail="BMC timeout", next_attempt_at=T0 + 32
    )
    assert (waiting.status, waiting.next_attempt_at, waiting.finished_at) == (
        "pending",
        T0 + 32,
        None,
    )
    assert waiting.detail == "BMC timeout"

    again = store.start_step(fence.id, at=T0 + 32)
    assert (again.attempts, again.started_at) == (2, T0 + 1)


def test_finish_step_appends_new_steps(store: SqlStore) -> None:
    recovery = open_recovery(store)
    listing = recovery.step(StepKind.LIST_INSTANCES)
    assert listing is not None
    store.start_step(listing.id, at=T0 + 1)
    store.finish_step(
        listing.id,
        StepStatus.SUCCEEDED,
        at=T0 + 2,
        result={"instances": 3},
        new_steps=[
            NewStep(StepKind.EVACUATE, "i-1", "web-1", priority=10),
            NewStep(StepKind.EVACUATE, "i-2", "web-2"),
            NewStep(StepKind.NOTIFY, "i-3", "batch", status=StepStatus.SKIPPED, detail="off"),
        ],
    )

    steps = store.get_recovery(recovery.id).steps
    assert [s.seq for s in steps] == [1, 2, 3, 4, 5, 6]
    assert [(s.kind, s.instance_id, s.instance_name, s.priority, s.status) for s in steps[3:]] == [
        (StepKind.EVACUATE, "i-1", "web-1", 10, StepStatus.PENDING),
        (StepKind.EVACUATE, "i-2", "web-2", 0, StepStatus.PENDING),
        (StepKind.NOTIFY, "i-3", "batch", 0, StepStatus.SKIPPED),
    ]
    assert steps[5].detail == "off"


def test_refused_step_moves_write_nothing(store: SqlStore) -> None:
    recovery = open_recovery(store)
    fence, force_down = recovery.steps[0], recovery.steps[1]

    with pytest.raises(InvalidTransition):  # not running
        store.finish_step(
            fence.id, StepStatus.SUCCEEDED, at=T0, new_steps=[NewStep(StepKind.EVACUATE, "i-1")]
        )
    running = store.start_step(fence.id, at=T0 + 1)
    with pytest.raises(InvalidTransition):  # already running: would run twice
        store.start_step(fence.id, at=T0 + 2)
    with pytest.raises(InvalidTransition):
        store.skip_step(fence.id, at=T0 + 2, detail="")
    with pytest.raises(ValueError):
        store.finish_step(fence.id, StepStatus.SKIPPED, at=T0 + 2)
    assert store.get_recovery(recovery.id).steps == (running, force_down, recovery.steps[2])

    missing: list[Callable[[], object]] = [
        lambda: store.start_step(12345, at=T0),
        lambda: store.finish_step(12345, StepStatus.FAILED, at=T0),
        lambda: store.skip_step(12345, at=T0, detail=""),
    ]
    for call in missing:
        with pytest.raises(NotFoundError):
            call()


def test_skip_step(store: SqlStore) -> None:
    force_down = open_recovery(store).steps[1]
    skipped = store.skip_step(force_down.id, at=T0 + 3, detail="compute service already down")
    assert (skipped.status, skipped.finished_at, skipped.detail) == (
        "skipped",
        T0 + 3,
        "compute service already down",
    )
    with pytest.raises(InvalidTransition):
        store.start_step(force_down.id, at=T0 + 4)


def test_requeue_running_steps(store: SqlStore) -> None:
    a = open_recovery(store, "n1").steps
    b = open_recovery(store, "n2").steps
    store.start_step(a[0].id, at=T0 + 1)
    store.start_step(b[0].id, at=T0 + 1)
    store.start_step(a[1].id, at=T0 + 1)
    store.finish_step(a[1].id, StepStatus.SUCCEEDED, at=T0 + 2)

    assert store.requeue_running_steps(at=T0 + 100) == 2
    for step in (
        store.get_recovery(a[0].recovery_id).steps[0],
        store.list_recoveries(host="n2")[0].steps[0],
    ):
        assert (step.status, step.next_attempt_at, step.attempts) == ("pending", T0 + 100, 1)
    assert store.get_recovery(a[0].recovery_id).steps[1].status is StepStatus.SUCCEEDED
    assert store.requeue_running_steps(at=T0 + 200) == 0


# --- segment ownership ----------------------------------------------------------------


def test_each_takeover_raises_the_segment_epoch(store: SqlStore) -> None:
    assert store.take_segment("seg", "vigil-a", at=T0) == SegmentOwner("seg", "vigil-a", 1, T0)
    assert store.take_segment("seg", "vigil-b", at=T0 + 5).epoch == 2
    store.take_segment("other", "vigil-a", at=T0 + 6)
    assert store.list_segment_owners() == [
        SegmentOwner("other", "vigil-a", 1, T0 + 6),
        SegmentOwner("seg", "vigil-b", 2, T0 + 5),
    ]


def test_a_write_under_a_stale_epoch_is_refused_and_writes_nothing(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1")
    old = store.take_segment("seg", "vigil-a", at=T0)
    token = OwnerToken("seg", old.owner, old.epoch)
    fence = recovery.steps[0]
    with acting_as(token):
        started = store.start_step(fence.id, at=T0 + 1)
    assert (started.status, started.epoch) == (StepStatus.RUNNING, 1)

    store.take_segment("seg", "vigil-b", at=T0 + 2)  # taken over: epoch 2
    with acting_as(token), pytest.raises(StaleEpoch, match="vigil-a's epoch 1 is stale"):
        store.finish_step(fence.id, StepStatus.SUCCEEDED, at=T0 + 3)
    with acting_as(token), pytest.raises(StaleEpoch):
        store.set_host_state("n1", HostState.UP, reason="stale", at=T0 + 3)
    with acting_as(OwnerToken("seg", "vigil-b", 1)), pytest.raises(StaleEpoch):
        store.finish_step(fence.id, StepStatus.SUCCEEDED, at=T0 + 3)  # right epoch number
    assert store.get_recovery(recovery.id).steps[0].status is StepStatus.RUNNING
    assert store.get_host("n1").state is HostState.FAILED
    assert store.last_event_seq() == 0 or all(
        e.timestamp < T0 + 3 for e in store.list_events(after=0)
    )

    with acting_as(OwnerToken("seg", "vigil-b", 2)):  # the new owner's token
        store.finish_step(fence.id, StepStatus.SUCCEEDED, at=T0 + 4)
    store.set_host_state("n1", HostState.FAILED, reason="no token: not checked", at=T0 + 5)
    assert store.get_recovery(recovery.id).steps[0].status is StepStatus.SUCCEEDED


def test_step_outcomes_committed_together_each_answer_its_own_caller(store: SqlStore) -> None:
    """One batch of ``finish_step`` calls (``vigil.store.group``): a stale owner's are
    refused, a step that is not running and one that does not exist fail alone, the
    rest are written with their events, in one transaction per owner's token."""
    stale = open_recovery(store, "n1").steps[0]
    add_host(store, "n2", segment="seg2", state=HostState.SUSPECT)
    r2 = store.open_host_recovery(host="n2", reason="x", sources=["heartbeat"], at=T0, steps=PLAN)
    fence, force_down, listing = r2.steps
    old = store.take_segment("seg", "vigil-a", at=T0)
    other = store.take_segment("seg2", "vigil-a", at=T0)
    with acting_as(OwnerToken("seg", "vigil-a", old.epoch)):
        store.start_step(stale.id, at=T0)
    mine = OwnerToken("seg2", "vigil-a", other.epoch)
    with acting_as(mine):
        store.start_step(fence.id, at=T0)
        store.start_step(listing.id, at=T0)
    store.take_segment("seg", "vigil-b", at=T0 + 1)  # seg's token is stale now
    base = store.last_event_seq()

    def outcome(step_id: int, token: OwnerToken, host: str) -> _Outcome:
        event = make_event("vigil.host.fence.end", at=T0 + 2, host=host)
        return _Outcome(
            step_id, StepStatus.SUCCEEDED, T0 + 2, "done", {"k": step_id}, None, (), (event,), token
        )

    results = store._finish_steps(
        [
            outcome(stale.id, OwnerToken("seg", "vigil-a", old.epoch), "n1"),
            outcome(fence.id, mine, "n2"),
            outcome(force_down.id, mine, "n2"),  # pending, not running
            outcome(10_000, mine, "n2"),  # no such step
            outcome(listing.id, mine, "n2"),
        ]
    )

    assert isinstance(results[0], StaleEpoch)
    assert isinstance(results[2], InvalidTransition)
    assert isinstance(results[3], NotFoundError)
    assert [(r.id, r.status, r.result) for r in (results[1], results[4])] == [  # type: ignore[union-attr]
        (fence.id, StepStatus.SUCCEEDED, {"k": fence.id}),
        (listing.id, StepStatus.SUCCEEDED, {"k": listing.id}),
    ]
    assert [s.status for s in store.get_recovery(r2.id).steps] == [
        StepStatus.SUCCEEDED,
        StepStatus.PENDING,
        StepStatus.SUCCEEDED,
    ]
    assert store.get_recovery(stale.recovery_id).steps[0].status is StepStatus.RUNNING
    assert [e.host for e in store.list_events(after=base)] == ["n2", "n2"]


def test_many_workers_finishing_steps_at_once_are_each_recorded(store: SqlStore) -> None:
    recovery = open_recovery(store, "n1")
    add_host(store, "n2", state=HostState.SUSPECT)
    r2 = store.open_host_recovery(host="n2", reason="x", sources=["hb"], at=T0, steps=PLAN)
    steps = [*recovery.steps, *r2.steps]
    for step in steps[1:]:
        store.start_step(step.id, at=T0)  # the first stays pending

    def finish(i: int) -> Any:
        return store.finish_step(steps[i].id, StepStatus.SUCCEEDED, at=T0 + i, detail=str(i))

    results = run_in_threads(len(steps), finish)

    assert isinstance(results[0], InvalidTransition)
    assert [(r.id, r.detail) for r in results[1:]] == [
        (s.id, str(i)) for i, s in enumerate(steps) if i
    ]
    got = store.get_recovery(recovery.id).steps + store.get_recovery(r2.id).steps
    assert [s.status for s in got] == [StepStatus.PENDING] + [StepStatus.SUCCEEDED] * 5


def test_a_token_for_a_segment_never_taken_is_refused(store: SqlStore) -> None:
    add_host(store, "n1")
    with acting_as(OwnerToken("seg", "vigil-a", 1)), pytest.raises(StaleEpoch, match="no owner"):
        store.set_host_state("n1", HostState.SUSPECT, reason="x", at=T0)
    assert store.get_host("n1").state is HostState.UP


def _running_restart(store: SqlStore, host: str, instance: str) -> int:
    """A guest failure of ``instance`` on ``host`` whose restart is RUNNING."""
    failure, _, _ = store.record_guest_report(
        GuestReport(f"r-{instance}", host, instance, GuestFailureKind.CRASHED, at=T0),
        reason="crashed",
        received_at=T0,
    )
    store.update_guest_failure(failure.id, at=T0 + 1, action_status=StepStatus.RUNNING)
    return failure.id


def test_a_takeover_requeues_the_restarts_and_requests_of_its_segment_only(
    store: SqlStore,
) -> None:
    add_host(store, "n1")
    add_host(store, "n2", segment="seg2")
    f1, f2 = _running_restart(store, "n1", "vm-1"), _running_restart(store, "n2", "vm-2")
    requests = [
        store.add_request(RequestKind.RESTART_INSTANCE, vm, host=host, reason="op", at=T0)
        for vm, host in (("vm-1", "n1"), ("vm-2", "n2"), ("vm-3", None))
    ]
    for r in requests:
        store.start_request(r.id, at=T0 + 1)

    assert store.requeue_running_guest_actions(at=T0 + 10, segment="seg2") == 1
    assert store.get_guest_failure(f1).action_status is StepStatus.RUNNING
    assert store.get_guest_failure(f2).action_status is StepStatus.PENDING
    assert store.requeue_running_requests(at=T0 + 10, segment="seg2", hostless=False) == 1
    assert [store.get_request(r.id).status for r in requests] == [
        StepStatus.RUNNING,
        StepStatus.PENDING,
        StepStatus.RUNNING,
    ]
    assert store.requeue_running_requests(at=T0 + 10, segment="seg") == 2  # n1's, no host's
    assert store.requeue_running_guest_actions(at=T0 + 10) == 1  # a restart: every one


def test_restarts_and_requests_under_a_stale_epoch_are_refused(store: SqlStore) -> None:
    add_host(store, "n1")
    failure = _running_restart(store, "n1", "vm-1")
    request = store.add_request(RequestKind.RESTORE_HOST, "n1", host="n1", reason="op", at=T0)
    old = store.take_segment("seg", "vigil-a", at=T0)
    token = OwnerToken("seg", old.owner, old.epoch)
    with acting_as(token):
        store.start_request(request.id, at=T0 + 1)
    store.take_segment("seg", "vigil-b", at=T0 + 2)
    with acting_as(token), pytest.raises(StaleEpoch):
        store.update_guest_failure(failure, at=T0 + 3, action_status=StepStatus.SUCCEEDED)
    with acting_as(token), pytest.raises(StaleEpoch):
        store.finish_request(request.id, StepStatus.SUCCEEDED, at=T0 + 3)
    assert store.get_guest_failure(failure).action_status is StepStatus.RUNNING
    assert store.get_request(request.id).status is StepStatus.RUNNING


def test_a_takeover_requeues_the_running_steps_of_its_segment_only(store: SqlStore) -> None:
    a = open_recovery(store, "n1").steps
    store.create_segment(Segment("seg2"))
    store.create_host(Host("n2", "seg2", state=HostState.SUSPECT))
    b = store.open_host_recovery(
        host="n2", reason="no heartbeat", sources=["heartbeat"], at=T0, steps=PLAN
    ).steps
    store.start_step(a[0].id, at=T0 + 1)
    store.start_step(b[0].id, at=T0 + 1)

    assert store.requeue_running_steps(at=T0 + 10, segment="seg2") == 1
    assert store.get_recovery(a[0].recovery_id).steps[0].status is StepStatus.RUNNING
    assert store.get_recovery(b[0].recovery_id).steps[0].status is StepStatus.PENDING


@pytest.mark.parametrize("db_url", SERVERS, indirect=True)
def test_an_owner_frozen_in_the_middle_of_a_write_holds_no_takeover_up(
    db_url: str, store: SqlStore
) -> None:
    """The previous owner stopped (SIGSTOP) between its epoch check and its commit: it
    holds the segment's row shared. The next owner does not wait for it (the keeper must
    go on renewing its other segments): refused for now, and taken once the database has
    ended the frozen session; the frozen write, when it wakes, commits nothing."""
    add_host(store, "n1")
    old = store.take_segment("seg", "vigil-a", at=T0)
    frozen = SqlStore(db_url, idle_transaction_timeout=1)
    taker = SqlStore(db_url, idle_transaction_timeout=1)
    try:
        connection = frozen.engine.connect()
        transaction = connection.begin()
        session = sa.orm.Session(bind=connection)
        frozen._check_token(session, OwnerToken("seg", "vigil-a", old.epoch))  # FOR SHARE
        with pytest.raises(StoreUnavailable, match="database unavailable"):
            taker.take_segment("seg", "vigil-b", at=T0 + 1)  # NOWAIT: not a wait
        taken = wait_until(
            lambda: _try(lambda: taker.take_segment("seg", "vigil-b", at=T0 + 2)),
            "the frozen session to end",
            15,
            every=0.2,
        )
        assert (taken.owner, taken.epoch) == ("vigil-b", old.epoch + 1)
        # The frozen owner wakes up and finishes its write: the server ended its session.
        with pytest.raises(sa.exc.DBAPIError):
            session.execute(
                sa.update(HostRow).where(HostRow.name == "n1").values(state_reason="stale")
            )
            transaction.commit()
        assert store.get_host("n1").state_reason != "stale"
        connection.invalidate()
    finally:
        frozen.close()
        taker.close()


def test_an_unreachable_database_is_unavailable_not_a_crash() -> None:
    store = SqlStore("postgresql+psycopg://vigil@127.0.0.1:1/vigil")  # nothing listens
    try:
        with pytest.raises(StoreUnavailable, match="database unavailable"):
            store.list_segments()
    finally:
        store.close()


def _try(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except StoreUnavailable:
        return None


# --- control --------------------------------------------------------------------------


def test_control(store: SqlStore) -> None:
    assert store.get_control() == Control()
    paused = store.set_control(paused=True, reason="datacenter work", at=T0)
    assert paused == Control(paused=True, reason="datacenter work", changed_at=T0)
    assert store.get_control() == paused
    store.set_control(paused=False, reason="", at=T0 + 1)
    assert store.get_control() == Control(paused=False, reason="", changed_at=T0 + 1)


# --- concurrency ----------------------------------------------------------------------


def test_concurrent_observations_fold_into_one_failure(store: SqlStore) -> None:
    add_host(store, "n1", state=HostState.SUSPECT)

    def observe(worker: int) -> None:
        for i in range(25):
            store.record_failure(
                host="n1", kind=DOWN, reason="", source=f"observer-{worker}", at=T0 + i
            )

    assert run_in_threads(8, observe) == [None] * 8
    [failure] = store.list_failures(host="n1")
    assert failure.count == 200
    assert sorted(failure.sources) == [f"observer-{w}" for w in range(8)]
    assert failure.last_seen == T0 + 24


def test_concurrent_declarations_open_one_recovery(store: SqlStore) -> None:
    add_host(store, "n1", state=HostState.SUSPECT)

    def declare(worker: int) -> Recovery:
        return store.open_host_recovery(
            host="n1", reason="", sources=[f"observer-{worker}"], at=T0, steps=PLAN
        )

    results = run_in_threads(6, declare)
    opened = [r for r in results if isinstance(r, Recovery)]
    assert len(opened) == 1
    assert all(isinstance(r, InvalidTransition) for r in results if r is not opened[0])
    assert store.list_recoveries() == opened
    assert store.get_failure(opened[0].failure_id).count == 1


def test_concurrent_planning_numbers_steps_uniquely(store: SqlStore) -> None:
    add_host(store, "n1", state=HostState.SUSPECT)
    recovery = store.open_host_recovery(
        host="n1",
        reason="",
        sources=["heartbeat"],
        at=T0,
        steps=[NewStep(StepKind.LIST_INSTANCES) for _ in range(8)],
    )
    for step in recovery.steps:
        store.start_step(step.id, at=T0)

    def plan(worker: int) -> None:
        store.finish_step(
            recovery.steps[worker].id,
            StepStatus.SUCCEEDED,
            at=T0 + 1,
            new_steps=[NewStep(StepKind.EVACUATE, f"i-{worker}-{n}") for n in range(3)],
        )

    assert run_in_threads(8, plan) == [None] * 8
    steps = store.get_recovery(recovery.id).steps
    assert [s.seq for s in steps] == list(range(1, 33))
    assert len({s.instance_id for s in steps[8:]}) == 24


# --- schema ---------------------------------------------------------------------------


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrade_again_changes_nothing(db_url: str) -> None:
    upgrade(db_url)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == head
    finally:
        engine.dispose()


def test_upgrade_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    store = SqlStore(url)
    try:
        assert store.create_segment(Segment("a")).name == "a"
    finally:
        store.close()


# --- the outbox, sinks, subscriptions, consumer steps -------------------------------------


def _event(host: str = "node1", n: int = 0) -> Event:
    return make_event("vigil.host.failure.suspected", at=T0 + n, host=host, reason=f"r{n}")


def test_events_are_committed_with_their_change_and_listed_in_order(store: SqlStore) -> None:
    add_host(store, "node1")
    add_host(store, "node2")
    base = store.last_event_seq()
    first, second, third = _event(n=1), _event("node2", 2), _event(n=3)
    store.set_host_state("node1", HostState.SUSPECT, reason="x", at=T0, events=[first])
    store.set_host_state("node2", HostState.SUSPECT, reason="x", at=T0, events=[second])
    with pytest.raises(InvalidTransition):  # refused change: its event is not written either
        store.set_host_state("node1", HostState.RECOVERED, reason="x", at=T0, events=[_event()])
    store.append_events([third])
    events = store.list_events(after=base)
    assert [e.id for e in events] == [first.id, second.id, third.id]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert events[0].payload == first.payload and events[0].timestamp == T0 + 1
    assert [e.id for e in store.list_events(after=base, host="node2")] == [second.id]
    assert [e.id for e in store.list_events(after=events[0].seq, limit=1)] == [second.id]
    assert store.last_event_seq() == events[-1].seq


@pytest.mark.parametrize("db_url", SERVERS, indirect=True)
def test_servers_starting_together_each_get_the_one_sink(db_url: str, store: SqlStore) -> None:
    """Three servers start at once on an empty database: each registers the sink of its
    notifier; one creates it, the others get it (a server crashed at start-up on this)."""
    stores = [SqlStore(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def start(one: SqlStore) -> Any:
        barrier.wait()
        return one.ensure_sink("memory")

    try:
        for _ in range(5):
            with store.engine.begin() as c:
                c.execute(sa.text("DELETE FROM sinks"))
            with ThreadPoolExecutor(len(stores)) as pool:
                states = list(pool.map(start, stores))
            assert {(x.name, x.cursor) for x in states} == {("memory", 0)}
    finally:
        for one in stores:
            one.close()


def test_sink_cursor_failures_and_dead_letters(store: SqlStore) -> None:
    add_host(store)
    store.append_events([_event(n=1)])
    sink = store.ensure_sink("bus")
    assert sink.cursor == store.last_event_seq()  # a new sink starts at the end
    assert store.ensure_sink("bus") == sink
    e2, e3 = _event(n=2), _event(n=3)
    store.append_events([e2, e3])
    s2, s3 = store.list_events(after=sink.cursor)
    store.sink_failed("bus", attempts=2, next_attempt_at=T0 + 9, error="503")
    assert store.get_sink("bus") == SinkState("bus", sink.cursor, 2, T0 + 9, "503")
    store.dead_letter("bus", s2, attempts=3, error="503 again", at=T0 + 10)
    assert store.get_sink("bus") == SinkState("bus", s2.seq, 0, 0.0, "503 again")
    (letter,) = store.list_dead_letters(sink="bus")
    assert (letter.event_id, letter.event_seq, letter.attempts) == (e2.id, s2.seq, 3)
    store.sink_delivered("bus", s3.seq)
    store.sink_delivered("bus", s2.seq)  # never backwards
    assert store.get_sink("bus").cursor == s3.seq
    with pytest.raises(NotFoundError):
        store.get_sink("nowhere")


def test_events_about_an_instance_carry_its_project_and_a_project_sees_its_own(
    store: SqlStore,
) -> None:
    store.note_instance_projects({"vm-a": "alpha", "vm-b": "beta"})
    store.note_instance_projects({"vm-a": "alpha"})  # the same again: nothing written
    store.append_events(
        [
            make_event("vigil.consumer.action", at=T0, action="restart", instance_id=vm)
            for vm in ("vm-a", "vm-b", "vm-unknown")
        ]
        + [make_event("vigil.host.restored", at=T0, host="c1", reason="operator")]
    )
    projects = {e.instance_id: e.project_id for e in store.list_events()}
    assert projects == {"vm-a": "alpha", "vm-b": "beta", "vm-unknown": None, None: None}
    assert [e.instance_id for e in store.list_events(project_id="alpha")] == ["vm-a"]
    assert store.instance_projects(["vm-a", "vm-unknown"]) == {"vm-a": "alpha"}
    for vm in ("vm-a", "vm-b"):
        store.set_instance_policy(InstancePolicy(vm, HaPolicy.NOTIFY))
    assert [p.instance_id for p in store.list_instance_policies(project_id="beta")] == ["vm-b"]
    # A project member's subscription is sent that project's events only.
    sub = Subscription("a", "https://a.example/hook", "s" * 20, created_at=T0, project_id="alpha")
    store.create_subscription(sub, sink="webhook:a")
    assert [s.name for s in store.list_subscriptions(project_id="alpha")] == ["a"]
    assert store.list_subscriptions(project_id="beta") == []
    wanted = [e.instance_id for e in store.list_events() if store.get_subscription("a").wants(e)]
    assert wanted == ["vm-a"]


def test_subscriptions_with_their_sink(store: SqlStore) -> None:
    sub = Subscription("ops", "https://ops.example/hook", "s" * 20, ("vigil.recovery.*",), T0)
    created = store.create_subscription(sub, sink="webhook:ops")
    assert (created.name, created.url, created.secret, created.event_types) == (
        sub.name,
        sub.url,
        sub.secret,
        sub.event_types,
    )
    assert store.get_sink("webhook:ops").cursor == store.last_event_seq()
    with pytest.raises(AlreadyExists):
        store.create_subscription(sub, sink="webhook:ops")
    assert [s.name for s in store.list_subscriptions()] == ["ops"]
    assert store.get_subscription("ops").wants(Event("e", "vigil.recovery.end", T0))
    assert not store.get_subscription("ops").wants(Event("e", "vigil.host.fence.end", T0))
    store.delete_subscription("ops", sink="webhook:ops")
    assert store.list_subscriptions() == []
    with pytest.raises(NotFoundError):
        store.get_sink("webhook:ops")
    with pytest.raises(NotFoundError):
        store.delete_subscription("ops", sink="webhook:ops")


def test_consumer_steps_reopen_a_finished_recovery(store: SqlStore) -> None:
    recovery = open_recovery(store)
    store.finish_recovery(recovery.id, RecoveryStatus.SUCCEEDED, at=T0 + 5)
    reopened = store.add_steps(
        recovery.id,
        [NewStep(StepKind.EVACUATE, "vm-1", "db", target_host="node9")],
        at=T0 + 9,
        reason="consumer asked",
        events=[_event(n=9)],
    )
    assert reopened.status is RecoveryStatus.RUNNING and reopened.finished_at is None
    step = reopened.steps[-1]
    assert (step.seq, step.kind, step.target_host) == (4, StepKind.EVACUATE, "node9")
    assert store.get_failure(recovery.failure_id).status is FailureStatus.RECOVERING
    store.finish_recovery(recovery.id, RecoveryStatus.SUCCEEDED, at=T0 + 10)
    with pytest.raises(InvalidTransition):  # only new steps reopen it
        store.set_recovery_status(recovery.id, RecoveryStatus.RUNNING, at=T0 + 11)


def test_a_failure_is_handled_only_once_its_recovery_ended(store: SqlStore) -> None:
    recovery = open_recovery(store)
    with pytest.raises(InvalidTransition):
        store.resolve_failure(recovery.failure_id, at=T0 + 1, reason="by hand")
    store.finish_recovery(recovery.id, RecoveryStatus.FAILED, at=T0 + 2, reason="fence failed")
    done = store.resolve_failure(recovery.failure_id, at=T0 + 3, reason="by hand")
    assert done.status is FailureStatus.RESOLVED
    assert store.get_host("node1").state is HostState.RECOVERED


# --- host services ------------------------------------------------------------------------


def test_a_service_snapshot_is_replaced_only_by_a_newer_one(store: SqlStore) -> None:
    add_host(store)
    down = {
        "nova-compute": ServiceState(False, T0, "no process"),
        "libvirtd": ServiceState(True, T0 - 60, "pid 7"),
    }
    seen: list[tuple[HostServices | None, HostServices]] = []

    def events(old: HostServices | None, new: HostServices) -> list[Any]:
        seen.append((old, new))
        return [_event(n=len(seen))]

    first, newer = store.record_host_services(
        "node1", down, reported_at=T0, at=T0 + 0.1, events=events
    )
    assert newer and first.down == ("nova-compute",) and first.hold is ComputeHold.NONE
    assert first.services["nova-compute"] == ServiceState(False, T0, "no process")
    up = {**down, "nova-compute": ServiceState(True, T0 + 5, "pid 9")}
    stale, newer = store.record_host_services(
        "node1", up, reported_at=T0 - 1, at=T0 + 6, events=events
    )
    assert not newer and stale == first  # a retry overtaken by a later report
    held = store.set_compute_hold(
        "node1", ComputeHold.DISABLED, "vigil: host services down: nova-compute", at=T0 + 7
    )
    assert held.hold is ComputeHold.DISABLED
    latest, newer = store.record_host_services(
        "node1", up, reported_at=T0 + 5, at=T0 + 8, events=events
    )
    assert newer and latest.down == () and latest.hold is ComputeHold.DISABLED  # hold kept
    assert [old for old, _ in seen] == [None, held]
    assert len(store.list_events(limit=10)) == 2  # written with the snapshots, not the stale one
    assert store.list_host_services() == [latest]
    assert store.get_host_services("node1") == latest and store.get_host_services("x") is None


def test_host_services_need_a_known_host_and_go_with_it(store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        store.record_host_services("ghost", {}, reported_at=T0, at=T0)
    add_host(store)
    store.record_host_services("node1", {}, reported_at=T0, at=T0)
    with pytest.raises(NotFoundError):
        store.set_compute_hold("node2", ComputeHold.LEFT, "", at=T0)
    store.delete_host("node1")
    assert store.list_host_services() == []


# --- ids are never given again (issue 13) ----------------------------------------------


def test_a_deleted_rows_id_is_never_given_again(store: SqlStore) -> None:
    """An old client's id (Masakari's API puts them in URLs) must not address a newer
    record: SQLite reuses the highest deleted rowid unless the table has AUTOINCREMENT."""
    store.create_segment(Segment("first"))
    last = store.create_segment(Segment("second"))
    store.delete_segment("second")
    assert store.create_segment(Segment("third")).id > last.id
    old_host = add_host(store, "node1", segment="first")
    store.delete_host("node1")
    assert add_host(store, "node2", segment="first").id > old_host.id
    add_host(store, "node3", segment="first")
    old_failure, _ = store.record_failure(
        host="node3", kind=DOWN, reason="r", source="heartbeat", at=T0
    )
    store.delete_host("node3")  # its failures go with it
    add_host(store, "node4", segment="first")
    failure, _ = store.record_failure(host="node4", kind=DOWN, reason="r", source="x", at=T0)
    assert failure.id > old_failure.id


def test_migration_0007_keeps_every_row_and_link_on_sqlite(tmp_path: Path) -> None:
    """The tables are copied to add AUTOINCREMENT: no row may be lost on the way (a
    cascade from the copy would empty failures, recoveries and steps)."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "0006")
            # Today's store writes the rows of 0006: the columns added since are added
            # for it and dropped again before the upgrade.
            connection.exec_driver_sql("ALTER TABLE steps ADD COLUMN status_before VARCHAR(32)")
            connection.exec_driver_sql("ALTER TABLE steps ADD COLUMN epoch INTEGER")
            connection.exec_driver_sql("CREATE TABLE revisions (id INTEGER PRIMARY KEY, n, full)")
            connection.exec_driver_sql("CREATE TABLE host_revisions (host PRIMARY KEY, revision)")
        old = SqlStore(url)
        recovery = open_recovery(old, "node1")
        old.create_segment(Segment("spare"))
        old.delete_segment("spare")
        old.close()
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE steps DROP COLUMN status_before")
            connection.exec_driver_sql("ALTER TABLE steps DROP COLUMN epoch")
            connection.exec_driver_sql("DROP TABLE revisions")
            connection.exec_driver_sql("DROP TABLE host_revisions")
        upgrade(url)

        def count(c: sa.Connection, sql: str) -> Any:
            return c.exec_driver_sql(sql).all()

        with engine.connect() as c:
            assert count(c, "PRAGMA foreign_key_check") == []
            assert (
                "AUTOINCREMENT"
                in count(c, "SELECT sql FROM sqlite_master WHERE name = 'segments'")[0][0]
            )
        store = SqlStore(url)
        try:
            assert store.get_recovery(recovery.id).steps == recovery.steps
            assert store.get_host("node1").segment == "seg"
            # From now on a deleted id stays taken.
            new = store.create_segment(Segment("new"))
            store.delete_segment("new")
            assert store.create_segment(Segment("newer")).id > new.id
        finally:
            store.close()
    finally:
        engine.dispose()


# --- change revisions (what the engine reads again) --------------------------------------


def changed_by(store: SqlStore, write: Callable[[], Any]) -> tuple[int, frozenset[str], bool]:
    """What ``write`` changed by the store's revisions: how much the revision rose, the
    hosts it names, whether everything must be read again."""
    before = store.changes_since(1 << 62)
    write()
    after = store.changes_since(before.revision)
    return after.revision - before.revision, after.hosts, after.full != before.full


def test_each_write_names_the_hosts_it_changed_and_nothing_else(store: SqlStore) -> None:
    add_host(store, "n1")
    add_host(store, "n2")
    assert changed_by(store, lambda: add_host(store, "n3")) == (1, {"n3"}, False)
    assert changed_by(
        store, lambda: store.set_host_state("n1", HostState.SUSPECT, reason="silent", at=T0)
    ) == (1, {"n1"}, False)
    assert changed_by(store, lambda: store.update_host("n2", maintenance=True)) == (
        1,
        {"n2"},
        False,
    )
    recovery: list[Recovery] = []
    rose, hosts, full = changed_by(store, lambda: recovery.append(open_recovery(store, "n4")))
    assert (rose, hosts, full) == (2, {"n4"}, False)  # created in one write, opened in one
    first = recovery[0].steps[0]
    # A step's writes name the host of its recovery.
    assert changed_by(store, lambda: store.start_step(first.id, at=T0 + 1)) == (1, {"n4"}, False)
    assert changed_by(
        store, lambda: store.finish_step(first.id, StepStatus.SUCCEEDED, at=T0 + 2)
    ) == (1, {"n4"}, False)
    # Reads change nothing; the cloud-wide pause and segments change no host.
    assert changed_by(store, lambda: (store.list_hosts(), store.list_recoveries())) == (
        0,
        frozenset(),
        False,
    )
    assert changed_by(store, lambda: store.set_control(paused=True, reason="x", at=T0)) == (
        1,
        frozenset(),
        False,
    )
    assert changed_by(store, lambda: store.update_segment("seg", paused=True)) == (
        1,
        frozenset(),
        False,
    )


def test_changes_name_every_host_changed_since_the_revision_asked_about(store: SqlStore) -> None:
    add_host(store, "n1")
    start = store.changes_since(0).revision
    add_host(store, "n2")
    store.set_host_state("n1", HostState.SUSPECT, reason="silent", at=T0)
    middle = store.changes_since(0).revision
    store.set_host_state("n1", HostState.UP, reason="back", at=T0 + 1)
    assert store.changes_since(start).hosts == {"n1", "n2"}
    assert store.changes_since(middle).hosts == {"n1"}
    assert store.changes_since(store.changes_since(0).revision).hosts == frozenset()


def test_what_cannot_be_told_host_by_host_asks_for_everything_again(store: SqlStore) -> None:
    """A host deleted, steps requeued in bulk: ``full`` rises."""
    add_host(store, "n1")
    add_host(store, "n2")
    assert changed_by(store, lambda: store.delete_host("n2"))[2]
    steps = open_recovery(store, "n3").steps
    store.start_step(steps[0].id, at=T0 + 1)
    assert changed_by(store, lambda: store.requeue_running_steps(at=T0 + 2))[2]
    assert not changed_by(store, lambda: store.requeue_running_steps(at=T0 + 3))[2]


def test_a_refused_write_raises_no_revision(store: SqlStore) -> None:
    add_host(store, "n1")
    with pytest.raises(InvalidTransition):  # UP -> RECOVERED is not a transition
        changed_by(
            store, lambda: store.set_host_state("n1", HostState.RECOVERED, reason="x", at=T0)
        )
    assert store.changes_since(store.changes_since(0).revision - 0).hosts == frozenset()
    before = store.changes_since(0).revision
    with pytest.raises(InvalidTransition):
        store.set_host_state("n1", HostState.RECOVERED, reason="x", at=T0)
    assert store.changes_since(0).revision == before


def test_concurrent_writers_take_distinct_revisions_in_commit_order(store: SqlStore) -> None:
    """Writers of different hosts, and of steps of one host, at once: each takes its own
    revision (none waits for another for ever: no deadlock between the counter and the
    rows), and a reader that saw revision r sees every change after r later."""
    names = [f"n{i}" for i in range(8)]
    for name in names:
        add_host(store, name)
    steps = open_recovery(store, "busy").steps
    start = store.changes_since(0).revision
    seen: list[frozenset[str]] = []

    def work(i: int) -> None:
        if i < len(names):
            store.set_host_state(names[i], HostState.SUSPECT, reason="silent", at=T0)
        else:
            store.start_step(steps[i - len(names)].id, at=T0)

    reader_done = threading.Event()

    def reader() -> None:
        held = start
        while True:
            last = reader_done.is_set()
            changes = store.changes_since(held)
            seen.append(changes.hosts)
            held = changes.revision
            if last:
                return

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        results = run_in_threads(len(names) + len(steps), work)
    finally:
        reader_done.set()
        watcher.join()
    assert [r for r in results if r is not None] == []
    end = store.changes_since(start)
    assert end.revision - start == len(names) + len(steps)
    assert end.hosts == {*names, "busy"}
    # Followed revision by revision while the writes went on, the reader missed none.
    assert set().union(*seen) == {*names, "busy"}


# --- hosts in batches -------------------------------------------------------------------


def test_hosts_created_in_a_batch_all_or_none(store: SqlStore) -> None:
    add_host(store, "n1")
    with pytest.raises(AlreadyExists, match="'n1'"):
        store.create_hosts([Host("n2", "seg"), Host("n1", "seg")])
    with pytest.raises(NotFoundError, match="'elsewhere'"):
        store.create_hosts([Host("n2", "seg"), Host("n3", "elsewhere")])
    with pytest.raises(ValueError, match="n2"):
        store.create_hosts([Host("n2", "seg"), Host("n2", "seg")])
    assert [h.name for h in store.list_hosts()] == ["n1"]
    made = store.create_hosts([Host(f"b{i:04d}", "seg") for i in range(1200)])
    assert len(made) == 1200 and len(store.list_hosts()) == 1201
    assert store.changes_since(0).hosts >= {h.name for h in made}


def test_host_changes_in_a_batch_leave_out_the_moves_not_allowed(store: SqlStore) -> None:
    add_host(store, "up", state=HostState.UP)
    add_host(store, "suspect", state=HostState.SUSPECT)
    add_host(store, "new", state=HostState.NEW)
    cleared = make_event("vigil.host.failure.cleared", at=T0, host="suspect", reason="back")
    refused = make_event("vigil.host.failure.cleared", at=T0, host="up", reason="x")
    done = store.change_hosts(
        [
            HostChange("suspect", HostState.UP, "heartbeats resumed", events=(cleared,)),
            HostChange("new", HostState.UP, "first heartbeat", boot_id="k1"),
            HostChange("up", HostState.RECOVERED, "not allowed", events=(refused,)),
            HostChange("gone", HostState.UP, "deleted meanwhile"),
        ],
        at=T0,
    )
    assert sorted(done) == ["new", "suspect"]
    assert store.get_host("suspect").state == HostState.UP
    new = store.get_host("new")
    assert (new.state, new.boot_id, new.state_reason) == (HostState.UP, "k1", "first heartbeat")
    assert store.get_host("up").state == HostState.UP
    assert [e.id for e in store.list_events()] == [cleared.id]  # the refused one's not


@pytest.mark.parametrize("db_url", SERVERS, indirect=True)
def test_a_store_call_waits_for_a_free_connection_at_most_pool_timeout(db_url: str) -> None:
    """``[database] max_pool_size``, ``max_overflow``, ``pool_timeout``: with every
    connection taken, a store call waits for one, then fails as the store unavailable
    (not forever, not with a crash)."""
    store = SqlStore(db_url, pool=(1, 0, 1.0))
    try:
        held = store.engine.connect()  # the one connection
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="database unavailable"):
            store.list_segments()
        assert 1.0 <= time.monotonic() - started < 5.0
        held.close()
        store.list_segments()  # a connection free again: answered
    finally:
        store.close()


def test_a_cluster_is_recorded_as_it_is_built_and_found_by_its_members(store: SqlStore) -> None:
    made = store.add_cluster(
        Cluster(
            "c-1",
            "db",
            "alpha",
            ClusterStatus.BUILDING,
            2,
            "img",
            "flavor",
            "private",
            want_vip=True,
            authkey="a2V5",
            created_at=1.0,
            updated_at=1.0,
        )
    )
    assert made.status == ClusterStatus.BUILDING and made.members == ()
    with pytest.raises(AlreadyExists):  # one name per project
        store.add_cluster(replace(made, id="c-2"))
    store.add_cluster(replace(made, id="c-3", project_id="beta"))  # another project's
    members = (
        ClusterMember("db-1", "10.0.0.11", "p1", "vm-1"),
        ClusterMember("db-2", "10.0.0.12", "p2"),
    )
    updated = store.update_cluster("c-1", at=2.0, members=members, vip="10.0.0.10")
    assert updated.members == members and updated.vip == "10.0.0.10" and updated.updated_at == 2.0
    assert store.get_cluster("c-1") == updated
    assert [c.id for c in store.list_clusters(project_id="alpha")] == ["c-1"]
    store.delete_cluster("c-1")
    with pytest.raises(NotFoundError):
        store.get_cluster("c-1")
    with pytest.raises(NotFoundError):
        store.update_cluster("c-1", at=3.0, status=ClusterStatus.ACTIVE)
