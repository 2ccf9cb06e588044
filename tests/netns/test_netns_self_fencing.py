"""Self-fencing with real processes on a real (virtual) network: a host resets only when
*it* is cut off, never because vigil is.

vigil-server (``world.py``: the real server on a simulated cloud) and three real
``vigil-agent`` processes each run in a network namespace of their own, joined by veth
pairs to a bridge in a fifth namespace (10.231.0.0/24, inside those namespaces only).
Each agent's ``watchdog_device`` is a regular file: every pet writes one byte, so the
test sees each pet as the file growing; a host whose file stops growing for longer than
the watchdog timeout is one whose hardware watchdog would have reset it.

nftables in a namespace drops everything in and out of it:

1. one host cut off (from the server and its peers) → its watchdog fires, while the two
   others keep petting without a gap the watchdog would notice;
2. then the server cut off → nobody is granted anything, the peers vouch for one
   another (2 of 3 lost vigil), and no watchdog fires.

Needs root, iproute2 and nftables (``tools/netns/setup``); without them the test skips,
or fails with ``CI=true``.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from services import require
from support import wait_until

from vigil.wire.keys import host_key, peer_key

pytestmark = pytest.mark.netns

HERE = Path(__file__).parent
AGENT = Path(sys.executable).with_name("vigil-agent")
KEY = "netns-agent-key"  # world.py's
HOSTS = ("compute-1", "compute-2", "compute-3")
SUBNET = "10.231.0"
SERVER_ADDR = f"{SUBNET}.1"
PEER_PORT = 8789
INTERVAL = 0.25  # heartbeats, and the agents' petting
WATCHDOG = 2.0
SELF_FENCING = {
    "lease_ttl": 2.0,
    "watchdog_timeout": WATCHDOG,
    "margin": 0.5,
    "peer_interval": 0.5,
    "peer_timeout": 0.3,
}
# Everything a lost lease may take before the peers' verdict, and a watchdog timeout.
LOSS_TO_RESET = SELF_FENCING["lease_ttl"] + SELF_FENCING["peer_timeout"] + INTERVAL + WATCHDOG


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def can_make_namespaces() -> None:
    probe = f"vglprobe{os.getpid()}"
    sh("nft", "--version")
    sh("ip", "netns", "add", probe)
    sh("ip", "netns", "del", probe)


class Network:
    """Namespaces ``<prefix>-sw`` (the bridge), ``<prefix>-srv`` and one per host."""

    def __init__(self) -> None:
        self.prefix = f"vgl{secrets.token_hex(3)}"
        self.switch = f"{self.prefix}-sw"
        self.made: list[str] = []
        self.addr: dict[str, str] = {}

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def build(self, members: dict[str, str]) -> None:
        """``members``: short name → address."""
        self._add(self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i, (name, addr) in enumerate(members.items()):
            ns, port = self.ns(name), f"p{i}"
            self._add(ns)
            self.addr[name] = addr
            sh(
                "ip",
                "-n",
                self.switch,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            sh("ip", "-n", self.switch, "link", "set", port, "master", "br0")
            sh("ip", "-n", self.switch, "link", "set", port, "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def _add(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self.made.append(ns)

    def cut(self, name: str) -> None:
        """nftables in the namespace: drop every packet in and out (loopback aside)."""
        ns = self.ns(name)
        sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "vigiltest")
        for chain, hook in (("in", "input"), ("out", "output")):
            sh(
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                f"add chain inet vigiltest {chain} {{ type filter hook {hook} priority 0; "
                "policy drop; }",
            )
            sh(
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "add",
                "rule",
                "inet",
                "vigiltest",
                chain,
                "iifname" if chain == "in" else "oifname",
                "lo",
                "accept",
            )

    def remove(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@dataclass
class Pets:
    """Polls each watchdog file and records when it grew."""

    files: dict[str, Path]
    times: dict[str, list[float]] = field(default_factory=dict)
    offset: float = field(default_factory=lambda: time.time() - time.monotonic())
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        sizes = dict.fromkeys(self.files, 0)
        while not self.stop.wait(0.02):
            now = time.monotonic()
            for host, path in self.files.items():
                size = path.stat().st_size
                if size > sizes[host]:
                    sizes[host] = size
                    self.times.setdefault(host, []).append(now)

    def last(self, host: str) -> float:
        return self.times.get(host, [-1e9])[-1]

    def longest_gap(self, host: str, since: float, until: float) -> float:
        """Longest time without a pet within [since, until]."""
        marks = [since, *(t for t in self.times.get(host, []) if since < t < until), until]
        return max(b - a for a, b in itertools.pairwise(marks))


@dataclass
class World:
    net: Network
    pets: Pets
    logs: Path

    def server_log(self) -> str:
        return (self.logs / "server.log").read_text(errors="replace")

    def tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
            for p in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require("network namespaces (root, iproute2, nftables: tools/netns/setup)", can_make_namespaces)
    tmp = tmp_path_factory.mktemp("netns")
    net = Network()
    procs: list[subprocess.Popen[bytes]] = []
    server: subprocess.Popen[str] | None = None
    pets = Pets({h: tmp / f"{h}.watchdog" for h in HOSTS})
    try:
        members = {"srv": SERVER_ADDR} | {h: f"{SUBNET}.{11 + i}" for i, h in enumerate(HOSTS)}
        net.build(members)
        with open(tmp / "server.log", "wb") as log:
            server = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    net.ns("srv"),
                    sys.executable,
                    str(HERE / "world.py"),
                    str(tmp),
                    str(len(HOSTS)),
                    json.dumps(SELF_FENCING),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert server.stdout is not None
        ready = server.stdout.readline()
        assert ready.strip() == "READY", (tmp / "server.log").read_text()
        for host in HOSTS:
            pets.files[host].touch()
            peers = ",".join(f"{p}={net.addr[p]}:{PEER_PORT}" for p in HOSTS if p != host)
            conf = tmp / f"{host}.conf"
            conf.write_text(
                f"""[agent]
