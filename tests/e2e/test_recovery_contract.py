"""The host-recovery contract (tests/contract/recovery_contract.py) on the simulated
cloud: vigil-server in this process, the simulated cloud's agents and BMCs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import httpx
import pytest
from contract.recovery_contract import RecoveryContract

from vigil.cli.demo import DemoOptions, Harness
from vigil.drivers.compute import POLICY_KEY


@dataclass
class SimRecoveryWorld:
    harness: Harness
    recovery_timeout: float = 10.0

    @property
    def hosts(self) -> Sequence[str]:
        return self.harness.cloud.hosts()

    @property
    def api(self) -> httpx.Client:
        return self.harness.client

    def boot(self, host: str, instances: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        ids = {}
        for name, said in instances.items():
            metadata = dict(said)
            if metadata.pop("image", None):  # no images here: the same key, in the metadata
                metadata[POLICY_KEY] = "keep-running"
            ids[name] = self.harness.cloud.add_instance(name, host, metadata=metadata)
        return ids

    def kill(self, host: str) -> None:
        self.harness.cloud.power_loss(host)

    def repair(self, host: str) -> None:
        self.harness.cloud.power_restore(host)

    def server(self, server_id: str) -> tuple[str, str | None, str | None]:
        seen = self.harness.cloud.instance(server_id)
        return seen.status, seen.host, seen.task_state

    def evacuations(self, server_id: str) -> int:
        return sum(1 for e in self.harness.cloud.evacuations() if e.instance == server_id)

    def compute_service(self, host: str) -> tuple[bool, bool]:
        service = self.harness.cloud.get_service(host)
        return service.forced_down, service.disabled

    def powered(self, host: str) -> bool:
        return self.harness.cloud.is_powered(host)

    def say(self, text: str) -> None:
        print(f"[sim] {text}")


class TestSimRecovery(RecoveryContract):
    @pytest.fixture
    def recovery_world(self) -> Iterator[SimRecoveryWorld]:
        with Harness(DemoOptions(hosts=3, instances=0)) as harness:
            yield SimRecoveryWorld(harness)
