"""Host services down (nova-compute, libvirtd): the pure rule, and the keeper with a real
(SQLite) store and the simulated Nova — disabled for scheduling, never fenced, enabled
again by rule, an operator's own disable respected, Nova errors retried."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from support import wait_until
from support.world import World

from vigil.drivers.compute import ComputeService
from vigil.drivers.errors import TemporaryError
from vigil.engine.services import (
    DisableCompute,
    ForgetHold,
    ReleaseCompute,
    decide_services,
    hold_reason,
)
from vigil.events import payload_schema
from vigil.model import (
    SERVICE_HOLD_PREFIX,
    ComputeHold,
    Host,
    HostServices,
    HostState,
    ServiceState,
)
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimCompute

T0 = 1_800_000_000.0
UP = ServiceState(True, T0 - 100, "pid 1")
DOWN = ServiceState(False, T0, "no process matches 'nova-compute' for 2 checks")


def snapshot(hold: ComputeHold = ComputeHold.NONE, **up: bool) -> HostServices:
    services = {name.replace("_", "-"): UP if ok else DOWN for name, ok in up.items()}
    return HostServices("c1", services, T0, hold)


def host(state: HostState = HostState.UP, *, maintenance: bool = False) -> dict[str, Host]:
    return {"c1": Host("c1", "seg", state=state, maintenance=maintenance)}


# --- the rule ---------------------------------------------------------------------------


def test_a_service_down_disables_an_up_host_once() -> None:
    down = snapshot(nova_compute=False, libvirtd=True)
    assert decide_services([down], host()) == [
        DisableCompute("c1", ("nova-compute",), f"{SERVICE_HOLD_PREFIX} nova-compute")
    ]
    held = snapshot(ComputeHold.DISABLED, nova_compute=False, libvirtd=False)
    assert decide_services([held], host()) == []  # already held: nothing more


def test_all_up_again_releases_the_hold_whatever_it_was() -> None:
    for hold in (ComputeHold.DISABLED, ComputeHold.LEFT):
        assert decide_services([snapshot(hold, nova_compute=True)], host()) == [
            ReleaseCompute("c1", hold)
        ]
    assert decide_services([snapshot(nova_compute=True)], host()) == []


@pytest.mark.parametrize(
    "state,maintenance",
    [(HostState.SUSPECT, False), (HostState.NEW, False), (HostState.UP, True)],
)
def test_no_action_while_the_host_is_suspect_new_or_in_maintenance(
    state: HostState, maintenance: bool
) -> None:
    hosts = host(state, maintenance=maintenance)
    assert decide_services([snapshot(nova_compute=False)], hosts) == []
    assert decide_services([snapshot(ComputeHold.DISABLED, nova_compute=True)], hosts) == []


def test_a_failed_host_belongs_to_its_recovery_and_the_hold_is_forgotten() -> None:
    for state in (HostState.FAILED, HostState.RECOVERED):
        held = snapshot(ComputeHold.DISABLED, nova_compute=False)
        [action] = decide_services([held], host(state))
        assert isinstance(action, ForgetHold)
        assert decide_services([snapshot(nova_compute=False)], host(state)) == []


def test_an_unknown_host_is_skipped() -> None:
    assert decide_services([snapshot(nova_compute=False)], {}) == []


# --- the keeper -------------------------------------------------------------------------


class FlakyCompute(SimCompute):
    """Nova's API answers 503 to the next ``fail`` disables."""

    def __init__(self, cloud: SimCloud) -> None:
        super().__init__(cloud)
        self.fail = 0

    def disable(self, host: str, reason: str) -> None:
        if self.fail:
            self.fail -= 1
            raise TemporaryError("nova-api: 503 Service Unavailable")
        super().disable(host, reason)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """c1 (up) in the store; c1 and c2 in the cloud; the keeper retries after 5 s."""
    up = Host("c1", "seg", state=HostState.UP)
    with World(
        tmp_path, ("c1", "c2"), segment="seg", store_hosts=[up], start=T0, compute=FlakyCompute
    ) as w:
        w.service_keeper(retry_after=5.0)
        yield w


