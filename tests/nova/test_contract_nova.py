"""The compute contract (tests/contract/compute_contract.py) on a real Nova: the
minicloud's three fake-driver computes, reached through ``OpenStackCompute``.

A failed host is a SIGKILLed nova-compute (its fake instances die with it; Nova notices
only after service_down_time). After every test the hosts are put back: killed computes
restarted, un-forced once Nova allows it, enabled, and every server deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from contract.compute_contract import ComputeContract
from support import wait_until

from vigil.drivers.openstack import OpenStackCompute

from .cloud import COMPUTES, Minicloud

if TYPE_CHECKING:
    from contract.compute_contract import ComputeWorld

pytestmark = pytest.mark.nova


@dataclass
class NovaComputeWorld:
    cloud: Minicloud
    driver: OpenStackCompute
    hosts: Sequence[str] = COMPUTES
    timeout: float = 60.0
    failed: set[str] = field(default_factory=set)

    def boot(self, name: str, host: str, metadata: Mapping[str, str] | None = None) -> str:
        return self.cloud.boot(name, host, metadata)

    def fail_host(self, host: str) -> None:
        self.cloud.kill(host)
        self.failed.add(host)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        wait_until(condition, what, timeout, every=0.2)


class TestNovaCompute(ComputeContract):
    @pytest.fixture
    def compute_world(self, minicloud: Minicloud) -> Iterator[NovaComputeWorld]:
        world = NovaComputeWorld(minicloud, OpenStackCompute(minicloud.conn))
        try:
            yield world
        finally:
            took = minicloud.restore()
            if world.failed:
                print(f"[nova] hosts {sorted(world.failed)} restored in {took:.1f}s")


if TYPE_CHECKING:
    _world: type[ComputeWorld] = NovaComputeWorld
