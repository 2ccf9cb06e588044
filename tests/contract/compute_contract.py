"""The compute contract: what every ComputeDriver must do for vigil's recovery engine.

Reuse: subclass ``ComputeContract`` in a test module and define a ``compute_world``
fixture returning a ``ComputeWorld``; every ``test_*`` here then runs against that
implementation (the simulated cloud here, a real Nova through openstacksdk later). Each
test gets a fresh world, or at least hosts that are all up, enabled, not forced down and
with room for three instances each; the fixture cleans up (un-force, enable, delete).

What a real Nova needs from its driver to pass (the sim does it natively):

- ``ComputeServiceInUse`` (Nova answers 400) must become ``Conflict``: it passes once the
  host is fenced and forced down, which is what the engine waits for;
- ``list_servers`` of an unknown host must raise ``NotFound`` (Nova returns an empty list):
  a misspelt host must not read as "nothing to evacuate";
- HA policy comes from server metadata: ``vigil:ha_policy`` (``keep-running``/``notify``/
  ``off``), ``vigil:ha_priority`` (an integer), or Masakari's ``HA_Enabled``
  (``True``/``False``) when vigil's key is absent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import pytest

from vigil.drivers.compute import (
    ACTIVE,
    EVACUABLE,
    MASAKARI_KEY,
    POLICY_KEY,
    PRIORITY_KEY,
    REBUILD,
    SHUTOFF,
    ComputeDriver,
    Server,
)
from vigil.drivers.errors import Conflict, NotFound, PermanentError
from vigil.model import HaPolicy


class ComputeWorld(Protocol):
    """A small cloud a compute driver's contract runs in."""

    @property
    def driver(self) -> ComputeDriver: ...

    @property
    def hosts(self) -> Sequence[str]:
        """At least three compute hosts."""

    @property
    def timeout(self) -> float:
        """How long an evacuation, start, stop or reboot may take here, in seconds."""

    def boot(self, name: str, host: str, metadata: Mapping[str, str] | None = None) -> str:
        """Create an instance on ``host`` with ``metadata``; return its id once ACTIVE."""

    def fail_host(self, host: str) -> None:
        """Kill the host as a confirmed fence would: its nova-compute stops reporting and
        its instances stop running. Nova's service record is left alone (not forced down)."""

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        """Return once ``condition()`` holds; fail the test after ``timeout`` seconds of
        the world's time (a simulated world may move a fake clock instead of sleeping)."""


def _missing() -> str:
    return str(uuid.uuid4())


