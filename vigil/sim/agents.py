"""Agents for the simulated hosts: real signed heartbeats over real UDP to a real server.

One sender thread serves every simulated host (a thread per host would not scale to the
10,000-host benchmarks). A host sends only while the cloud says it can (powered, not
hung, agent running, not isolated); the cloud's network conditions drop or delay each
datagram. Heartbeats go to ``server``, or to each of ``servers`` when several
vigil-servers share the hosts.

Hosts listed in ``self_fencing`` also hold leases and have a simulated hardware watchdog:
petted while the host's agent runs and its lease is valid, it resets the host
``watchdog_timeout`` after the last pet — the behaviour ``vigil.agent.selffence`` gives
a real host. When a host's lease has run out it asks its ``peers`` (the same pure rule as
a real agent, ``vigil.agent.peers.judge``): a peer answers if the cloud says the two can
reach each other, with the age of its own last grant; a check that passes lets the host
pet for one peer window, and one is made every ``peer_interval``. Heartbeats carry the
host's kernel boot id from the cloud (new at every boot).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from vigil.agent.heartbeat import HeartbeatSender
from vigil.agent.peers import PeerState, Verdict, judge, segment_size
from vigil.sim.cloud import SimCloud
from vigil.wire.heartbeat import LeaseGrant

LOG = logging.getLogger(__name__)


@dataclass
class _Grant:
    """What a simulated agent knows of its last grant."""

    received_at: float
    segment: str
    n: int
    ttl: float


class SimAgents:
    def __init__(
        self,
        cloud: SimCloud,
        *,
        server: tuple[str, int] | None = None,
        servers: Sequence[tuple[str, int]] | None = None,
        key: bytes,
        interval: float,
        seed: int = 0,
        self_fencing: Collection[str] = (),
        watchdog_timeout: float = 0.0,
        peers: Mapping[str, Sequence[str]] | None = None,
        peer_interval: float = 1.0,
        peer_timeout: float = 0.5,
    ) -> None:
        self._cloud = cloud
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._interval = interval
        self._self_fencing = set(self_fencing)
        self._watchdog_timeout = watchdog_timeout
        self._lease: dict[str, float] = {}
        self._last_pet: dict[str, float] = {}
        self._peers = {h: [p for p in ps if p != h] for h, ps in (peers or {}).items()}
        self._peer_interval = peer_interval
        self._peer_window = peer_interval + peer_timeout
        self._grant: dict[str, _Grant] = {}
        # host -> (segment of its last grant, when its agent last started): what a real
        # agent keeps in its state file across a reboot (``vigil.agent.peers.AgentState``)
        self._remembered: dict[str, tuple[str, float]] = {}
        self._checked_at: dict[str, float] = {}
        self._vouched_until: dict[str, float] = {}
        self._verdict: dict[str, Verdict] = {}
        self.resets: list[str] = []
        self._stop = threading.Event()
        self._watchdogs = threading.Thread(target=self._run_watchdogs, daemon=True)
        self.sender = HeartbeatSender(
            cloud.hosts(),
            server=server,
            servers=servers,
            key=key,
            interval=interval,
            alive=cloud.host_can_heartbeat,
            delay=self._delay,
            watchdog=watchdog_timeout if self._self_fencing else 0.0,
            on_lease=self._on_lease if self._self_fencing else None,
            on_grant=self._on_grant if self._self_fencing else None,
            kernel_boot_id=cloud.boot_id,
            peer_window=self._peer_window,
        )

    def _delay(self, host: str) -> float | None:
        loss, jitter = self._cloud.network()
        with self._lock:
            if loss and self._random.random() < loss:
                return None
            return self._random.uniform(0.0, jitter) if jitter else 0.0

    def leased(self) -> set[str]:
        """The self-fencing hosts holding a lease now (their watchdog armed)."""
        now = time.monotonic()
        with self._lock:
            return {h for h, expires in self._lease.items() if now < expires}

    def _on_lease(self, host: str, expires: float) -> None:
        with self._lock:
            if host in self._self_fencing and expires > self._lease.get(host, 0.0):
                self._lease[host] = expires

    def _on_grant(self, grant: LeaseGrant, received_at: float) -> None:
        with self._lock:
            if grant.host in self._self_fencing:
                self._grant[grant.host] = _Grant(received_at, grant.segment, grant.n, grant.ttl)
                self._remembered[grant.host] = (grant.segment, received_at)
                self._checked_at.pop(grant.host, None)
                self._vouched_until.pop(grant.host, None)
                self._verdict.pop(grant.host, None)

    def _vouched(self, host: str, now: float) -> bool:
        """The peer rule for a host whose lease ran out (the caller holds the lock)."""
        if now - self._checked_at.get(host, -1e18) >= self._peer_interval:
            self._checked_at[host] = now
            mine = self._grant.get(host)
            answers = []
            for peer in self._peers.get(host, ()):
                if not self._cloud.peer_reachable(host, peer):
                    continue
                theirs = self._grant.get(peer)
                if theirs is not None:
                    answers.append(PeerState(peer, now - theirs.received_at, theirs.segment))
                elif peer in self._remembered:  # rebooted: no grant since its agent started
                    segment, started = self._remembered[peer]
                    answers.append(PeerState(peer, now - started, segment))
                else:
                    answers.append(PeerState(peer, None, ""))
            verdict = judge(
                answers,
                me=host,
                segment=mine.segment if mine else "",
                n=segment_size(mine.n if mine else 0, len(self._peers.get(host, ()))),
                lease_ttl=mine.ttl if mine else 0.0,
            )
            if verdict.verdict is Verdict.SURVIVE:
                self._vouched_until[host] = now + self._peer_window
            if self._verdict.get(host) is not verdict.verdict:
                self._verdict[host] = verdict.verdict
                LOG.info("sim host %s: lease lost: %s", host, verdict.reason)
        return now < self._vouched_until.get(host, -1e18)

    def _forget(self, host: str) -> None:
        """The host reset or lost power: its agent starts again with nothing but its
        state file (the segment of its last grant); counted from now, which is no later
        than its new agent's start."""
        if host in self._remembered:
            self._remembered[host] = (self._remembered[host][0], time.monotonic())
        self._lease.pop(host, None)
        self._last_pet.pop(host, None)
        self._grant.pop(host, None)
        self._checked_at.pop(host, None)
        self._vouched_until.pop(host, None)
        self._verdict.pop(host, None)

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
                        self._forget(host)
                        continue
                    can_pet = self._cloud.can_pet_watchdog(host)
                    if can_pet and (now < lease or self._vouched(host, now)):
                        self._last_pet[host] = now
                    last = self._last_pet.get(host, now)
                    fire = now - last >= self._watchdog_timeout
                    if fire:
                        # Reset: the rebooted agent arms again at its next lease.
                        self._forget(host)
                # (The power may have gone since it was read: then nothing resets.)
                if fire and self._cloud.watchdog_reset(host):
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
