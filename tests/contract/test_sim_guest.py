"""The guest-restart contract (guest_contract.py) on the simulated cloud, whose compute
side the compute contract holds to Nova's rules (only a stopped instance starts)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from support import wait_until

from vigil.clock import SystemClock
from vigil.drivers.compute import SHUTOFF, ComputeDriver
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimCompute

from .guest_contract import GuestContract
from .sim_worlds import REAL_TIME_LATENCY


@dataclass
class SimGuestWorld:
    cloud: SimCloud
    hosts: Sequence[str] = ("compute-1", "compute-2")
    timeout: float = 5.0
    driver: ComputeDriver = field(init=False)

    def __post_init__(self) -> None:
        for host in self.hosts:
            self.cloud.add_host(host)
        self.driver = SimCompute(self.cloud)

    def boot(self, name: str, host: str, metadata: Mapping[str, str]) -> str:
        return self.cloud.add_instance(name, host, metadata=metadata)

    def stop(self, server_id: str) -> None:
        self.cloud.stop(server_id)
        wait_until(lambda: self.cloud.instance(server_id).status == SHUTOFF, "SHUTOFF", 5.0)

    def restarts(self, server_id: str) -> list[str]:
        # The simulated cloud counts calls per kind; one kind happens per scenario.
        return [
            kind
            for kind in ("start", "reboot", "rebuild")
            for _ in range(self.cloud.calls(kind, server_id))
        ]


class TestSimGuest(GuestContract):
    @pytest.fixture
    def guest_world(self) -> Iterator[SimGuestWorld]:
        yield SimGuestWorld(SimCloud(SystemClock(), latency=REAL_TIME_LATENCY))
