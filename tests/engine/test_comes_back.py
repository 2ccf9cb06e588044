"""Nothing strands an instance (issue 12), on the fake clock with the simulated cloud:
an evacuation ends as it began, no evacuation aims at a host vigil knows is down, a host
that rebooted gets its instances running again, a paused declaration whose host comes
back is withdrawn (or dismissed by an operator), and every recovery ends."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from support.world import HOSTS, HostFailureWorld

from vigil.clock import FakeClock
from vigil.config import RecoverySettings, SelfFencingSettings
from vigil.drivers.compute import Server
from vigil.drivers.errors import PermanentError
from vigil.engine import steps
from vigil.engine.lease import LeaseKeeper, SelfFenceDevice
from vigil.model import (
    FailureKind,
    Host,
    HostState,
    InvalidTransition,
    Recovery,
    RecoveryStatus,
    Step,
    StepKind,
    StepStatus,
)
from vigil.sim.drivers import SimCompute


@pytest.fixture
def w(tmp_path: Path) -> Iterator[HostFailureWorld]:
    with HostFailureWorld(tmp_path) as world:
        world.settle()
        yield world


def test_an_instance_running_before_the_failure_runs_after_its_evacuation(
    w: HostFailureWorld,
) -> None:
    """After the fence, power that came back (or a self-fence reset) leaves Nova showing
    the instances SHUTOFF; what counts is how they were before the failure."""
    w.cloud.isolate("c1")
    w.tick_until(lambda: w.state("c1") == HostState.FAILED)
    w.tick()  # record-instances and the fence run
    recovery = w.store.list_recoveries(host="c1")[0]
    record = recovery.step(StepKind.RECORD_INSTANCES)
    assert record is not None and record.status == "succeeded"
    w.cloud.reconnect("c1")
    w.cloud.power_restore("c1")  # someone powers it on again: Nova reads SHUTOFF now
    assert {w.cloud.instance(i).status for i in w.instances} == {"SHUTOFF"}
    w.tick_until(lambda: w.recovery_ended("c1"))
    assert w.recovery_status("c1") == RecoveryStatus.SUCCEEDED
    for iid in w.instances:
        inst = w.cloud.instance(iid)
        assert (inst.status, inst.host != "c1") == ("ACTIVE", True), inst
        assert len(inst.running_on) == 1
    assert w.cloud.double_running() == []


def test_an_instance_stopped_before_the_failure_stays_stopped(w: HostFailureWorld) -> None:
    w.cloud.stop(w.instances[0])
    w.tick()
    assert w.cloud.instance(w.instances[0]).status == "SHUTOFF"
    w.cloud.power_loss("c1")
    w.tick_until(lambda: w.recovery_ended("c1"))
    assert w.recovery_status("c1") == RecoveryStatus.SUCCEEDED
    assert w.cloud.instance(w.instances[0]).status == "SHUTOFF"
    assert {w.cloud.instance(i).status for i in w.instances[1:]} == {"ACTIVE"}


def test_no_evacuation_aims_at_a_host_vigil_knows_is_down(w: HostFailureWorld) -> None:
    """c2 is cut off (Nova reads it up for a minute yet): nothing of c1 may go there."""
    w.cloud.isolate("c2")
    w.tick_until(lambda: w.state("c2") == HostState.FAILED)
    w.cloud.power_loss("c1")
    w.tick_until(lambda: w.recovery_ended("c1") and w.recovery_ended("c2"))
    assert w.recovery_status("c1") == RecoveryStatus.SUCCEEDED
    for iid in w.instances:
        assert w.cloud.instance(iid).host in ("c3", "c4")
        assert w.cloud.instance(iid).status == "ACTIVE"
    evacuations = [
        s for s in w.store.list_recoveries(host="c1")[0].steps if s.kind == StepKind.EVACUATE
    ]
    assert {s.result["to"] for s in evacuations} <= {"c3", "c4"}
    assert len({s.result["to"] for s in evacuations}) == 2  # spread, not piled on one


def test_a_host_that_rebooted_gets_its_keep_running_instances_back(w: HostFailureWorld) -> None:
    """A power blip shorter than detection: never declared failed, but its guests are off."""
    w.cloud.power_loss("c1")
    w.tick(0.3)
    w.cloud.power_restore("c1")
    assert {w.cloud.instance(i).status for i in w.instances} == {"SHUTOFF"}
    w.tick_until(lambda: w.recovery_ended("c1"))
    recovery = w.store.list_recoveries(host="c1")[0]
    assert recovery.status == RecoveryStatus.SUCCEEDED, recovery.reason
    assert recovery.reason == "host rebooted; 3 instances started, 0 notified"
    failure = w.store.get_failure(recovery.failure_id)
    assert failure.kind == FailureKind.HOST_REBOOTED
    assert w.state("c1") == HostState.UP  # never declared failed, still in use
    for iid in w.instances:
        inst = w.cloud.instance(iid)
        assert (inst.host, inst.status) == ("c1", "ACTIVE")
    scratch = next(i for i in w.cloud.instances() if i.name == "scratch")
    assert scratch.status == "SHUTOFF"  # policy off: left alone
    seen = w.event_types()
    assert "vigil.host.rebooted" in seen
    assert seen.count("vigil.instance.start.end") == 3
    assert "vigil.host.failure.confirmed" not in seen
    # Once handled, the same boot id is no failure again.
    for _ in range(20):
        w.tick()
    assert len(w.store.list_recoveries(host="c1")) == 1


def test_a_paused_declaration_is_withdrawn_when_the_heartbeats_return(w: HostFailureWorld) -> None:
    """Three of four hosts silent at once: the storm guard holds every declaration. When
    their heartbeats return, the declarations are withdrawn and the segment resumes."""
    for h in ("c1", "c2", "c3"):
        w.cloud.isolate(h)
    w.tick_until(lambda: all(w.state(h) == HostState.FAILED for h in ("c1", "c2", "c3")))
    assert w.store.get_segment("s1").paused
    assert {w.recovery_status(h) for h in ("c1", "c2", "c3")} == {RecoveryStatus.PAUSED}
    for h in ("c1", "c2", "c3"):
        w.cloud.reconnect(h)
    w.tick_until(lambda: not w.store.get_segment("s1").paused)
    assert all(w.state(h) == HostState.UP for h in HOSTS)
    assert {w.recovery_status(h) for h in ("c1", "c2", "c3")} == {RecoveryStatus.WITHDRAWN}
    assert all(w.cloud.is_powered(h) for h in HOSTS)  # nothing was fenced
    seen = w.event_types()
    assert seen.count("vigil.host.failure.withdrawn") == 3
    assert seen[-1] == "vigil.segment.resumed"
    # and the segment protects again: a real failure now recovers
    w.cloud.power_loss("c4")
    w.tick_until(lambda: w.recovery_ended("c4"))
    assert w.recovery_status("c4") == RecoveryStatus.SUCCEEDED


def test_an_operator_dismisses_a_paused_declaration(w: HostFailureWorld) -> None:
    w.store.update_segment("s1", paused=True, pause_reason="operator: rack work")
    w.cloud.isolate("c1")
    w.tick_until(lambda: w.recovery_status("c1") == RecoveryStatus.PAUSED)
    recovery = w.store.list_recoveries(host="c1")[0]
    w.engine.dismiss(recovery.id, "dismissed by operator: known rack work")
    assert w.recovery_status("c1") == RecoveryStatus.WITHDRAWN
    assert w.state("c1") == HostState.NEW  # silent: waits for its first heartbeat again
    for _ in range(40):
        w.tick()
    assert w.state("c1") == HostState.NEW  # not suspected again while silent
    assert w.store.get_segment("s1").paused  # an operator's pause stays
    w.cloud.reconnect("c1")
    w.tick_until(lambda: w.state("c1") == HostState.UP)
    with pytest.raises(InvalidTransition):
        w.engine.dismiss(recovery.id, "twice")


def test_a_declaration_that_acted_cannot_be_withdrawn(w: HostFailureWorld) -> None:
    w.cloud.isolate("c1")
    w.tick_until(lambda: w.state("c1") == HostState.FAILED)
    w.tick()  # its fence ran
    recovery = w.store.list_recoveries(host="c1")[0]
    with pytest.raises(InvalidTransition, match="only a paused declaration"):
        w.engine.dismiss(recovery.id, "too late")


def test_every_recovery_ends_within_max_duration(tmp_path: Path) -> None:
    """An evacuation that can never land (every other host full) ends the recovery FAILED
    with the reason, at max_duration at the latest."""
    with HostFailureWorld(
        tmp_path,
        RecoverySettings(
            poll_interval=0.05,
            evacuate_confirm_timeout=0.5,
            retry_backoff=5.0,
            retry_backoff_max=5.0,
            step_attempts=1000,
            max_duration=20.0,
        ),
    ) as w:
        for h in ("c2", "c3", "c4"):
            w.cloud.power_loss(h)
        w.settle()
        w.store.update_segment("s1", max_failed_share=1.0)
        for h in ("c2", "c3", "c4"):
            w.store.update_host(h, maintenance=True)
        w.cloud.power_loss("c1")
        w.tick_until(lambda: w.recovery_ended("c1"), timeout=100)
        recovery = w.store.list_recoveries(host="c1")[0]
        assert recovery.status == RecoveryStatus.FAILED
        assert recovery.reason.startswith("did not end within 20s; unfinished: evacuate vm2")
        assert recovery.finished_at is not None and recovery.started_at is not None
        assert 20 < recovery.finished_at - recovery.started_at < 21


def test_an_instance_nova_still_calls_active_after_the_reboot_is_hard_rebooted(
    w: HostFailureWorld,
) -> None:
    """Real Nova keeps an instance ACTIVE with power_state shutdown after its host rebooted,
    until its power sync (10 min) stops it: vigil hard-reboots it (start is refused for an
    ACTIVE instance) and confirms it running."""
    off = set(w.instances)

    class StaleNova(SimCompute):
        def _as_nova(self, server: Server) -> Server:
            return replace(server, power_state=4 if server.id in off else 1)

        def get_server(self, server_id: str) -> Server:
            return self._as_nova(super().get_server(server_id))

        def poll_server(self, server_id: str) -> Server:
            return self._as_nova(super().poll_server(server_id))

        def list_servers(self, host: str) -> list[Server]:
            return [self._as_nova(s) for s in super().list_servers(host)]

        def reboot(self, server_id: str, hard: bool = True) -> None:
            off.discard(server_id)
            super().reboot(server_id, hard=hard)

    ctx = w.step_context(StaleNova(w.cloud))
    c1, segment = w.store.get_host("c1"), w.store.get_segment("s1")
    planned = steps.plan_restarts(ctx, c1, segment)
    assert sorted(n.instance_name or "" for n in planned.new_steps) == ["vm0", "vm1", "vm2"]
    assert {n.kind for n in planned.new_steps} == {StepKind.START}
    for n, new in enumerate(planned.new_steps):
        step = Step(n + 2, 1, n + 2, new.kind, StepStatus.RUNNING, new.instance_id, "vm")
        done = steps.start_again(ctx, step, c1)
        assert done.result == {"status": "ACTIVE"}
    assert off == set()
    assert w.cloud.calls("reboot") == 3 and w.cloud.calls("start") == 0


def test_a_report_about_a_host_vigil_cannot_fence_ends_within_the_detection_time(
    w: HostFailureWorld,
) -> None:
    """A Masakari monitor reports a host that has no vigil agent and no fencing level:
    the failure is declared and its recovery ends FAILED, saying why, nothing moved."""
    w.store.create_host(Host("legacy-1", "s1"))
    w.tick()
    at = w.clock.monotonic()
    w.engine.report_down("legacy-1", source="masakari", reason="COMPUTE_HOST STOPPED")
    w.tick_until(lambda: w.recovery_ended("legacy-1"), timeout=10)
    assert w.clock.monotonic() - at <= w.settings.detection.failed_after + 0.5
    recovery = w.store.list_recoveries(host="legacy-1")[0]
    assert recovery.status == RecoveryStatus.FAILED
    assert "has no fencing configured: refusing to recover it unfenced" in recovery.reason
    assert w.cloud.calls("evacuate") == 0


def test_a_host_never_heard_is_never_taken_as_self_fenced(tmp_path: Path) -> None:
    """Its only level is self-fence, but no vigil agent was ever heard from it: no
    watchdog can have reset it, so the wait proves nothing and the fence fails."""
    clock = FakeClock()
    keeper = LeaseKeeper(
        clock,
        SelfFencingSettings(),
        members=lambda: [("c1", "s1"), ("c2", "s1"), ("c3", "s1")],
        refresh=0.0,
        agent_known=lambda host: host != "c1",
    )
    device = SelfFenceDevice(keeper, "c1")
    with pytest.raises(PermanentError, match="no vigil agent has ever been heard"):
        device.power_off()
    keeper.revoke("c1")
    clock.advance(3600)
    assert not keeper.self_fenced("c1")


def test_a_retry_of_an_evacuation_still_in_flight_confirms_it_and_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nova took the evacuation up (so it is not re-issued) but it never lands: each
    attempt confirms the same evacuation (no second request, no crash) and the recovery
    ends FAILED with the reason once the attempts are spent (fault schedule seed 80)."""

    class TookItUp(SimCompute):
        def evacuation_started(self, server_id: str) -> bool | None:
            return True

    with HostFailureWorld(
        tmp_path,
        RecoverySettings(
            poll_interval=0.05,
            evacuate_stall_timeout=0.3,
            evacuate_confirm_timeout=1.0,
            step_attempts=2,
        ),
        TookItUp,
    ) as w:
        w.settle()
        w.cloud.lose_evacuations(1)
        w.cloud.power_loss("c1")
        w.tick_until(lambda: w.recovery_ended("c1"), timeout=75)
        recovery = w.store.list_recoveries(host="c1")[0]
        assert recovery.status == RecoveryStatus.FAILED
        stuck = [s for s in recovery.steps if s.status == "failed"]
        assert len(stuck) == 1 and "still on c1 (REBUILD)" in stuck[0].detail
        assert w.cloud.attempts("evacuate", stuck[0].instance_id) == 1  # never asked twice
        assert "crashed" not in caplog.text


