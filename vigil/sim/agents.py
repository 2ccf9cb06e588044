"""Agents for the simulated hosts: real signed heartbeats over real UDP to a real server.

One sender thread serves every simulated host (a thread per host would not scale to the
10,000-host benchmarks). A host sends only while the cloud says it can (powered, not
hung, agent running, not isolated); the cloud's network conditions drop or delay each
datagram.

Hosts listed in ``self_fencing`` also hold leases and have a simulated hardware watchdog:
petted while the host's agent runs and its lease is valid, it resets the host
``watchdog_timeout`` after the last pet — the behaviour ``vigil.agent.selffence`` gives
a real host.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Collection

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
        self_fencing: Collection[str] = (),
        watchdog_timeout: float = 0.0,
    ) -> None:
        self._cloud = cloud
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._interval = interval
        self._self_fencing = set(self_fencing)
        self._watchdog_timeout = watchdog_timeout
        self._lease: dict[str, float] = {}
        self._last_pet: dict[str, float] = {}
        self.resets: list[str] = []
        self._stop = threading.Event()
        self._watchdogs = threading.Thread(target=self._run_watchdogs, daemon=True)
        self.sender = HeartbeatSender(
            cloud.hosts(),
            server=server,
            key=key,
            interval=interval,
            alive=cloud.host_can_heartbeat,
            delay=self._delay,
            watchdog=watchdog_timeout if self._self_fencing else 0.0,
            on_lease=self._on_lease if self._self_fencing else None,
        )

    def _delay(self, host: str) -> float | None:
        loss, jitter = self._cloud.network()
        with self._lock:
            if loss and self._random.random() < loss:
                return None
            return self._random.uniform(0.0, jitter) if jitter else 0.0

    def _on_lease(self, host: str, expires: float) -> None:
        with self._lock:
            if host in self._self_fencing and expires > self._lease.get(host, 0.0):
                self._lease[host] = expires

    def _run_watchdogs(self) -> None:
        while not self._stop.wait(min(self._interval, 0.05)):
            now = time.monotonic()
            for host in self._self_fencing:
                powered = self._cloud.is_powered(host)
                with self._lock:
                    lease = self._lease.get(host)
                    if lease is None:
                        continue  # not armed before the first lease
                    if not powered:  # a host without power has no watchdog running
                        del self._lease[host]
                        self._last_pet.pop(host, None)
                        continue
                    if now < lease and self._cloud.can_pet_watchdog(host):
                        self._last_pet[host] = now
                    last = self._last_pet.get(host, now)
                    fire = now - last >= self._watchdog_timeout
                    if fire:
                        # Reset: the rebooted agent arms again at its next lease.
                        del self._lease[host]
                        self._last_pet.pop(host, None)
                if fire:
                    self._cloud.watchdog_reset(host)
                    self.sender.restart_agent(host)
                    self.resets.append(host)

    def start(self) -> None:
        self.sender.start()
        if self._self_fencing:
            self._watchdogs.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watchdogs.is_alive():
            self._watchdogs.join(timeout=5)
        self.sender.stop()
