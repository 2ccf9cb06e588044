"""The simulated drivers: vigil's compute and fencing interfaces on a ``vigil.sim`` cloud.

``cloud`` is any ``CloudApi``: the ``SimCloud`` itself when vigil runs in the test's
process, or a ``RemoteCloud`` when vigil-server runs in its own. Both raise the errors of
``vigil.drivers.errors`` already, so nothing is translated here; the rules (what Nova
refuses, how long a power-off takes) are the cloud's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping

from vigil.drivers.compute import ComputeDriver, ComputeService, Server
from vigil.drivers.errors import PermanentError
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.sim.api import CloudApi
from vigil.sim.cloud import SimCloud


class SimCompute(ComputeDriver):
    def __init__(self, cloud: CloudApi) -> None:
        self._cloud = cloud
        # instances booted here: {id: (port id, user data)}, what a test reads to stand in
        # for the VM; on_boot(id, port id): a port's binding (SimNetwork.plug)
        self.booted: dict[str, tuple[str, str]] = {}
        self.on_boot: Callable[[str, str], None] | None = None

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

    # Building in-guest clusters: only on a cloud in this process (the demo's and the
    # tests'), not through the simulator's RPC.
    def _local(self) -> SimCloud:
        if not isinstance(self._cloud, SimCloud):
            raise PermanentError("the simulated cloud builds clusters only in vigil's process")
        return self._cloud

    def create_server_group(self, name: str, policy: str = "anti-affinity") -> str:
        group = f"{name}-{uuid.uuid4().hex[:8]}"
        self._local().add_server_group(group, policy)
        return group

    def delete_server_group(self, group_id: str) -> None:
        self._local().delete_server_group(group_id)

    def server_group_members(self, group_id: str) -> list[str]:
        return self._local().server_group_members(group_id)

    def create_server(
        self,
        *,
        name: str,
        image: str,
        flavor: str,
        port_id: str,
        user_data: str,
        server_group: str,
        metadata: Mapping[str, str],
    ) -> str:
        cloud = self._local()
        sid = cloud.boot(name, metadata=metadata, server_group=server_group)
        self.booted[sid] = (port_id, user_data)
        if self.on_boot is not None:
            self.on_boot(sid, port_id)
        return sid

    def delete_server(self, server_id: str) -> None:
        self._local().delete_instance(server_id)
        self.booted.pop(server_id, None)

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