class ComputeContract:
    # ---------------------------------------------------------------------- helpers

    def _server_when(
        self, world: ComputeWorld, sid: str, what: str, ok: Callable[[Server], bool]
    ) -> Server:
        seen: list[Server] = []

        def check() -> bool:
            seen.append(world.driver.get_server(sid))
            return ok(seen[-1])

        world.wait_until(check, f"instance {sid} {what}", world.timeout)
        return seen[-1]

    def _fail_and_force_down(self, world: ComputeWorld, host: str) -> None:
        world.fail_host(host)
        world.driver.set_forced_down(host, True)

    def _evacuated(self, world: ComputeWorld, sid: str, source: str) -> Server:
        """Wait for the instance to land off ``source``; start it if Nova left it stopped."""
        server = self._server_when(
            world,
            sid,
            f"moved off {source}",
            lambda s: s.host != source and s.status in (ACTIVE, SHUTOFF) and not s.task_state,
        )
        if server.status == SHUTOFF:  # Nova >= 2.95 leaves evacuated instances stopped
            world.driver.start(sid)
            server = self._server_when(world, sid, "ACTIVE", lambda s: s.status == ACTIVE)
        return server

    # ------------------------------------------------------------------- services

    def test_every_host_has_an_up_enabled_service(self, compute_world: ComputeWorld) -> None:
        services = {s.host: s for s in compute_world.driver.list_services()}
        for host in compute_world.hosts:
            assert services[host].up, host
            assert not services[host].forced_down
            assert not services[host].disabled
            assert compute_world.driver.get_service(host) == services[host]

    def test_force_down_reads_down_and_undoes(self, compute_world: ComputeWorld) -> None:
        driver, host = compute_world.driver, compute_world.hosts[0]
        driver.set_forced_down(host, True)
        service = driver.get_service(host)
        assert service.forced_down and not service.up
        listed = next(s for s in driver.list_services() if s.host == host)
        assert listed.forced_down and not listed.up
        driver.set_forced_down(host, True)  # idempotent
        driver.set_forced_down(host, False)
        compute_world.wait_until(
            lambda: driver.get_service(host).up, f"{host} up again", compute_world.timeout
        )
        assert not driver.get_service(host).forced_down

    def test_disable_keeps_reason_and_enable_clears(self, compute_world: ComputeWorld) -> None:
        driver, host = compute_world.driver, compute_world.hosts[1]
        driver.disable(host, "vigil: contract test")
        service = driver.get_service(host)
        assert service.disabled
        assert service.disabled_reason == "vigil: contract test"
        assert service.up, "disabling is not forcing down"
        driver.enable(host)
        assert not driver.get_service(host).disabled

    def test_unknown_host_is_not_found(self, compute_world: ComputeWorld) -> None:
        driver, host = compute_world.driver, f"no-such-host-{uuid.uuid4().hex[:8]}"
        with pytest.raises(NotFound):
            driver.get_service(host)
        with pytest.raises(NotFound):
            driver.set_forced_down(host, True)
        with pytest.raises(NotFound):
            driver.disable(host, "x")
        with pytest.raises(NotFound):
            driver.enable(host)
        with pytest.raises(NotFound):
            driver.list_servers(host)

    # -------------------------------------------------------------------- servers

    def test_list_servers_lists_exactly_the_host_s_instances(
        self, compute_world: ComputeWorld
    ) -> None:
        a, b, c = compute_world.hosts[:3]
        on_a = {compute_world.boot("ct-a1", a), compute_world.boot("ct-a2", a)}
        on_b = compute_world.boot("ct-b1", b)
        listed = compute_world.driver.list_servers(a)
        assert {s.id for s in listed} == on_a
        assert all(s.host == a and s.status == ACTIVE for s in listed)
        assert {s.name for s in listed} == {"ct-a1", "ct-a2"}
        assert [s.id for s in compute_world.driver.list_servers(b)] == [on_b]
        assert compute_world.driver.list_servers(c) == []

    def test_policy_and_priority_come_from_metadata(self, compute_world: ComputeWorld) -> None:
        host = compute_world.hosts[0]
        keep = compute_world.boot("ct-keep", host, {POLICY_KEY: "keep-running", PRIORITY_KEY: "7"})
        notify = compute_world.boot("ct-notify", host, {POLICY_KEY: "notify"})
        masakari = compute_world.boot("ct-masakari", host, {MASAKARI_KEY: "True"})
        plain = compute_world.boot("ct-plain", host)
        servers = {s.id: s for s in compute_world.driver.list_servers(host)}
        assert (servers[keep].policy, servers[keep].priority) == (HaPolicy.KEEP_RUNNING, 7)
        assert (servers[notify].policy, servers[notify].priority) == (HaPolicy.NOTIFY, 0)
        assert servers[masakari].policy == HaPolicy.KEEP_RUNNING
        assert servers[plain].policy is None, "no metadata: the segment default applies"
        assert compute_world.driver.get_server(keep) == servers[keep]

    def test_unknown_instance_is_not_found(self, compute_world: ComputeWorld) -> None:
        driver = compute_world.driver
        calls: list[Callable[[str], object]] = [
            driver.get_server,
            driver.evacuate,
            driver.start,
            driver.stop,
            driver.reboot,
        ]
        for call in calls:
            with pytest.raises(NotFound):
                call(_missing())

    def test_stop_then_start(self, compute_world: ComputeWorld) -> None:
        sid = compute_world.boot("ct-stop", compute_world.hosts[0])
        compute_world.driver.stop(sid)
        self._server_when(compute_world, sid, "SHUTOFF", lambda s: s.status == SHUTOFF)
        compute_world.driver.start(sid)
        server = self._server_when(compute_world, sid, "ACTIVE", lambda s: s.status == ACTIVE)
        assert server.host == compute_world.hosts[0]

    def test_start_of_a_running_instance_conflicts(self, compute_world: ComputeWorld) -> None:
        sid = compute_world.boot("ct-running", compute_world.hosts[0])
        with pytest.raises(Conflict):
            compute_world.driver.start(sid)

    @pytest.mark.parametrize("hard", [True, False])
    def test_reboot_ends_active(self, compute_world: ComputeWorld, hard: bool) -> None:
        sid = compute_world.boot("ct-reboot", compute_world.hosts[0])
        compute_world.driver.reboot(sid, hard=hard)
        server = self._server_when(
            compute_world, sid, "ACTIVE after reboot", lambda s: s.status == ACTIVE
        )
        assert server.host == compute_world.hosts[0]

    # ------------------------------------------------------------------- evacuate

    def test_evacuate_refused_while_source_service_up(self, compute_world: ComputeWorld) -> None:
        source = compute_world.hosts[0]
        sid = compute_world.boot("ct-inuse", source)
        with pytest.raises(Conflict):
            compute_world.driver.evacuate(sid)
        compute_world.driver.disable(source, "disabled is not enough")
        with pytest.raises(Conflict):
            compute_world.driver.evacuate(sid)
        server = compute_world.driver.get_server(sid)
        assert (server.host, server.status) == (source, ACTIVE)

    def test_evacuate_refused_after_host_death_until_forced_down(
        self, compute_world: ComputeWorld
    ) -> None:
        source = compute_world.hosts[0]
        sid = compute_world.boot("ct-lag", source)
        compute_world.fail_host(source)
        # Nova notices a silent compute only after service_down_time: still "up" now.
        with pytest.raises(Conflict):
            compute_world.driver.evacuate(sid)
        compute_world.driver.set_forced_down(source, True)
        compute_world.driver.evacuate(sid)
        assert self._evacuated(compute_world, sid, source).host in compute_world.hosts

    def test_evacuate_moves_the_instance_to_another_host(self, compute_world: ComputeWorld) -> None:
        source = compute_world.hosts[0]
        sid = compute_world.boot("ct-evac", source, {POLICY_KEY: "keep-running"})
        self._fail_and_force_down(compute_world, source)
        compute_world.driver.evacuate(sid)
        right_after = compute_world.driver.get_server(sid)
        # The engine tells "in flight" from "never asked" by this: never ask twice.
        assert right_after.status == REBUILD or right_after.host != source
        server = self._evacuated(compute_world, sid, source)
        assert server.host in compute_world.hosts and server.host != source
        assert server.status == ACTIVE
        assert server.policy == HaPolicy.KEEP_RUNNING, "metadata travels with the instance"
        assert sid not in {s.id for s in compute_world.driver.list_servers(source)}
        assert server.host is not None
        assert sid in {s.id for s in compute_world.driver.list_servers(server.host)}

    def test_evacuate_to_a_named_host(self, compute_world: ComputeWorld) -> None:
        source, target = compute_world.hosts[0], compute_world.hosts[2]
        sid = compute_world.boot("ct-target", source)
        self._fail_and_force_down(compute_world, source)
        compute_world.driver.evacuate(sid, target)
        assert self._evacuated(compute_world, sid, source).host == target

    def test_evacuate_of_a_stopped_instance_keeps_it_stopped(
        self, compute_world: ComputeWorld
    ) -> None:
        source = compute_world.hosts[0]
        sid = compute_world.boot("ct-stopped", source)
        compute_world.driver.stop(sid)
        self._server_when(compute_world, sid, "SHUTOFF", lambda s: s.status == SHUTOFF)
        self._fail_and_force_down(compute_world, source)
        compute_world.driver.evacuate(sid)
        server = self._server_when(
            compute_world,
            sid,
            f"moved off {source}",
            lambda s: s.host != source and s.status in EVACUABLE and not s.task_state,
        )
        assert server.status == SHUTOFF

    # A second evacuation while the first is being rebuilt is not refused by every Nova
    # (34 accepts it and records a second, failed migration): the evacuate step reads the
    # instance and asks only when no task is in progress (tests/engine/test_engine.py).

    def test_evacuate_to_the_source_host_is_refused(self, compute_world: ComputeWorld) -> None:
        source = compute_world.hosts[0]
        sid = compute_world.boot("ct-same", source)
        self._fail_and_force_down(compute_world, source)
        with pytest.raises(PermanentError):
            compute_world.driver.evacuate(sid, source)
        assert compute_world.driver.get_server(sid).host == source

    def test_evacuate_to_an_unknown_host_is_not_found(self, compute_world: ComputeWorld) -> None:
        source = compute_world.hosts[0]
        sid = compute_world.boot("ct-nohost", source)
        self._fail_and_force_down(compute_world, source)
        with pytest.raises(NotFound):
            compute_world.driver.evacuate(sid, f"no-such-host-{uuid.uuid4().hex[:8]}")
