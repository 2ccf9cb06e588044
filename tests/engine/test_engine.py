"""The engine cycle on a fake clock: detection timing to the tick, and the whole recovery
with its events in order — no sockets, no sleeping, the same decisions as production."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
from support.cloud import until
from support.world import HOSTS, TICK, HostFailureWorld, World

from vigil.config import RecoverySettings
from vigil.drivers.compute import Server
from vigil.drivers.errors import TemporaryError
from vigil.engine import steps
from vigil.events import payload_schema
from vigil.model import (
    HaPolicy,
    HostState,
    Recovery,
    RecoveryStatus,
    Step,
    StepKind,
    StepStatus,
)
from vigil.sim.cloud import SimLatency
from vigil.sim.drivers import SimCompute


@pytest.fixture
def world(tmp_path: Path) -> Iterator[HostFailureWorld]:
    with HostFailureWorld(tmp_path) as w:
        w.settle()
        yield w


def run_until_silent_for(
    w: HostFailureWorld, host: str, seconds: float
) -> list[tuple[float, HostState]]:
    """Tick until the host has been silent ``seconds``; record its state after each tick."""
    start = w.clock.monotonic()
    seen = []
    while w.clock.monotonic() - start < seconds:
        w.tick()
        seen.append((round(w.clock.monotonic() - start, 3), w.state(host)))
    return seen


def first(seen: list[tuple[float, HostState]], state: HostState) -> float:
    return next(t for t, s in seen if s == state)


def test_isolated_host_declared_exactly_at_failed_after(world: HostFailureWorld) -> None:
    world.cloud.isolate("c1")
    seen = run_until_silent_for(world, "c1", 2.5)
    det = world.settings.detection
    # the last heartbeat arrived up to one interval before the isolation
    assert det.suspect_after - det.heartbeat_interval <= first(seen, HostState.SUSPECT)
    assert first(seen, HostState.SUSPECT) <= det.suspect_after + TICK
    assert first(seen, HostState.FAILED) <= det.failed_after + TICK
    assert first(seen, HostState.FAILED) >= det.failed_after - det.heartbeat_interval
    # never declared before failed_after while the BMC read "on"
    assert all(s != HostState.FAILED for t, s in seen if t < det.failed_after - 0.25)


def test_power_loss_declared_as_soon_as_the_bmc_reads_off(world: HostFailureWorld) -> None:
    world.cloud.power_loss("c1")
    seen = run_until_silent_for(world, "c1", 2.0)
    # BMC corroboration: declared a tick or two after suspicion, well before failed_after
    assert first(seen, HostState.FAILED) - first(seen, HostState.SUSPECT) <= 3 * TICK
    assert first(seen, HostState.FAILED) < world.settings.detection.failed_after


def test_a_heartbeat_clears_suspicion_and_nothing_is_fenced(world: HostFailureWorld) -> None:
    world.cloud.isolate("c1")
    seen = run_until_silent_for(world, "c1", 1.3)
    assert seen[-1][1] == HostState.SUSPECT
    world.cloud.reconnect("c1")
    for _ in range(10):
        world.tick()
    assert world.state("c1") == HostState.UP
    assert world.store.list_recoveries() == []
    assert world.cloud.calls("bmc_power_off") == 0


def test_whole_recovery_on_the_fake_clock_with_events_in_order(world: HostFailureWorld) -> None:
    world.cloud.isolate("c1")
    world.tick_until(lambda: world.recovery_status("c1") == RecoveryStatus.SUCCEEDED, timeout=10)
    (recovery,) = world.store.list_recoveries(host="c1")
    assert recovery.status == RecoveryStatus.SUCCEEDED
    assert world.state("c1") == HostState.RECOVERED
    assert not world.cloud.is_powered("c1")
    for iid in world.instances:
        inst = world.cloud.instance(iid)
        assert inst.status == "ACTIVE" and inst.host != "c1"
        assert world.cloud.calls("evacuate", iid) == 1
    assert world.cloud.double_running() == []
    # highest priority planned first
    evac = [s for s in recovery.steps if s.kind == "evacuate"]
    assert [s.instance_name for s in evac] == ["vm2", "vm1", "vm0"]
    # each evacuation carries, as its input, the status its instance had before the failure
    assert [s.status_before for s in evac] == ["ACTIVE"] * 3
    events = world.store.list_events(limit=1000)
    every_type = [e.event_type for e in events]
    # The instances' states are recorded beside the fence, before the planning listing.
    record_end = every_type.index("vigil.host.instances.record.end")
    assert every_type.index("vigil.host.instances.record.start") < record_end
    assert record_end < every_type.index("vigil.host.instances.list.start")
    types = [t for t in every_type if ".instances.record." not in t]
    assert types[:8] == [
        "vigil.host.failure.suspected",
        "vigil.host.failure.confirmed",
        "vigil.host.fence.start",
        "vigil.host.fence.end",
        "vigil.host.compute.force_down.start",
        "vigil.host.compute.force_down.end",
        "vigil.host.instances.list.start",
        "vigil.host.instances.list.end",
    ]
    evacuations = [t for t in types[8:-1] if t.startswith("vigil.instance.evacuate")]
    assert sorted(evacuations) == sorted(
        ["vigil.instance.evacuate.start"] * 3 + ["vigil.instance.evacuate.end"] * 3
    )
    assert types[-1] == "vigil.recovery.end"
    assert all(e.host == "c1" for e in events)
    assert len({e.id for e in events}) == len(every_type)  # idempotency keys
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    for event in events:  # every emitted event matches its published schema
        jsonschema.validate(event.payload, payload_schema(event.event_type))


def _recover(w: HostFailureWorld, host: str) -> None:
    w.tick_until(lambda: w.recovery_ended(host), f"the recovery of {host} to end", timeout=20)


def _stall_world(tmp_path: Path, compute: type[SimCompute] = SimCompute) -> HostFailureWorld:
    """A world whose Nova loses the first evacuation it accepts (its API died between
    saving REBUILD and sending the request on), with a short stall timeout."""
    recovery = RecoverySettings(
        poll_interval=0.05,
        evacuate_stall_timeout=0.4,
        # The fake clock jumps while a step polls: kept short of failed_after, so that
        # the hosts that beat on keep reading up.
        evacuate_confirm_timeout=1.0,
        step_attempts=3,
    )
    w = HostFailureWorld(tmp_path, recovery, compute)
    w.settle()
    w.cloud.lose_evacuations(1)
    return w


def test_an_evacuation_nova_lost_is_reset_and_asked_for_once_more(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _stall_world(tmp_path) as w:
        w.cloud.isolate("c1")
        _recover(w, "c1")
        (recovery,) = w.store.list_recoveries(host="c1")
        assert recovery.status == RecoveryStatus.SUCCEEDED
        for iid in w.instances:
            inst = w.cloud.instance(iid)
            assert inst.status == "ACTIVE" and inst.host != "c1"
        # exactly one instance was lost, reset once and evacuated a second time
        assert w.cloud.calls("reset_state") == 1
        assert sorted(w.cloud.calls("evacuate", i) for i in w.instances) == [1, 1, 2]
        assert w.cloud.double_running() == []
        lost = next(s for s in recovery.steps if s.kind == "evacuate" and s.attempts == 2)
        assert w.cloud.calls("reset_state", lost.instance_id) == 1
        said = [m for m in caplog.messages if "never took the evacuation up" in m]
        assert len(said) == 1 and "host c1" in said[0] and str(lost.instance_id) in said[0]


class _CannotTell(SimCompute):
    """Every conductor down: Nova's record cannot say whether the request waits in a queue."""

    def evacuation_started(self, server_id: str) -> bool | None:
        return None