def report(w: World, at: float, **up: bool) -> HostServices:
    """c1's agent reports its services (``nova_compute=False``: nova-compute down)."""
    services = {
        name.replace("_", "-"): ServiceState(ok, at, "pid 3" if ok else "no process")
        for name, ok in up.items()
    }
    stored, _ = w.keeper.receive("c1", services, reported_at=at)
    return stored


def c1_service(w: World) -> ComputeService:
    return w.cloud.get_service("c1")


def events(w: World) -> list[tuple[str, dict[str, object]]]:
    out = []
    for e in w.store.list_events(limit=1000):
        jsonschema.validate(e.payload, payload_schema(e.event_type))
        out.append((e.event_type, dict(e.payload["vigil_object.data"])))
    return out


def test_nova_compute_down_disables_the_host_and_up_again_enables_it(world: World) -> None:
    report(world, T0, nova_compute=True, libvirtd=True)
    assert world.cycle() == [] and events(world) == []  # all up: not news

    report(world, T0 + 1, nova_compute=False, libvirtd=True)
    world.cycle()
    service = c1_service(world)
    assert service.disabled and service.disabled_reason == hold_reason(["nova-compute"])
    assert not service.forced_down  # not fenced, not forced down: its guests run on
    assert world.store.get_host("c1").state is HostState.UP
    assert world.cycle() == []  # held: nothing more to do

    report(world, T0 + 9, nova_compute=True, libvirtd=True)
    world.cycle()
    assert not c1_service(world).disabled
    assert world.store.get_host_services("c1").hold is ComputeHold.NONE  # type: ignore[union-attr]
    types = [t for t, _ in events(world)]
    assert types == [
        "vigil.host.service.down",
        "vigil.host.compute.disabled",
        "vigil.host.service.up",
        "vigil.host.compute.enabled",
    ]
    down = events(world)[0][1]
    assert down["changed"] == ["nova-compute"] and down["services_down"] == ["nova-compute"]
    assert events(world)[3][1]["action"] == "enabled"


def test_a_disable_stuck_on_nova_delays_no_other_hosts_decision(world: World) -> None:
    # Nova holds c1's disable (it waits on the dead compute, up to rpc_response_timeout):
    # c2's nova-compute going down is still decided on and disabled meanwhile.
    world.store.create_host(Host("c2", "seg", state=HostState.UP))
    entered, release = threading.Event(), threading.Event()
    disable = world.compute.disable

    def stuck(host: str, reason: str) -> None:
        if host == "c1":
            entered.set()
            release.wait(30)
        disable(host, reason)

    world.compute.disable = stuck  # type: ignore[method-assign]
    down = {"nova-compute": ServiceState(False, T0, "no process")}
    world.keeper.receive("c1", down, reported_at=T0)
    try:
        world.keeper.run_cycle()
        assert entered.wait(5)
        world.keeper.receive("c2", down, reported_at=T0 + 1)
        started = time.monotonic()
        actions = world.keeper.run_cycle()
        assert time.monotonic() - started < 1, "the cycle waited on c1's disable"
        assert [a.host for a in actions] == ["c2"]  # c1 is busy: left alone
        wait_until(lambda: world.cloud.get_service("c2").disabled, "c2 disabled", 5)
        assert not world.cloud.get_service("c1").disabled
    finally:
        release.set()
    assert world.keeper.drain()
    assert world.cloud.get_service("c1").disabled


