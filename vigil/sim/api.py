"""``CloudApi``: what the simulated drivers need from a simulated cloud.

Implemented by ``vigil.sim.cloud.SimCloud`` (in-process) and ``vigil.sim.rpc.RemoteCloud``
(the same cloud in another process, over HTTP), so ``vigil.drivers.sim`` accepts either.
The Nova half mirrors ``ComputeDriver`` method for method; the BMC half takes the host
name because one simulated cloud holds every host's BMC. Only the operations a vigil
process performs are here: building the world and injecting faults stay on ``SimCloud``.
"""

from __future__ import annotations

from typing import Protocol

from vigil.drivers.compute import ComputeService, Server
from vigil.drivers.fencing import PowerState


class CloudApi(Protocol):
    # Nova
    def list_services(self) -> list[ComputeService]: ...

    def get_service(self, host: str) -> ComputeService: ...

    def set_forced_down(self, host: str, forced_down: bool) -> None: ...

    def disable(self, host: str, reason: str) -> None: ...

    def enable(self, host: str) -> None: ...

    def list_servers(self, host: str) -> list[Server]: ...

    def get_server(self, server_id: str) -> Server: ...

    def evacuate(self, server_id: str, target_host: str | None = None) -> None: ...

    def start(self, server_id: str) -> None: ...

    def stop(self, server_id: str) -> None: ...

    def reboot(self, server_id: str, hard: bool = True) -> None: ...

    # BMCs
    def bmc_power_off(self, host: str) -> None: ...

    def bmc_power_on(self, host: str) -> None: ...

    def bmc_power_status(self, host: str) -> PowerState: ...