def test_a_host_whose_fence_failed_and_that_rebooted_gets_its_instances_back(
    tmp_path: Path,
) -> None:
    """Its BMC cannot be read, so the fence was never confirmed and the recovery failed,
    moving nothing (fault schedule seed 79). When the host heartbeats again with a new
    boot id it did reset: its stopped instances are started where they are, the host is
    in use again, and the failed declaration is resolved."""
    with HostFailureWorld(tmp_path, RecoverySettings(poll_interval=0.05, step_attempts=2)) as w:
        w.settle()
        w.cloud.bmc_unreachable("c1", True)
        w.cloud.isolate("c1")
        w.tick_until(lambda: w.recovery_ended("c1"), timeout=100)
        failed = w.store.list_recoveries(host="c1")[0]
        assert failed.status == RecoveryStatus.FAILED and "fence failed" in failed.reason
        assert w.cloud.calls("evacuate") == 0
        w.cloud.watchdog_reset("c1")  # it reset itself (its own watchdog, say)
        w.cloud.reconnect("c1")
        w.cloud.bmc_unreachable("c1", False)
        w.tick_until(
            lambda: len(w.store.list_recoveries(host="c1")) == 2 and w.recovery_ended("c1")
        )
        again = w.store.list_recoveries(host="c1")[0]
        assert again.status == RecoveryStatus.SUCCEEDED, again.reason
        assert again.reason == "host rebooted; 3 instances started, 0 notified"
        assert w.state("c1") == HostState.UP
        assert w.store.get_failure(failed.failure_id).status == "resolved"
        for iid in w.instances:
            assert (w.cloud.instance(iid).host, w.cloud.instance(iid).status) == ("c1", "ACTIVE")


