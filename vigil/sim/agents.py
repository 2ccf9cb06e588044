"""Agents for the simulated hosts: real signed heartbeats over real UDP to a real server.

One sender thread serves every simulated host (a thread per host would not scale to the
10,000-host benchmarks). A host sends only while the cloud says it can (powered, not
hung, agent running, not isolated); the cloud's network conditions drop or delay each
datagram.
"""

from __future__ import annotations

import random
import threading

from vigil.agent.heartbeat import HeartbeatSender
from vigil.sim.cloud import SimCloud


class SimAgents:
    def __init__(
        self,
        cloud: SimCloud,
        *,
        server: tuple[str, int],
        key: bytes,
        interval: float,
        seed: int = 0,
    ) -> None:
        self._cloud = cloud
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.sender = HeartbeatSender(
            cloud.hosts(),
            server=server,
            key=key,
            interval=interval,
            alive=cloud.host_can_heartbeat,
            delay=self._delay,
        )

    def _delay(self, host: str) -> float | None:
        loss, jitter = self._cloud.network()
        with self._lock:
            if loss and self._random.random() < loss:
                return None
            return self._random.uniform(0.0, jitter) if jitter else 0.0

    def start(self) -> None:
        self.sender.start()

    def stop(self) -> None:
        self.sender.stop()