def test_an_evacuation_that_may_still_be_queued_is_never_asked_for_twice(
    tmp_path: Path,
) -> None:
    with _stall_world(tmp_path, _CannotTell) as w:
        w.cloud.isolate("c1")
        _recover(w, "c1")
        (recovery,) = w.store.list_recoveries(host="c1")
        assert recovery.status == RecoveryStatus.FAILED
        assert w.cloud.calls("reset_state") == 0
        assert all(w.cloud.calls("evacuate", i) == 1 for i in w.instances)
        stuck = [i for i in w.instances if w.cloud.instance(i).status == "REBUILD"]
        assert len(stuck) == 1 and w.cloud.instance(stuck[0]).host == "c1"


def test_an_instance_with_a_task_in_progress_is_not_evacuated_yet(world: HostFailureWorld) -> None:
    """Nova 34 accepts a second evacuation of an instance still being rebuilt: the step
    reads the instance and asks Nova only when no task is in progress."""
    iid = world.instances[0]
    busy = replace(world.cloud.get_server(iid), task_state="powering-off")

    class Busy(SimCompute):
        def get_server(self, server_id: str) -> Server:
            return busy if server_id == iid else super().get_server(server_id)

    ctx = world.step_context(Busy(world.cloud))
    step = Step(1, 1, 1, StepKind.EVACUATE, StepStatus.RUNNING, iid, "vm0")
    recovery = Recovery(1, 1, "c1", "s1", RecoveryStatus.RUNNING, created_at=0.0)
    with pytest.raises(TemporaryError, match="with task powering-off: Nova cannot evacuate"):
        steps.evacuate(ctx, step, recovery, world.store.get_host("c1"))
    assert world.cloud.attempts("evacuate") == 0


def test_a_recovery_that_runs_out_of_time_cancels_the_steps_still_waiting(
    tmp_path: Path,
) -> None:
    """Nova takes the evacuations up and never finishes them: at ``max_duration`` the
    recovery ends FAILED, and its evacuate steps — each polling Nova, in real time here,
    with an hour of confirm timeout left — stop at their next wait, recorded FAILED with
    the reason, instead of polling on for a recovery that is over."""
    recovery = RecoverySettings(
        poll_interval=0.05, max_duration=20.0, evacuate_confirm_timeout=3600.0
    )
    never_lands = replace(SimLatency.zero(), evacuate=100_000.0)
    with World(tmp_path, HOSTS, recovery=recovery, latency=never_lands) as w:
        for i in range(2):
            w.cloud.add_instance(f"vm{i}", "c1", policy=HaPolicy.KEEP_RUNNING)
        w.host_engine(wait=time.sleep)
        for _ in range(10):
            w.tick()
        w.cloud.power_loss("c1")
        until(
            w.clock,
            lambda: w.recovery_status("c1") == RecoveryStatus.FAILED,
            "the recovery to run out of time",
            60.0,
            lambda: w.tick(0.25, drain=False),
        )
        drained = w.engine.drain(5.0)
        if not drained:  # let a step that was not cancelled time out, so the world closes
            w.clock.advance(2 * recovery.evacuate_confirm_timeout)
        assert drained, "a step of the ended recovery is still in flight"
        (ended,) = w.store.list_recoveries(host="c1")
        assert ended.reason.startswith("did not end within 20s")
        evacuations = [s for s in ended.steps if s.kind == StepKind.EVACUATE]
        assert len(evacuations) == 2
        for step in evacuations:
            assert step.status == StepStatus.FAILED
            assert step.detail.startswith(f"cancelled: recovery {ended.id} ended: did not end")
        assert w.cloud.calls("evacuate") == 2  # asked once each, then no more
