"""The fencing contract against real BMCs: every driver, each over its own QEMU domain.

- ``redfish``: vigil's sushy driver → sushy-tools' Redfish emulator (HTTPS, CA-verified,
  a user file) → libvirt;
- ``ipmi``: vigil's pyghmi driver → virtualbmc (IPMI 2.0 lanplus) → libvirt;
- ``fence_ipmilan`` / ``fence_redfish``: the ``fence-agent`` driver running Debian's
  ClusterLabs agents against those same emulators.

Each world's unreachable device points at a port nobody listens on.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from contract.fence_contract import FenceContract
from support import wait_until

from vigil.drivers.fence_factory import build_fence_devices
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.model import FenceMethod

from .conftest import Lab
from .emulators import Domain, free_port

if TYPE_CHECKING:
    from contract.fence_contract import FenceWorld

pytestmark = pytest.mark.bmc

KINDS = ["redfish", "ipmi", "fence_ipmilan", "fence_redfish"]
ROLE = {
    "redfish": "redfish",
    "ipmi": "ipmi",
    "fence_ipmilan": "agent-ipmi",
    "fence_redfish": "agent-redfish",
}


@dataclass
class BmcFenceWorld:
    device: FenceDevice
    unreachable: FenceDevice | None
    secrets: Sequence[str]
    domain: Domain
    timeout: float = 60.0

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.2)


def methods_for(lab: Lab, kind: str) -> tuple[FenceMethod, FenceMethod]:
    """(the device under test, the same device pointed at a closed port)."""
    role = ROLE[kind]
    closed_tcp = str(free_port())
    closed_udp = str(free_port(socket.SOCK_DGRAM))
    if kind == "redfish":
        options = lab.redfish_options(role)
        return (
            FenceMethod("redfish", options),
            FenceMethod("redfish", {**options, "address": f"https://127.0.0.1:{closed_tcp}"}),
        )
    if kind == "ipmi":
        options = lab.ipmi_options(role)
        return (
            FenceMethod("ipmi", options),
            FenceMethod("ipmi", {**options, "ipport": closed_udp, "timeout": "2"}),
        )
    if kind == "fence_ipmilan":
        options = lab.fence_ipmilan_options(role)
        quick = {"login_timeout": "2", "shell_timeout": "2", "power_timeout": "3"}
        return (
            FenceMethod("fence-agent", options),
            FenceMethod("fence-agent", {**options, **quick, "ipport": closed_udp}),
        )
    assert kind == "fence_redfish", kind
    options = lab.fence_redfish_options(role)
    return (
        FenceMethod("fence-agent", options),
        FenceMethod("fence-agent", {**options, "ipport": closed_tcp}),
    )


@pytest.fixture(params=KINDS)
def fence_world(
    request: pytest.FixtureRequest, lab: Lab, fence_agents: None
) -> Iterator[BmcFenceWorld]:
    kind = str(request.param)
    domain = lab.domains[ROLE[kind]]
    domain.start()
    device, unreachable = build_fence_devices("bmc-host", methods_for(lab, kind))
    wait_until(
        lambda: device.power_status() == PowerState.ON,
        f"{domain.name} reads on",
        60,
        every=0.1,
        ignoring=(Exception,),
    )
    try:
        yield BmcFenceWorld(device, unreachable, [lab.password], domain)
    finally:
        domain.start()  # back on for the next test, whatever this one did


class TestRealBmcFence(FenceContract):
    def test_off_means_the_machine_is_off(self, fence_world: BmcFenceWorld) -> None:
        # Beyond the contract: the BMC's "off" is libvirt's "shut off", not its opinion.
        assert fence_world.domain.state() == "running"
        fence_world.device.power_off()
        self._wait_for(fence_world, PowerState.OFF)
        assert fence_world.domain.state() == "shut off"


if TYPE_CHECKING:
    _world: type[FenceWorld] = BmcFenceWorld
