"""In-process worlds: vigil's reactions on a fake clock, against the simulated cloud
(``support.cloud``) and a real (SQLite) store -- no sockets, no sleeping, the same
decisions as production.

A test builds the world, then the reaction it tests on it::

    w = World(tmp_path, ("c1", "c2"))  # clock, cloud, store, heartbeats, settings
    vm = w.cloud.add_instance("vm0", "c1", policy=HaPolicy.KEEP_RUNNING)
    w.host_engine()  # or w.guest_engine(), w.service_keeper()
    w.tick()  # time passes, the hosts that can beat do, one engine cycle

- ``World``: the clock and the cloud (``FakeTimeCloud``) with the store, the heartbeat
  table and the settings beside them, and the reactions built on them; ``tick`` drives
  the host engine, ``cycle`` the guest engine and the service keeper.
- ``HostFailureWorld``: the world of the host-failure tests (tests/engine): four hosts,
  three protected instances on c1, the host engine.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from support import new_store
from support.cloud import TICK, FakeTimeCloud, until
from vigil.config import DetectionSettings, RecoverySettings, Settings
from vigil.drivers.compute import ComputeDriver
from vigil.drivers.fencing import FenceDevice
from vigil.engine.engine import Engine
from vigil.engine.guest import GuestSettings
from vigil.engine.guest_engine import GuestEngine
from vigil.engine.heartbeat import HeartbeatTable
from vigil.engine.ownership import Ownership
from vigil.engine.service_keeper import ServiceKeeper
from vigil.engine.steps import StepContext
from vigil.model import (
    FenceMethod,
    GuestFailureKind,
    GuestReport,
    HaPolicy,
    Host,
    HostState,
    RecoveryStatus,
    Segment,
)
from vigil.sim.cloud import SimCloud, SimLatency
from vigil.sim.drivers import SimCompute

__all__ = ["HOSTS", "TICK", "HostFailureWorld", "World"]


class World(FakeTimeCloud):
    """A fake-time cloud with vigil beside it.

    Beside the cloud (see ``FakeTimeCloud``): ``store``, a migrated SQLite store holding
    ``segment`` (a ``Segment`` or a name) and a record for each host, fenced through its
    simulated BMC (``store_hosts`` for other records); ``heartbeats``, the table agents'
    heartbeats land in; ``settings``, default detection and ``recovery`` (default:
    polls every 50 ms).

    Build the reaction a test needs with ``host_engine``, ``guest_engine`` or
    ``service_keeper`` (also ``engine``, ``guest``, ``keeper``); each waits by advancing
    the fake clock. ``close``, or leaving a ``with`` block, stops what was built and
    closes the store.
    """

    engine: Engine
    guest: GuestEngine
    keeper: ServiceKeeper

    def __init__(
        self,
        tmp_path: Path,
        hosts: Iterable[str] = ("c1",),
        *,
        segment: Segment | str = "s1",
        store_hosts: Iterable[Host] | None = None,
        recovery: RecoverySettings | None = None,
        latency: SimLatency | None = None,
        start: float | None = None,
        compute: Callable[[SimCloud], ComputeDriver] = SimCompute,
        **cloud_options: Any,
    ) -> None:
        super().__init__(hosts, latency=latency, start=start, compute=compute, **cloud_options)
        seg = segment if isinstance(segment, Segment) else Segment(segment)
        if store_hosts is None:
            fenced = (FenceMethod("sim"),)
            store_hosts = [Host(h, seg.name, fencing=fenced) for h in self.cloud.hosts()]
        self.store = new_store(tmp_path, seg, store_hosts)
        self.heartbeats = HeartbeatTable(self.clock)
        self.settings = Settings(
            detection=DetectionSettings(),
            recovery=recovery or RecoverySettings(poll_interval=0.05),
            api_token="t",
            agent_key="k",
        )
        self._stops: list[Callable[[], None]] = []
        self._cycles: dict[str, Callable[[], list[Any]]] = {}
        self._beats = 0
        self._since_beat = 0.0

    # --- the reactions ------------------------------------------------------------------

    def host_engine(
        self,
        wait: Callable[[float], None] | None = None,
        *,
        ownership: Ownership | None = None,
        fence_devices: Callable[[Host], list[FenceDevice]] | None = None,
    ) -> Engine:
        """The host engine (detection and recovery), fencing through the simulated BMCs
        (or ``fence_devices``). Its steps wait by advancing the fake clock, or with
        ``wait`` (``time.sleep``: in real time, so that a step stays in flight while the
        test's ticks go on). ``ownership``: which segments it acts on (default: all)."""
        from vigil.server import fence_factory  # vigil.server pulls the API in: only here

        self.engine = Engine(
            store=self.store,
            compute=self.compute,
            ownership=ownership,
            fence_devices=fence_devices or fence_factory(self.cloud),
            settings=self.settings,
            clock=self.clock,
            heartbeats=self.heartbeats,
            wait=wait or self.clock.advance,
        )
        self._stops.append(self.engine.close)
        return self.engine

    def guest_engine(self, settings: GuestSettings | None = None, **options: Any) -> GuestEngine:
        """The guest engine; ``options`` go to ``GuestEngine`` (``services=``, ...)."""
        guest = self.guest = GuestEngine(
            store=self.store,
            compute=self.compute,
            clock=self.clock,
            settings=settings,
            wait=self.clock.advance,
            **options,
        )
        self._stops.append(guest.stop)

        def cycle() -> list[Any]:
            actions: list[Any] = guest.run_cycle()
            assert guest.drain()
            if guest.policies_ready():  # looked up on a worker: decided on at once
                actions += guest.run_cycle()
                assert guest.drain()
            return actions

        self._cycles["guest"] = cycle
        return guest

    def service_keeper(self, **options: Any) -> ServiceKeeper:
        """The host service keeper (a new one replaces the last in ``cycle``, as after a
        restart); ``options`` go to ``ServiceKeeper`` (``retry_after=``)."""
        keeper = self.keeper = ServiceKeeper(
            store=self.store, compute=self.compute, clock=self.clock, **options
        )
        self._stops.append(keeper.stop)

        def cycle() -> list[Any]:
            actions: list[Any] = list(keeper.run_cycle())
            assert keeper.drain()
            return actions

        self._cycles["keeper"] = cycle
        return keeper

    def step_context(self, compute: ComputeDriver | None = None, **options: Any) -> StepContext:
        """What a recovery step runs with, to call one step directly: this world's clock,
        recovery settings and compute (or ``compute``), no fence devices, no policies;
        ``options`` go to ``StepContext`` (``booted_again=``, ...)."""
        return StepContext(
            compute=compute if compute is not None else self.compute,
            fence_devices=lambda host: [],
            policies=lambda _ids: {},
            settings=self.settings.recovery,
            clock=self.clock,
            wait=self.clock.advance,
            **options,
        )

    # --- time passing -------------------------------------------------------------------

    def tick(self, seconds: float = TICK, *, drain: bool = True) -> None:
        """``seconds`` pass; every ``heartbeat_interval`` each host that can beat (powered,
        its agent running, reaching vigil-server) beats with its kernel boot id; then one
        host engine cycle, run to its end (``drain`` False: its steps may stay in
        flight)."""
        self.clock.advance(seconds)
        self._since_beat += seconds
        if self._since_beat >= self.settings.detection.heartbeat_interval - 1e-9:
            self._since_beat = 0.0
            self._beats += 1
            beating = [h for h in self.cloud.hosts() if self.cloud.host_can_heartbeat(h)]
            kernels = {h: boot for h in beating if (boot := self.cloud.boot_id(h))}
            self.heartbeats.heard(beating, kernels)
        self.engine.run_cycle()
        if drain:
            assert self.engine.drain(5)

    def tick_until(
        self, condition: Callable[[], object], what: str = "the condition", timeout: float = 30.0
    ) -> None:
        """Tick until ``condition()`` holds; fail after ``timeout`` fake seconds."""
        until(self.clock, condition, what, timeout, self.tick)

    def cycle(self, advance: float = 0.0) -> list[Any]:
        """``advance`` seconds pass; then one cycle of the guest engine and one of the
        service keeper, those built, each run to its end (a guest failure whose policy
        was looked up meanwhile is decided on at once, as the loop would on waking).
        Returns the actions decided."""
        self.clock.advance(advance)
        actions: list[Any] = []
        for cycle in self._cycles.values():
            actions += cycle()
        return actions

    # --- reading it ---------------------------------------------------------------------

    def state(self, host: str) -> HostState:
        return self.store.get_host(host).state

    def recovery_status(self, host: str) -> RecoveryStatus | None:
        """The status of the host's latest recovery (None: none)."""
        recoveries = self.store.list_recoveries(host=host)
        return recoveries[0].status if recoveries else None

    def recovery_ended(self, host: str) -> bool:
        return self.recovery_status(host) in (RecoveryStatus.SUCCEEDED, RecoveryStatus.FAILED)

    def event_types(self, instance_id: str | None = None) -> list[str]:
        """The events published, oldest first (of one instance, or all)."""
        return [
            e.event_type
            for e in self.store.list_events(limit=10_000)
            if instance_id is None or e.instance_id == instance_id
        ]

    # --- agents -------------------------------------------------------------------------

    def guest_report(self, instance_id: str, kind: GuestFailureKind, **detail: Any) -> GuestReport:
        """The agent of the instance's host reports a guest failure now; the guest engine
        receives it."""
        host = self.cloud.instance(instance_id).host
        report = GuestReport(str(uuid.uuid4()), host, instance_id, kind, self.clock.wall(), detail)
        self.guest.receive([report])
        return report

    # --- the end ------------------------------------------------------------------------

    def close(self) -> None:
        for stop in reversed(self._stops):
            stop()
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


HOSTS = ("c1", "c2", "c3", "c4")


class HostFailureWorld(World):
    """The world of the host-failure tests: hosts c1..c4 in segment s1, each fenced
    through its simulated BMC; on c1 the keep-running ``instances`` vm0, vm1, vm2
    (priorities 0, 1, 2) and ``scratch`` (policy off); the host engine built. ``settle``
    ticks until every host that can beat has beaten and reads up."""

    def __init__(
        self,
        tmp_path: Path,
        recovery: RecoverySettings | None = None,
        compute: Callable[[SimCloud], ComputeDriver] = SimCompute,
    ) -> None:
        super().__init__(tmp_path, HOSTS, recovery=recovery, compute=compute)
        keep = HaPolicy.KEEP_RUNNING
        self.instances = [
            self.cloud.add_instance(f"vm{i}", "c1", policy=keep, priority=i) for i in range(3)
        ]
        self.cloud.add_instance("scratch", "c1", policy=HaPolicy.OFF)
        self.host_engine()

    def settle(self) -> None:
        """Half a second of ticks: every host that can beat has, and reads up."""
        for _ in range(10):
            self.tick()
        beating = [h for h in HOSTS if self.cloud.host_can_heartbeat(h)]
        assert all(self.state(h) == HostState.UP for h in beating), "not every host is up"
