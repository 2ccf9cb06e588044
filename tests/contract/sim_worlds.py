"""The simulated cloud dressed as contract worlds: in-process on a fake clock, or served
over real HTTP on the system clock (the way a vigil-server subprocess reaches it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from support.cloud import FakeTimeCloud

from vigil.clock import Clock, SystemClock
from vigil.drivers.compute import ComputeDriver
from vigil.drivers.fencing import FenceDevice
from vigil.sim.api import CloudApi
from vigil.sim.cloud import SimCloud, SimLatency
from vigil.sim.drivers import SimCompute, SimFenceDevice
from vigil.sim.rpc import RemoteCloud, serve_cloud

if TYPE_CHECKING:
    from .compute_contract import ComputeWorld
    from .fence_contract import FenceWorld

# Realistic proportions, but nothing that blocks: on a FakeClock only api_call,
# bmc_timeout and rpc_timeout would sleep, and sleeping advances the fake clock.
FAKE_TIME_LATENCY = SimLatency(
    api_call=0.0, evacuate=0.4, power_off=0.2, action=0.05, bmc_timeout=0.5, rpc_timeout=1.0
)
# Real time over HTTP: short enough to keep the suite fast, long enough to be observed.
REAL_TIME_LATENCY = SimLatency(
    api_call=0.0, evacuate=0.05, power_off=0.02, action=0.01, bmc_timeout=0.05, rpc_timeout=0.05
)
KINDS = ["in-process", "over-http"]


@dataclass
class SimRig:
    cloud: SimCloud
    api: CloudApi
    clock: Clock
    fake: FakeTimeCloud | None  # in-process: the cloud on its fake clock
    timeout: float = field(init=False)

    def __post_init__(self) -> None:
        self.timeout = 30.0 if self.fake is not None else 5.0

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        if self.fake is not None:
            self.fake.advance_until(condition, what, timeout)
            return
        start = self.clock.monotonic()
        while not condition():
            if self.clock.monotonic() - start > timeout:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.005)


@contextmanager
def sim_rig(kind: str, *, evacuate_leaves_stopped: bool = False) -> Iterator[SimRig]:
    if kind == "in-process":
        fake = FakeTimeCloud(
            latency=FAKE_TIME_LATENCY, evacuate_leaves_stopped=evacuate_leaves_stopped
        )
        yield SimRig(fake.cloud, fake.cloud, fake.clock, fake)
        return
    assert kind == "over-http", kind
    system = SystemClock()
    cloud = SimCloud(
        system, latency=REAL_TIME_LATENCY, evacuate_leaves_stopped=evacuate_leaves_stopped
    )
    server, url = serve_cloud(cloud)
    remote = RemoteCloud(url)
    try:
        yield SimRig(cloud, remote, system, None)
    finally:
        remote.close()
        server.close()


@dataclass
class SimComputeWorld:
    rig: SimRig
    hosts: Sequence[str]
    driver: ComputeDriver = field(init=False)
    timeout: float = field(init=False)

    def __post_init__(self) -> None:
        self.driver = SimCompute(self.rig.api)
        self.timeout = self.rig.timeout

    def boot(self, name: str, host: str, metadata: Mapping[str, str] | None = None) -> str:
        return self.rig.cloud.add_instance(name, host, metadata=metadata)

    def fail_host(self, host: str) -> None:
        self.rig.cloud.power_loss(host)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        self.rig.wait_until(condition, what, timeout)


@dataclass
class SimFenceWorld:
    rig: SimRig
    device: FenceDevice
    unreachable: FenceDevice | None
    secrets: Sequence[str] = ()
    timeout: float = field(init=False)

    def __post_init__(self) -> None:
        self.timeout = self.rig.timeout

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        self.rig.wait_until(condition, what, timeout)


def build_compute_world(rig: SimRig) -> SimComputeWorld:
    hosts = ["compute-1", "compute-2", "compute-3"]
    for host in hosts:
        rig.cloud.add_host(host, capacity=6)
    return SimComputeWorld(rig, hosts)


def build_fence_world(rig: SimRig) -> SimFenceWorld:
    rig.cloud.add_host("compute-1")
    rig.cloud.add_host("compute-2")
    rig.cloud.bmc_unreachable("compute-2", True)
    return SimFenceWorld(
        rig,
        SimFenceDevice(rig.api, "compute-1"),
        SimFenceDevice(rig.api, "compute-2"),
    )


if TYPE_CHECKING:  # mypy checks the worlds against the contracts' protocols
    _compute: type[ComputeWorld] = SimComputeWorld
    _fence: type[FenceWorld] = SimFenceWorld
