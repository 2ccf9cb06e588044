"""The host-recovery contract (tests/contract/recovery_contract.py) on the real Nova tier:
vigil-server in this process with the openstack compute driver, heartbeats for
compute1..3, and a fence device bound to each minicloud compute's nova-compute process
(power off = SIGKILL, power status = does it run). The host "dies" when its nova-compute
is killed: its heartbeats stop with it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from contract.recovery_contract import RecoveryContract

from .cloud import COMPUTES, HA_IMAGE, Minicloud, Vigil, report, running_vigil

pytestmark = pytest.mark.nova


@dataclass
class NovaRecoveryWorld:
    cloud: Minicloud
    vigil: Vigil
    config: pytest.Config
    recovery_timeout: float = 90.0
    hosts: Sequence[str] = COMPUTES

    @property
    def api(self) -> httpx.Client:
        return self.vigil.api

    def boot(self, host: str, instances: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        bodies = {}
        for name, said in instances.items():
            metadata = dict(said)
            image = {"image": HA_IMAGE} if metadata.pop("image", None) else {}
            bodies[name] = self.cloud.server_body(name, host, metadata, **image)
        return self.cloud.boot_many(host, bodies)

    def kill(self, host: str) -> None:
        self.cloud.kill(host)

    def repair(self, host: str) -> None:
        self.cloud.start(host)

    def server(self, server_id: str) -> tuple[str, str | None, str | None]:
        s = self.cloud.server(server_id)
        return s["status"], s["OS-EXT-SRV-ATTR:host"], s["OS-EXT-STS:task_state"]

    def evacuations(self, server_id: str) -> int:
        return len(self.cloud.evacuations(server_id))

    def compute_service(self, host: str) -> tuple[bool, bool]:
        service = self.cloud.services()[host]
        return bool(service["forced_down"]), service["status"] == "disabled"

    def powered(self, host: str) -> bool:
        return self.cloud.running(host)

    def say(self, text: str) -> None:
        report(self.config, text)


class TestNovaRecovery(RecoveryContract):
    @pytest.fixture
    def recovery_world(
        self, minicloud: Minicloud, tmp_path: Path, pytestconfig: pytest.Config
    ) -> Iterator[NovaRecoveryWorld]:
        try:
            with running_vigil(minicloud, tmp_path) as vigil:
                yield NovaRecoveryWorld(minicloud, vigil, pytestconfig)
        finally:
            minicloud.restore()