host = {host}
key = {host_key(KEY, host)}
peer_key = {peer_key(KEY)}
server_host = {SERVER_ADDR}
server_port = 8788
self_fencing = true
watchdog_device = {pets.files[host]}
watchdog_timeout = {WATCHDOG}
peers = {peers}
peer_port = {PEER_PORT}
state_file = {tmp / f"{host}-state.json"}
[detection]
heartbeat_interval = {INTERVAL}
[self_fencing]
"""
                + "".join(f"{k} = {v}\n" for k, v in SELF_FENCING.items())
            )
            with open(tmp / f"{host}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            net.ns(host),
                            str(AGENT),
                            "--config-file",
                            str(conf),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        watcher = threading.Thread(target=pets.run, daemon=True)
        watcher.start()
        w = World(net, pets, tmp)
        wait_until(
            lambda: all(time.monotonic() - pets.last(h) < 0.5 for h in HOSTS),
            "every agent to hold a lease and pet",
            30,
        )
        time.sleep(1.0)  # the server has seen every host's grants acknowledged
        yield w
    finally:
        pets.stop.set()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if server is not None:
            assert server.stdin is not None
            server.stdin.close()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        net.remove()


def test_a_host_cut_off_from_server_and_peers_resets_and_only_it(world: World) -> None:
    pets, t0 = world.pets, time.monotonic()
    world.net.cut("compute-1")
    wait_until(
        lambda: time.monotonic() - pets.last("compute-1") > WATCHDOG + 0.2,
        "compute-1's watchdog to fire",
        LOSS_TO_RESET + 5,
    )
    fired = pets.last("compute-1") + WATCHDOG
    assert fired - t0 < LOSS_TO_RESET + 0.5, world.tails()
    # The server confirms compute-1 self-fenced (its peers provably connected
    # throughout), and only after its watchdog fired.
    confirmed = "confirmed by self-fencing watchdog of compute-1"
    wait_until(
        lambda: confirmed in world.server_log(), "the server to confirm compute-1 fenced", 10
    )
    line = next(x for x in world.server_log().splitlines() if confirmed in x)
    assert float(line.split()[0]) > fired + pets.offset, line
    now = time.monotonic()
    for host in ("compute-2", "compute-3"):
        gap = pets.longest_gap(host, t0, now)
        assert gap < WATCHDOG / 2, f"{host}: {gap:.2f}s without a pet\n{world.tails()}"


def test_vigil_server_cut_off_resets_no_host(world: World) -> None:
    pets, t0 = world.pets, time.monotonic()
    world.net.cut("srv")
    # Every lease runs out, and then some watchdog timeouts pass.
    time.sleep(SELF_FENCING["lease_ttl"] + 3 * WATCHDOG + 1.0)
    now = time.monotonic()
    for host in ("compute-2", "compute-3"):
        gap = pets.longest_gap(host, t0, now)
        assert gap < WATCHDOG / 2, f"{host}: {gap:.2f}s without a pet\n{world.tails()}"
    logs = (world.logs / "compute-2.log").read_text()
    assert "keep petting" in logs
