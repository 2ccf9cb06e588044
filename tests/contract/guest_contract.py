"""The guest-restart contract: what vigil does through the compute API when an agent
reports a guest failure, whichever cloud it runs on.

Reuse: subclass ``GuestContract`` in a test module and define a ``guest_world`` fixture
giving a ``GuestWorld``. The guest engine runs in the test on a real (SQLite) store and
the world's compute driver, on the system clock; the same scenarios run on the
contract-tested simulated cloud (tests/contract/test_sim_guest.py) and on the real Nova
tier (tests/nova/test_guest_nova.py), so the restart path is never shown only on a fake
that would let Nova do what it forbids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import pytest
from support import new_store, wait_until

from vigil.clock import SystemClock
from vigil.drivers.compute import ACTIVE, POLICY_KEY, SHUTOFF, ComputeDriver
from vigil.engine.app_engine import AppHealth
from vigil.engine.guest import GuestSettings
from vigil.engine.guest_engine import GuestEngine
from vigil.model import (
    AppEpisodeStatus,
    CheckState,
    GuestFailureKind,
    GuestFailureStatus,
    GuestReport,
    HaPolicy,
    Health,
    Host,
    InstanceFailure,
    Segment,
    StepStatus,
)
from vigil.store.sql import SqlStore
from vigil.wire.app_checks import AppReport


class GuestWorld(Protocol):
    @property
    def driver(self) -> ComputeDriver: ...

    @property
    def hosts(self) -> Sequence[str]: ...

    @property
    def timeout(self) -> float:
        """How long a start or reboot may take here, in seconds."""

    def boot(self, name: str, host: str, metadata: Mapping[str, str]) -> str:
        """An instance on ``host``, ACTIVE; its id."""

    def stop(self, server_id: str) -> None:
        """Stopped as Nova sees a guest that QEMU lost: SHUTOFF, once this returns."""

    def restarts(self, server_id: str) -> list[str]:
        """The starts, reboots and rebuilds the cloud recorded for the instance, oldest
        first."""


class Rig:
    """The guest engine on a real store and the world's driver, as vigil-server runs it."""

    def __init__(self, world: GuestWorld, tmp_path: Path) -> None:
        self.world = world
        self.store: SqlStore = new_store(
            tmp_path,
            Segment("guests", default_policy=HaPolicy.OFF),
            [Host(h, "guests") for h in world.hosts],
        )
        settings = GuestSettings(restart_confirm_timeout=world.timeout)
        self.engine = GuestEngine(
            store=self.store,
            compute=world.driver,
            clock=SystemClock(),
            settings=settings,
            tick=0.1,
            poll_interval=0.2,
        )
        self.engine.start()

    def report(self, host: str, server_id: str, kind: GuestFailureKind) -> None:
        at = SystemClock().wall()
        self.engine.receive(
            [GuestReport(str(uuid.uuid4()), host, server_id, kind, at, {"reason": "test"})]
        )

    def failure(self, server_id: str) -> InstanceFailure | None:
        found = self.store.list_guest_failures(instance_id=server_id)
        return found[0] if found else None

    def close(self) -> None:
        self.engine.stop()
        self.store.close()


class GuestContract:
    @pytest.fixture
    def rig(self, guest_world: GuestWorld, tmp_path: Path) -> Iterator[Rig]:
        rig = Rig(guest_world, tmp_path)
        try:
            yield rig
        finally:
            rig.close()

    def _restarted(self, rig: Rig, sid: str) -> InstanceFailure:
        def done() -> InstanceFailure | None:
            f = rig.failure(sid)
            return f if f is not None and f.action_status == StepStatus.SUCCEEDED else None

        failure: InstanceFailure = wait_until(
            done, f"the restart of {sid} to succeed", rig.world.timeout + 10, every=0.1
        )
        return failure

    def test_a_crashed_guest_the_cloud_shows_stopped_is_started_again(self, rig: Rig) -> None:
        w = rig.world
        sid = w.boot("db", w.hosts[0], {POLICY_KEY: "keep-running"})
        w.stop(sid)
        rig.report(w.hosts[0], sid, GuestFailureKind.STOPPED_FAILED)
        failure = self._restarted(rig, sid)
        assert failure.restarts == 1
        assert w.driver.get_server(sid).status == ACTIVE
        assert w.restarts(sid) == ["start"]

    def test_a_crashed_guest_the_cloud_still_shows_active_is_hard_rebooted(self, rig: Rig) -> None:
        # The guest panicked; Nova has not noticed (its power sync runs every 10 min).
        w = rig.world
        sid = w.boot("db", w.hosts[0], {POLICY_KEY: "keep-running"})
        rig.report(w.hosts[0], sid, GuestFailureKind.CRASHED)
        self._restarted(rig, sid)
        assert w.driver.get_server(sid).status == ACTIVE
        assert w.restarts(sid) == ["reboot"]

    def test_a_notify_guest_is_told_about_and_left_as_it_is(self, rig: Rig) -> None:
        w = rig.world
        sid = w.boot("pet", w.hosts[0], {POLICY_KEY: "notify"})
        w.stop(sid)
        rig.report(w.hosts[0], sid, GuestFailureKind.STOPPED_FAILED)
        wait_until(
            lambda: (f := rig.failure(sid)) is not None and f.status == GuestFailureStatus.NOTIFIED,
            "the owner to be notified",
            10,
            every=0.1,
        )
        assert rig.engine.drain(5.0)
        assert w.driver.get_server(sid).status == SHUTOFF
        assert w.restarts(sid) == []

    def test_an_application_ladder_reboots_then_rebuilds_through_the_compute_api(
        self, rig: Rig
    ) -> None:
        """Issue 17's ladder against the cloud: a failing application check, a soft
        reboot, then (rebuild=true) a rebuild from the instance's image, then escalated."""
        w = rig.world
        sid = w.boot(
            "web",
            w.hosts[0],
            {
                "vigil:check:web": "type=exec command=/bin/false interval=5 timeout=2 grace=0",
                "vigil:app_recovery": "reboots=1 rebuild=true settle=5 backoff=0",
            },
        )
        clock = SystemClock()
        apps = AppHealth(store=rig.store, compute=w.driver, clock=clock, key=b"k")
        try:
            now = clock.wall()
            failing = CheckState(Health.FAILING, 3, now, "exit status 1", now)
            apps.exchange(AppReport(w.hosts[0], now, {sid: {"web": failing}}))

            def settled() -> bool:
                server = w.driver.get_server(sid)
                return server.status == ACTIVE and server.task_state is None

            def climbed(rungs: int) -> AppEpisodeStatus | None:
                apps.run_cycle()
                assert apps.drain(w.timeout)
                inst = rig.store.get_app_instance(sid)
                episode = inst.episode if inst is not None else None
                if episode is None or episode.attempts < rungs or not settled():
                    return None
                return episode.status

            wait_until(lambda: climbed(1), "the soft reboot", w.timeout + 10, every=0.5)
            assert w.restarts(sid) == ["reboot"]
            wait_until(lambda: climbed(2), "the rebuild", w.timeout + 20, every=0.5)
            assert w.restarts(sid) == ["reboot", "rebuild"]
            assert wait_until(
                lambda: climbed(2) == AppEpisodeStatus.ESCALATED, "escalated", 20, every=0.5
            )
            inst = rig.store.get_app_instance(sid)
            assert inst is not None and inst.episode is not None
            assert inst.episode.action_status == StepStatus.SUCCEEDED  # Nova took the rebuild
            assert w.restarts(sid) == ["reboot", "rebuild"]  # and nothing after
        finally:
            apps.stop()