@pytest.mark.parametrize(("booted_again", "moved"), [(False, 3), (True, 1), (None, 1)])
def test_an_instance_that_arrived_after_the_declaration_moves_only_if_the_host_stayed_down(
    w: HostFailureWorld, booted_again: bool | None, moved: int
) -> None:
    """vm1 and vm2 were not on c1 when it was declared (evacuations to it still in flight,
    fault schedule seed 40). If c1 has not booted again since, the fence killed them too:
    they move. If it has (a watchdog reset, seed 6), they may run there: left alone."""
    ctx = w.step_context(booted_again=lambda host: booted_again)
    first = w.cloud.instance(w.instances[0])
    record = Step(
        1,
        1,
        1,
        StepKind.RECORD_INSTANCES,
        StepStatus.SUCCEEDED,
        result={"instances": [{"id": first.id, "name": first.name, "status": "ACTIVE"}]},
    )
    recovery = Recovery(1, 1, "c1", "s1", RecoveryStatus.RUNNING, 0.0, steps=(record,))
    c1 = w.store.get_host("c1")
    assert c1.boot_id == "c1-boot-1"
    done = steps.plan_instances(ctx, c1, w.store.get_segment("s1"), recovery)
    assert len(done.new_steps) == moved
    assert len(done.result.get("arrived_after_failure", [])) == 3 - moved
    # vigil saw vm1 land on c1 in the boot the fence then ended: it moves in any case
    now = w.clock.wall()
    ctx.landed[w.instances[1]] = ("c1", "c1-boot-1", "ACTIVE", now)
    ctx.landed[w.instances[2]] = ("c1", "c1-boot-2", "ACTIVE", now)  # after c1 booted again
    w.cloud.stop(w.instances[1])  # what Nova shows after the fence...
    w.tick()
    done = steps.plan_instances(ctx, c1, w.store.get_segment("s1"), recovery)
    assert len(done.new_steps) == (3 if booted_again is False else 2)
    (seen,) = [i for i in done.result["instances"] if i["id"] == w.instances[1]]
    assert (seen["status"], seen["listed"]) == ("ACTIVE", "SHUTOFF")  # ...is not what counts


