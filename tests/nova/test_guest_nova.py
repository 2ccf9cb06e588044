"""The guest-restart contract (tests/contract/guest_contract.py) on the real Nova tier:
the guest engine calls the minicloud's Nova through ``OpenStackCompute``; Nova's own
instance actions are the witness of what was asked of it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pytest
from contract.guest_contract import GuestContract
from support import wait_until

from vigil.drivers.openstack import OpenStackCompute

from .cloud import COMPUTES, Minicloud

pytestmark = pytest.mark.nova


@dataclass
class NovaGuestWorld:
    cloud: Minicloud
    driver: OpenStackCompute
    hosts: Sequence[str] = COMPUTES
    timeout: float = 60.0

    def boot(self, name: str, host: str, metadata: Mapping[str, str]) -> str:
        return self.cloud.boot(name, host, metadata)

    def stop(self, server_id: str) -> None:
        self.cloud.nova("POST", f"/servers/{server_id}/action", {"os-stop": None})
        wait_until(
            lambda: self.cloud.server(server_id)["status"] == "SHUTOFF",
            "Nova to show the server SHUTOFF",
            self.timeout,
            every=0.2,
        )

    def restarts(self, server_id: str) -> list[str]:
        body = self.cloud.nova("GET", f"/servers/{server_id}/os-instance-actions")
        actions = sorted(body["instanceActions"], key=lambda a: a["start_time"])
        return [a["action"] for a in actions if a["action"] in ("start", "reboot", "rebuild")]


class TestNovaGuest(GuestContract):
    @pytest.fixture
    def guest_world(self, minicloud: Minicloud) -> Iterator[NovaGuestWorld]:
        try:
            yield NovaGuestWorld(minicloud, OpenStackCompute(minicloud.conn))
        finally:
            minicloud.delete_all_servers()
