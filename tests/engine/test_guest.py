"""Guest failure policies on a fake clock: the pure rule, and the guest engine end to end
with a real (SQLite) store and a fake Nova — crash loops, intentional stops, reset loops,
notify, idempotent reports, resume after a crash."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support import new_store

from vigil.clock import FakeClock
from vigil.drivers import compute as nova
from vigil.drivers.compute import ComputeDriver, ComputeService, Server
from vigil.drivers.errors import Conflict, NotFound, TemporaryError
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
from vigil.engine.guest_engine import GuestEngine
from vigil.events import payload_schema
from vigil.model import (
    GuestFailureKind,
    GuestFailureStatus,
    GuestReport,
    HaPolicy,
    Host,
    InstanceFailure,
    Segment,
    StepStatus,
)

HOST = "compute-1"
SETTINGS = GuestSettings(
    restart_budget=3, backoff_base=5, backoff_max=60, reset_loop_count=3, quiet_after=120
)


class FakeNova(ComputeDriver):
    """Servers by id; ``start``/``reboot`` make them ACTIVE and are recorded."""

    def __init__(self) -> None:
        self.servers: dict[str, Server] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_next = 0

    def add(self, policy: HaPolicy | None, status: str = nova.ACTIVE) -> str:
        sid = str(uuid.uuid4())
        self.servers[sid] = Server(sid, f"vm-{len(self.servers)}", HOST, status, policy)
        return sid

    def _set(self, sid: str, status: str) -> None:
        s = self.servers[sid]
        self.servers[sid] = Server(s.id, s.name, s.host, status, s.policy)

    def list_services(self) -> list[ComputeService]:
        return []

    def get_service(self, host: str) -> ComputeService:
        raise NotFound(host)

    def set_forced_down(self, host: str, forced_down: bool) -> None: ...

    def disable(self, host: str, reason: str) -> None: ...

    def enable(self, host: str) -> None: ...

    def list_servers(self, host: str) -> list[Server]:
        return [s for s in self.servers.values() if s.host == host]

    def get_server(self, server_id: str) -> Server:
        if server_id not in self.servers:
            raise NotFound(server_id)
        return self.servers[server_id]

    def evacuate(self, server_id: str, target_host: str | None = None) -> None: ...

    def _act(self, what: str, sid: str) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise TemporaryError("Nova is busy")
        self.calls.append((what, sid))
        self._set(sid, nova.ACTIVE)

    def start(self, server_id: str) -> None:
        # as Nova (and the compute contract, tests/contract/compute_contract.py): only a
        # stopped instance can be started
        if self.servers[server_id].status != nova.SHUTOFF:
            raise Conflict(f"instance {server_id} is {self.servers[server_id].status}")
        self._act("start", server_id)

    def stop(self, server_id: str) -> None:
        self._set(server_id, nova.SHUTOFF)

    def reboot(self, server_id: str, hard: bool = True) -> None:
        self._act("reboot", server_id)


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.store = new_store(
            tmp_path, Segment("rack-a", default_policy=HaPolicy.OFF), [Host(HOST, "rack-a")]
        )
        self.clock = FakeClock()
        self.nova = FakeNova()
        self.guest = GuestEngine(
            store=self.store, compute=self.nova, clock=self.clock, settings=SETTINGS, wait=self.wait
        )

    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def report(self, sid: str, kind: GuestFailureKind, **detail: Any) -> GuestReport:
        r = GuestReport(str(uuid.uuid4()), HOST, sid, kind, self.clock.wall(), detail)
        self.guest.receive([r])
        return r

    def cycle(self, advance: float = 0.0) -> list[Any]:
        self.clock.advance(advance)
        actions = self.guest.run_cycle()
        assert self.guest.drain()
        if self.guest.policies_ready():  # looked up on a worker: decided on at once
            actions += self.guest.run_cycle()
            assert self.guest.drain()
        return actions

    def failure(self, sid: str) -> InstanceFailure:
        return self.store.list_guest_failures(instance_id=sid)[0]

    def events(self, sid: str | None = None) -> list[str]:
        return [
            e.event_type
            for e in self.store.list_events(limit=1000)
            if sid is None or e.instance_id == sid
        ]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.guest.stop()
    w.store.close()


def crash(w: World, sid: str) -> None:
    w.nova.stop(sid)  # what a crash with on_crash=destroy looks like to Nova, eventually
    w.report(sid, GuestFailureKind.CRASHED, reason="panicked")


def test_a_crashed_keep_running_instance_is_restarted_through_nova(world: World) -> None:
    sid = world.nova.add(HaPolicy.KEEP_RUNNING)
    crash(world, sid)
    world.cycle()  # plan (no backoff for the first restart)
    world.cycle()  # run
    assert world.nova.calls == [("start", sid)]
    f = world.failure(sid)
    assert f.restarts == 1 and f.action_status == StepStatus.SUCCEEDED
    assert f.status == GuestFailureStatus.OPEN  # watched until quiet
    assert world.events(sid) == [
        "vigil.instance.guest.failure",
        "vigil.instance.guest.restart.start",
        "vigil.instance.guest.restart.end",
    ]
    world.cycle(SETTINGS.quiet_after)
    assert world.failure(sid).status == GuestFailureStatus.RESOLVED


def test_a_policy_lookup_stuck_on_nova_delays_no_other_failure(world: World) -> None:
    # Nova answers get_server for one instance only after its 60 s timeout: the other
    # instance's crash is decided on and restarted meanwhile (the lookup used to run on
    # the decision thread, which also drives the service keeper).
    slow, fast = world.nova.add(HaPolicy.KEEP_RUNNING), world.nova.add(HaPolicy.KEEP_RUNNING)
    release = threading.Event()
    get_server = world.nova.get_server

    def stuck(server_id: str) -> Server:
        if server_id == slow:
            release.wait(30)
        return get_server(server_id)

    world.nova.get_server = stuck  # type: ignore[method-assign]
    crash(world, slow)
    crash(world, fast)
    try:
        deadline = time.monotonic() + 10
        while ("start", fast) not in world.nova.calls and time.monotonic() < deadline:
            started = time.monotonic()
            world.guest.run_cycle()
            assert time.monotonic() - started < 1, "a cycle waited on the stuck lookup"
            time.sleep(0.01)
        assert world.nova.calls == [("start", fast)]
        assert world.failure(slow).status == GuestFailureStatus.OPEN
    finally:
        release.set()
    world.cycle()  # the policy arrives: planned
    world.cycle()  # run
    assert world.nova.calls == [("start", fast), ("start", slow)]


def test_crash_loop_backs_off_exponentially_then_escalates(world: World) -> None:
    sid = world.nova.add(HaPolicy.KEEP_RUNNING)
    restarted_at = []
    for n in range(SETTINGS.restart_budget):
        crash(world, sid)
        world.cycle()
        delay = SETTINGS.backoff(n)
        if delay:
            world.cycle(delay - 0.1)
            assert len(world.nova.calls) == n, "restarted before its backoff"
            world.cycle(0.1)
        world.cycle()
        assert len(world.nova.calls) == n + 1
        restarted_at.append(world.clock.wall())
    assert [b - a for a, b in itertools.pairwise(restarted_at)] == [
        pytest.approx(5, abs=0.2),
        pytest.approx(10, abs=0.2),
    ]
    crash(world, sid)  # the budget is spent: no fourth restart
    world.cycle()
    world.cycle(600)
    assert len(world.nova.calls) == SETTINGS.restart_budget
    f = world.failure(sid)
    assert f.status == GuestFailureStatus.ESCALATED and f.count == 4
    assert world.events(sid)[-1] == "vigil.instance.guest.escalated"
    for event in world.store.list_events(limit=1000):
        jsonschema.validate(event.payload, payload_schema(event.event_type))


def test_intentional_stops_are_not_reported_so_never_restarted(world: World) -> None:
    # The agent does not report a clean shutdown or a stop through Nova (see
    # tests/unit/test_guest_monitor.py); the engine then has nothing to act on.
    sid = world.nova.add(HaPolicy.KEEP_RUNNING)
    world.nova.stop(sid)
    world.cycle(10)
    assert world.nova.calls == [] and world.store.list_guest_failures() == []


def test_notify_policy_publishes_and_leaves_the_guest(world: World) -> None:
    sid = world.nova.add(HaPolicy.NOTIFY)
    crash(world, sid)
    world.cycle()
    world.cycle(30)
    assert world.nova.calls == []
    assert world.failure(sid).status == GuestFailureStatus.NOTIFIED
    assert "vigil.instance.guest.notify" in world.events(sid)


def test_watchdog_notify_every_firing_and_vm_untouched(world: World) -> None:
    sid = world.nova.add(HaPolicy.NOTIFY)
    for _ in range(3):
        world.report(sid, GuestFailureKind.WATCHDOG, event="watchdog", action="none")
        world.cycle(20)
    assert world.events(sid).count("vigil.instance.guest.notify") == 3
    assert world.failure(sid).count == 3 and world.nova.calls == []


def test_watchdog_resets_are_counted_and_a_loop_escalates(world: World) -> None:
    sid = world.nova.add(HaPolicy.KEEP_RUNNING)
    for n in range(SETTINGS.reset_loop_count):
        world.report(sid, GuestFailureKind.WATCHDOG, event="watchdog", action="reset")
        world.cycle(23)  # QEMU resets; the guest hangs again ~23 s later
        f = world.failure(sid)
        assert f.count == n + 1
    assert f.status == GuestFailureStatus.ESCALATED
    assert world.nova.calls == []  # reset stays Nova's (QEMU's) job
    assert world.events(sid).count("vigil.instance.guest.failure") == 3


def test_spaced_resets_are_no_loop(world: World) -> None:
    sid = world.nova.add(HaPolicy.KEEP_RUNNING)
    for _ in range(4):
        world.report(sid, GuestFailureKind.WATCHDOG, event="watchdog", action="reset")
        world.cycle(SETTINGS.reset_loop_window / 2 + 1)
    assert world.failure(sid).status != GuestFailureStatus.ESCALATED


def test_policy_off_records_only(world: World) -> None:
    sid = world.nova.add(HaPolicy.OFF)
    crash(world, sid)
    world.cycle()
    world.cycle(10)
    assert world.nova.calls == [] and world.failure(sid).seen_count == 1


def test_a_retried_report_is_recorded_once(world: World) -> None:
    sid = world.nova.add(HaPolicy.OFF)
    r = world.report(sid, GuestFailureKind.CRASHED)
    world.guest.receive([r])
    assert world.failure(sid).count == 1
    assert world.events(sid).count("vigil.instance.guest.failure") == 1


def test_temporary_nova_errors_are_retried_then_escalated(world: World) -> None:
    sid = world.nova.add(HaPolicy.KEEP_RUNNING)
    world.nova.fail_next = 1
    crash(world, sid)
    world.cycle()
    world.cycle()
    f = world.failure(sid)
    assert f.action_status == StepStatus.PENDING and f.action_attempts == 1
    world.cycle(SETTINGS.backoff_base)
    assert world.nova.calls == [("start", sid)]
    assert world.failure(sid).restarts == 1  # a retried attempt is not a second restart
    sid2 = world.nova.add(HaPolicy.KEEP_RUNNING)
    world.nova.fail_next = 10
    crash(world, sid2)
    for _ in range(8):
        world.cycle(SETTINGS.backoff_max)
    assert world.failure(sid2).status == GuestFailureStatus.ESCALATED
    assert world.failure(sid2).action_status == StepStatus.FAILED


def test_a_restart_running_when_vigil_died_runs_again(world: World) -> None:
    sid = world.nova.add(HaPolicy.KEEP_RUNNING)
    crash(world, sid)
    world.cycle()
    f = world.failure(sid)
    world.store.update_guest_failure(f.id, at=0, action_status=StepStatus.RUNNING)
    assert world.store.requeue_running_guest_actions(at=world.clock.wall()) == 1
    world.cycle()
    assert world.nova.calls == [("start", sid)]


def test_operator_pause_holds_restarts(world: World) -> None:
    sid = world.nova.add(HaPolicy.KEEP_RUNNING)
    world.store.set_control(paused=True, reason="maintenance", at=0)
    crash(world, sid)
    world.cycle()
    world.cycle(10)
    assert world.nova.calls == []
    world.store.set_control(paused=False, reason="", at=0)
    world.cycle()
    assert world.nova.calls == [("start", sid)]


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


def test_the_watchdog_key_read_through_nova_turns_a_firing_into_a_notification(
    world: World,
) -> None:
    """``vigil:watchdog_action=notify`` from the instance's flavor/image/metadata, as the
    compute driver resolves it (``Server.watchdog_action``); without it, a firing of a
    keep-running instance is only recorded."""
    told, silent = world.nova.add(HaPolicy.KEEP_RUNNING), world.nova.add(HaPolicy.KEEP_RUNNING)
    world.nova.servers[told] = dataclasses.replace(
        world.nova.servers[told], watchdog_action="notify"
    )
    for sid in (told, silent):
        world.report(sid, GuestFailureKind.WATCHDOG, action="none")
    world.cycle()
    assert "vigil.instance.guest.notify" in world.events(told)
    assert world.failure(told).status == GuestFailureStatus.NOTIFIED
    assert world.events(silent) == ["vigil.instance.guest.failure"]
    assert world.failure(silent).status == GuestFailureStatus.OPEN
    assert world.nova.calls == []  # the guests are left as they are