def test_an_operators_disable_is_left_alone_both_ways(world: World) -> None:
    world.cloud.disable("c1", "maintenance: new DIMM on Thursday")
    report(world, T0, nova_compute=False, libvirtd=True)
    world.cycle()
    assert c1_service(world).disabled_reason == "maintenance: new DIMM on Thursday"
    stored = world.store.get_host_services("c1")
    assert stored is not None and stored.hold is ComputeHold.LEFT
    report(world, T0 + 5, nova_compute=True, libvirtd=True)
    world.cycle()
    assert c1_service(world).disabled  # vigil did not disable it, so it does not enable it
    assert events(world)[1][1]["action"] == "left-disabled"


def test_an_operator_taking_over_while_held_keeps_their_disable(world: World) -> None:
    report(world, T0, libvirtd=False, nova_compute=True)
    world.cycle()
    assert c1_service(world).disabled_reason == hold_reason(["libvirtd"])
    world.cloud.disable("c1", "operator: investigating libvirtd")
    report(world, T0 + 5, libvirtd=True, nova_compute=True)
    world.cycle()
    assert c1_service(world).disabled_reason == "operator: investigating libvirtd"
    event_type, data = events(world)[-1]
    assert (event_type, data["action"]) == ("vigil.host.compute.enabled", "released")


def test_a_nova_error_is_retried_after_a_pause(world: World) -> None:
    world.compute.fail = 1
    report(world, T0, nova_compute=False, libvirtd=True)
    world.cycle()
    assert not c1_service(world).disabled
    assert world.store.get_host_services("c1").hold is ComputeHold.NONE  # type: ignore[union-attr]
    world.clock.advance(1)
    assert world.cycle() == []  # not before retry_after
    world.clock.advance(5)
    world.cycle()
    assert c1_service(world).disabled


def test_a_restarted_keeper_resumes_the_retry_where_it_was(world: World) -> None:
    world.compute.fail = 2
    report(world, T0, nova_compute=False, libvirtd=True)
    world.cycle()
    stored = world.store.get_host_services("c1")
    assert stored is not None and stored.action_attempts == 1
    assert stored.next_attempt_at == T0 + 5
    world.keeper.stop()  # vigil restarts: a new keeper on the same store
    world.service_keeper(retry_after=5.0)
    world.clock.advance(1)
    assert world.cycle() == []  # still not before the stored time
    world.clock.advance(5)
    world.cycle()  # the second attempt fails too: counted on from the stored one
    stored = world.store.get_host_services("c1")
    assert stored is not None and stored.action_attempts == 2 and not c1_service(world).disabled
    world.clock.advance(5)
    world.cycle()
    assert c1_service(world).disabled
    stored = world.store.get_host_services("c1")
    assert stored is not None and (stored.action_attempts, stored.next_attempt_at) == (0, 0.0)


def test_after_a_host_failure_the_hold_is_forgotten_and_taken_again_after_restore(
    world: World,
) -> None:
    report(world, T0, nova_compute=False, libvirtd=True)
    world.cycle()
    world.store.set_host_state("c1", HostState.SUSPECT, reason="no heartbeat", at=T0 + 1)
    world.store.set_host_state("c1", HostState.FAILED, reason="power off", at=T0 + 2)
    world.cycle()
    assert world.store.get_host_services("c1").hold is ComputeHold.NONE  # type: ignore[union-attr]
    world.cloud.enable("c1")  # the operator's restore enables it...
    world.store.set_host_state("c1", HostState.RECOVERED, reason="evacuated", at=T0 + 3)
    world.store.set_host_state("c1", HostState.NEW, reason="restored", at=T0 + 4)
    world.store.set_host_state("c1", HostState.UP, reason="heartbeat", at=T0 + 5)
    world.cycle()
    assert c1_service(world).disabled  # ...and nova-compute still down: held again


def test_a_stale_snapshot_changes_nothing(world: World) -> None:
    report(world, T0 + 10, nova_compute=True, libvirtd=True)
    report(world, T0 + 5, nova_compute=False, libvirtd=True)  # a late retry
    assert world.cycle() == []
    assert not c1_service(world).disabled and events(world) == []
