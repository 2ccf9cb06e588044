"""The simulated drivers: vigil's compute and fencing interfaces on a ``vigil.sim`` cloud.

``cloud`` is any ``CloudApi``: the ``SimCloud`` itself when vigil runs in the test's
process, or a ``RemoteCloud`` when vigil-server runs in its own. Both raise the errors of
``vigil.drivers.errors`` already, so nothing is translated here; the rules (what Nova
refuses, how long a power-off takes) are the cloud's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from vigil.drivers.compute import ComputeDriver, ComputeService, Server
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.sim.api import CloudApi


class SimCompute(ComputeDriver):
    def __init__(self, cloud: CloudApi) -> None:
        self._cloud = cloud

    def list_services(self) -> list[ComputeService]:
        return self._cloud.list_services()

    def get_service(self, host: str) -> ComputeService:
        return self._cloud.get_service(host)

    def set_forced_down(self, host: str, forced_down: bool) -> None:
        self._cloud.set_forced_down(host, forced_down)

    def disable(self, host: str, reason: str) -> None:
        self._cloud.disable(host, reason)

    def enable(self, host: str) -> None:
        self._cloud.enable(host)

    def list_servers(self, host: str) -> list[Server]:
        return self._cloud.list_servers(host)

    def get_server(self, server_id: str) -> Server:
        return self._cloud.get_server(server_id)

    def evacuate(self, server_id: str, target_host: str | None = None) -> None:
        self._cloud.evacuate(server_id, target_host)

    def evacuation_started(self, server_id: str) -> bool | None:
        return self._cloud.evacuation_started(server_id)

    def reset_state(self, server_id: str) -> None:
        self._cloud.reset_state(server_id)

    def start(self, server_id: str) -> None:
        self._cloud.start(server_id)

    def stop(self, server_id: str) -> None:
        self._cloud.stop(server_id)

    def reboot(self, server_id: str, hard: bool = True) -> None:
        self._cloud.reboot(server_id, hard)

    def rebuild(self, server_id: str) -> None:
        self._cloud.rebuild(server_id)


class SimFenceDevice(FenceDevice):
    """The simulated BMC of one host."""

    def __init__(self, cloud: CloudApi, host: str) -> None:
        self._cloud = cloud
        self.host = host
        self.description = f"sim BMC of {host}"

    def power_off(self) -> None:
        self._cloud.bmc_power_off(self.host)

    def power_on(self) -> None:
        self._cloud.bmc_power_on(self.host)

    def power_status(self) -> PowerState:
        return self._cloud.bmc_power_status(self.host)


def sim_fence_builder(cloud: CloudApi) -> Callable[[str, Mapping[str, str]], FenceDevice]:
    """The ``sim`` fencing driver on ``cloud``, for ``build_fence_devices``'
    ``extra_builders``: a level's ``host`` option names the BMC (default: the host)."""

    def build(host: str, options: Mapping[str, str]) -> FenceDevice:
        return SimFenceDevice(cloud, options.get("host") or host)

    return build