@pytest.mark.parametrize(("resets", "moved"), [(False, 2), (True, 1)])
def test_an_instance_that_landed_before_a_power_off_fence_moves_whatever_boot_it_came_in(
    w: HostFailureWorld, resets: bool, moved: int
) -> None:
    """Fault schedule seed 267: vm2 was sent to c1 while c1 blinked off and on; it landed in
    c1's new boot, c1 was declared failed (no heartbeat) and its BMC then powered it off.
    The power-off ended vm2 too, whichever boot it came in: it moves. A self-fence resets
    the host instead: what landed in a boot after the declared one may run there."""
    ctx = w.step_context(booted_again=lambda host: True)
    first = w.cloud.instance(w.instances[0])
    landed_at = w.clock.wall()
    ctx.landed[w.instances[1]] = ("c1", "c1-boot-2", "ACTIVE", landed_at)
    w.clock.advance(4.0)
    record = Step(
        1,
        1,
        1,
        StepKind.RECORD_INSTANCES,
        StepStatus.SUCCEEDED,
        result={"instances": [{"id": first.id, "name": first.name, "status": "ACTIVE"}]},
    )
    fence = Step(
        2,
        1,
        2,
        StepKind.FENCE,
        StepStatus.SUCCEEDED,
        result={"level": 1, "confirmed_at": w.clock.wall(), "resets": resets},
    )
    ctx.landed[w.instances[2]] = ("c1", "c1-boot-3", "ACTIVE", w.clock.wall() + 1.0)
    recovery = Recovery(1, 1, "c1", "s1", RecoveryStatus.RUNNING, 0.0, steps=(record, fence))
    done = steps.plan_instances(ctx, w.store.get_host("c1"), w.store.get_segment("s1"), recovery)
    moved_ids = {st.instance_id for st in done.new_steps}
    assert len(moved_ids) == moved
    assert (w.instances[1] in moved_ids) is not resets
    # vm3 landed after the confirmation: the host was not off for it (left either way)
    assert w.instances[2] not in moved_ids
