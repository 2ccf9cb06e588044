"""Guest failure policies on a fake clock: the pure rule, and the guest engine end to end
with a real (SQLite) store and the simulated Nova — crash loops, intentional stops, reset loops,
notify, idempotent reports, resume after a crash."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support.world import World

from vigil.drivers.compute import WATCHDOG_ACTION_KEY, Server
from vigil.engine.guest import (
    Escalate,
    GuestPolicy,
    GuestSettings,
    GuestView,
    PlanRestart,
    RunRestart,
    decide_guest,
    guest_policy_from_metadata,
)
from vigil.events import payload_schema
from vigil.model import (
    GuestFailureKind,
    GuestFailureStatus,
    HaPolicy,
    InstanceFailure,
    Segment,
    StepStatus,
)
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimCompute

HOST = "compute-1"
SETTINGS = GuestSettings(
    restart_budget=3, backoff_base=5, backoff_max=60, reset_loop_count=3, quiet_after=120
)


def guest_world(tmp_path: Path, compute: Callable[[SimCloud], SimCompute] = SimCompute) -> World:
    """compute-1 in segment rack-a (default policy off), the guest engine on it."""
    w = World(
        tmp_path, (HOST,), segment=Segment("rack-a", default_policy=HaPolicy.OFF), compute=compute
    )
    w.guest_engine(SETTINGS)
    return w


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with guest_world(tmp_path) as w:
        yield w


def boot(w: World, policy: HaPolicy | None) -> str:
    return w.cloud.add_instance(f"vm-{len(w.cloud.instances())}", HOST, policy=policy)


def crash(w: World, sid: str) -> None:
    w.cloud.stop(sid)  # what a crash with on_crash=destroy looks like to Nova, eventually
    w.guest_report(sid, GuestFailureKind.CRASHED, reason="panicked")


def restarts(w: World) -> list[tuple[str, str]]:
    """The restarts Nova accepted, (start or reboot, instance id), instance by instance."""
    return [
        (method, i.id)
        for i in w.cloud.instances()
        for method in ("start", "reboot")
        for _ in range(w.cloud.calls(method, i.id))
    ]


def failure(w: World, sid: str) -> InstanceFailure:
    return w.store.list_guest_failures(instance_id=sid)[0]


def test_a_crashed_keep_running_instance_is_restarted_through_nova(world: World) -> None:
    sid = boot(world, HaPolicy.KEEP_RUNNING)
    crash(world, sid)
    world.cycle()  # plan (no backoff for the first restart)
    world.cycle()  # run
    assert restarts(world) == [("start", sid)]
    f = failure(world, sid)
    assert f.restarts == 1 and f.action_status == StepStatus.SUCCEEDED
    assert f.status == GuestFailureStatus.OPEN  # watched until quiet
    assert world.event_types(sid) == [
        "vigil.instance.guest.failure",
        "vigil.instance.guest.restart.start",
        "vigil.instance.guest.restart.end",
    ]
    world.cycle(SETTINGS.quiet_after)
    assert failure(world, sid).status == GuestFailureStatus.RESOLVED


class StuckLookup(SimCompute):
    """Nova answers ``get_server`` for the instances in ``stuck`` only once ``release``
    is set (as after its 60 s API timeout)."""

    def __init__(self, cloud: SimCloud) -> None:
        super().__init__(cloud)
        self.stuck: set[str] = set()
        self.release = threading.Event()

    def get_server(self, server_id: str) -> Server:
        if server_id in self.stuck:
            self.release.wait(30)
        return super().get_server(server_id)


def test_a_policy_lookup_stuck_on_nova_delays_no_other_failure(tmp_path: Path) -> None:
    # Nova answers get_server for one instance only after its 60 s timeout: the other
    # instance's crash is decided on and restarted meanwhile (the lookup used to run on
    # the decision thread, which also drives the service keeper).
    with guest_world(tmp_path, StuckLookup) as world:
        nova = world.compute
        assert isinstance(nova, StuckLookup)
        slow, fast = boot(world, HaPolicy.KEEP_RUNNING), boot(world, HaPolicy.KEEP_RUNNING)
        nova.stuck.add(slow)
        crash(world, slow)
        crash(world, fast)
        try:
            deadline = time.monotonic() + 10
            while ("start", fast) not in restarts(world) and time.monotonic() < deadline:
                started = time.monotonic()
                world.guest.run_cycle()
                assert time.monotonic() - started < 1, "a cycle waited on the stuck lookup"
                time.sleep(0.01)
            assert restarts(world) == [("start", fast)]
            assert failure(world, slow).status == GuestFailureStatus.OPEN
        finally:
            nova.release.set()
        world.cycle()  # the policy arrives: planned
        world.cycle()  # run
        assert restarts(world) == [("start", slow), ("start", fast)]  # slow, now too


def test_crash_loop_backs_off_exponentially_then_escalates(world: World) -> None:
    sid = boot(world, HaPolicy.KEEP_RUNNING)
    restarted_at = []
    for n in range(SETTINGS.restart_budget):
        crash(world, sid)
        world.cycle()
        delay = SETTINGS.backoff(n)
        if delay:
            world.cycle(delay - 0.1)
            assert len(restarts(world)) == n, "restarted before its backoff"
            world.cycle(0.1)
        world.cycle()
        assert len(restarts(world)) == n + 1
        restarted_at.append(world.clock.wall())
    assert [b - a for a, b in itertools.pairwise(restarted_at)] == [
        pytest.approx(5, abs=0.2),
        pytest.approx(10, abs=0.2),
    ]
    crash(world, sid)  # the budget is spent: no fourth restart
    world.cycle()
    world.cycle(600)
    assert len(restarts(world)) == SETTINGS.restart_budget
    f = failure(world, sid)
    assert f.status == GuestFailureStatus.ESCALATED and f.count == 4
    assert world.event_types(sid)[-1] == "vigil.instance.guest.escalated"
    for event in world.store.list_events(limit=1000):
        jsonschema.validate(event.payload, payload_schema(event.event_type))


def test_intentional_stops_are_not_reported_so_never_restarted(world: World) -> None:
    # The agent does not report a clean shutdown or a stop through Nova (see
    # tests/unit/test_guest_monitor.py); the engine then has nothing to act on.
    sid = boot(world, HaPolicy.KEEP_RUNNING)
    world.cloud.stop(sid)
    world.cycle(10)
    assert restarts(world) == [] and world.store.list_guest_failures() == []


def test_notify_policy_publishes_and_leaves_the_guest(world: World) -> None:
    sid = boot(world, HaPolicy.NOTIFY)
    crash(world, sid)
    world.cycle()
    world.cycle(30)
    assert restarts(world) == []
    assert failure(world, sid).status == GuestFailureStatus.NOTIFIED
    assert "vigil.instance.guest.notify" in world.event_types(sid)


def test_watchdog_notify_every_firing_and_vm_untouched(world: World) -> None:
    sid = boot(world, HaPolicy.NOTIFY)
    for _ in range(3):
        world.guest_report(sid, GuestFailureKind.WATCHDOG, event="watchdog", action="none")
        world.cycle(20)
    assert world.event_types(sid).count("vigil.instance.guest.notify") == 3
    assert failure(world, sid).count == 3 and restarts(world) == []


def test_watchdog_resets_are_counted_and_a_loop_escalates(world: World) -> None:
    sid = boot(world, HaPolicy.KEEP_RUNNING)
    for n in range(SETTINGS.reset_loop_count):
        world.guest_report(sid, GuestFailureKind.WATCHDOG, event="watchdog", action="reset")
        world.cycle(23)  # QEMU resets; the guest hangs again ~23 s later
        f = failure(world, sid)
        assert f.count == n + 1
    assert f.status == GuestFailureStatus.ESCALATED
    assert restarts(world) == []  # reset stays Nova's (QEMU's) job
    assert world.event_types(sid).count("vigil.instance.guest.failure") == 3


def test_spaced_resets_are_no_loop(world: World) -> None:
    sid = boot(world, HaPolicy.KEEP_RUNNING)
    for _ in range(4):
        world.guest_report(sid, GuestFailureKind.WATCHDOG, event="watchdog", action="reset")
        world.cycle(SETTINGS.reset_loop_window / 2 + 1)
    assert failure(world, sid).status != GuestFailureStatus.ESCALATED


def test_policy_off_records_only(world: World) -> None:
    sid = boot(world, HaPolicy.OFF)
    crash(world, sid)
    world.cycle()
    world.cycle(10)
    assert restarts(world) == [] and failure(world, sid).seen_count == 1


def test_a_retried_report_is_recorded_once(world: World) -> None:
    sid = boot(world, HaPolicy.OFF)
    r = world.guest_report(sid, GuestFailureKind.CRASHED)
    world.guest.receive([r])
    assert failure(world, sid).count == 1
    assert world.event_types(sid).count("vigil.instance.guest.failure") == 1


def test_temporary_nova_errors_are_retried_then_escalated(world: World) -> None:
    # While the compute service is forced down, Nova refuses to start an instance of its
    # host (409 ServiceUnavailable): a temporary error.
    sid = boot(world, HaPolicy.KEEP_RUNNING)
    crash(world, sid)
    world.cycle()
    world.cloud.set_forced_down(HOST, True)
    world.cycle()
    f = failure(world, sid)
    assert f.action_status == StepStatus.PENDING and f.action_attempts == 1
    assert world.cloud.attempts("start", sid) == 1 and restarts(world) == []
    world.cloud.set_forced_down(HOST, False)
    world.cycle(SETTINGS.backoff_base)
    assert restarts(world) == [("start", sid)]
    assert failure(world, sid).restarts == 1  # a retried attempt is not a second restart
    sid2 = boot(world, HaPolicy.KEEP_RUNNING)
    crash(world, sid2)
    world.cloud.set_forced_down(HOST, True)
    for _ in range(8):
        world.cycle(SETTINGS.backoff_max)
    assert failure(world, sid2).status == GuestFailureStatus.ESCALATED
    assert failure(world, sid2).action_status == StepStatus.FAILED
    assert world.cloud.attempts("start", sid2) == SETTINGS.restart_attempts


def test_a_restart_running_when_vigil_died_runs_again(world: World) -> None:
    sid = boot(world, HaPolicy.KEEP_RUNNING)
    crash(world, sid)
    world.cycle()
    f = failure(world, sid)
    world.store.update_guest_failure(f.id, at=0, action_status=StepStatus.RUNNING)
    assert world.store.requeue_running_guest_actions(at=world.clock.wall()) == 1
    world.cycle()
    assert restarts(world) == [("start", sid)]


def test_operator_pause_holds_restarts(world: World) -> None:
    sid = boot(world, HaPolicy.KEEP_RUNNING)
    world.store.set_control(paused=True, reason="maintenance", at=0)
    crash(world, sid)
    world.cycle()
    world.cycle(10)
    assert restarts(world) == []
    world.store.set_control(paused=False, reason="", at=0)
    world.cycle()
    assert restarts(world) == [("start", sid)]


def _failure(**changes: Any) -> InstanceFailure:
    base = InstanceFailure(
        1, "i", HOST, GuestFailureKind.CRASHED, GuestFailureStatus.OPEN, "crashed", 0, 0, 1
    )
    return InstanceFailure(**{**base.__dict__, **changes})


def test_decide_is_pure_backoff_and_budget() -> None:
    keep = GuestPolicy(HaPolicy.KEEP_RUNNING)
    [plan] = decide_guest(
        [GuestView(_failure(restarts=2, count=3, seen_count=2), keep)], 100, SETTINGS
    )
    assert isinstance(plan, PlanRestart) and plan.at == 100 + 10
    [run] = decide_guest(
        [
            GuestView(
                _failure(action_status=StepStatus.PENDING, next_restart_at=100, seen_count=1), None
            )
        ],
        100,
        SETTINGS,
    )
    assert isinstance(run, RunRestart)
    assert (
        decide_guest(
            [
                GuestView(
                    _failure(action_status=StepStatus.PENDING, next_restart_at=101, seen_count=1),
                    None,
                )
            ],
            100,
            SETTINGS,
        )
        == []
    )
    [esc] = decide_guest(
        [GuestView(_failure(restarts=3, count=4, seen_count=3), keep)], 0, SETTINGS
    )
    assert isinstance(esc, Escalate)


def test_watchdog_key_precedence() -> None:
    md, image, flavor = {}, {"vigil:watchdog_action": "notify"}, {"vigil:watchdog_action": "x"}
    assert guest_policy_from_metadata(HaPolicy.KEEP_RUNNING, md, image, flavor).watchdog_notify
    assert not guest_policy_from_metadata(HaPolicy.KEEP_RUNNING, {}, {}, flavor).watchdog_notify
    assert guest_policy_from_metadata(HaPolicy.NOTIFY).watchdog_notify
    with pytest.raises(ValueError, match="quiet_after"):
        GuestSettings(quiet_after=10, backoff_max=60).validate()


class ReadsWatchdogKey(SimCompute):
    """``Server.watchdog_action`` from the instance's ``vigil:watchdog_action``, as the
    OpenStack driver resolves it from metadata, image and flavor (the simulated Nova has
    metadata only, and leaves the field unset)."""

    def __init__(self, cloud: SimCloud) -> None:
        super().__init__(cloud)
        self.cloud = cloud

    def get_server(self, server_id: str) -> Server:
        server = super().get_server(server_id)
        metadata = self.cloud.instance(server_id).metadata
        return dataclasses.replace(server, watchdog_action=metadata.get(WATCHDOG_ACTION_KEY))


def test_the_watchdog_key_read_through_nova_turns_a_firing_into_a_notification(
    tmp_path: Path,
) -> None:
    """``vigil:watchdog_action=notify`` from the instance's flavor/image/metadata, as the
    compute driver resolves it (``Server.watchdog_action``); without it, a firing of a
    keep-running instance is only recorded."""
    with guest_world(tmp_path, ReadsWatchdogKey) as world:
        keep = HaPolicy.KEEP_RUNNING
        told = world.cloud.add_instance(
            "told", HOST, policy=keep, metadata={WATCHDOG_ACTION_KEY: "notify"}
        )
        silent = world.cloud.add_instance("silent", HOST, policy=keep)
        for sid in (told, silent):
            world.guest_report(sid, GuestFailureKind.WATCHDOG, action="none")
        world.cycle()
        assert "vigil.instance.guest.notify" in world.event_types(told)
        assert failure(world, told).status == GuestFailureStatus.NOTIFIED
        assert world.event_types(silent) == ["vigil.instance.guest.failure"]
        assert failure(world, silent).status == GuestFailureStatus.OPEN
        assert restarts(world) == []  # the guests are left as they are
