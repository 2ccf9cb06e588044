"""A real ``vigil-agent`` process given one name for every vigil-server
(``agent.servers = vigil-servers:PORT``), resolved by the system's resolver from an
/etc/hosts of its own (a mount namespace, ``unshare -m``, with a hosts file bound over
/etc/hosts): each heartbeat reaches every address of the name, a server added to or
removed from the name is followed without a restart, and a name that stops resolving
keeps its last addresses.

The three "servers" are UDP sockets on 127.0.0.11-14 (all of 127/8 is loopback) that
decode what they receive with the agents' key: what a vigil-server does with a heartbeat
is tested elsewhere; here, only where it goes.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import require
from support import wait_until

from vigil.wire.heartbeat import BadHeartbeat, decode

pytestmark = pytest.mark.netns

KEY = "names-test-key"
NAME = "vigil-servers"


def _hosts(path: Path, addresses: list[str]) -> None:
    """Rewrite ``path`` in place (the bind mount follows its inode)."""
    with open(path, "w") as f:
        f.write("127.0.0.1 localhost\n" + "".join(f"{a} {NAME}\n" for a in addresses))


class Receivers:
    """A UDP socket on each address and one port; what each heard, as (host, seq)."""

    def __init__(self, addresses: list[str]) -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((addresses[0], 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.heard: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
        self._stop = threading.Event()
        self._socks = []
        for address in addresses:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((address, self.port))
            sock.settimeout(0.1)
            self._socks.append(sock)
            threading.Thread(target=self._listen, args=(address, sock), daemon=True).start()

    def _listen(self, address: str, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                datagram = sock.recv(65536)
            except OSError:
                continue
            try:
                beat = decode(datagram, KEY.encode())
            except BadHeartbeat:
                continue
            self.heard[address].append((beat.host, beat.seq, time.monotonic()))

    def count(self, address: str, since: float = 0.0) -> int:
        return sum(1 for _, _, at in self.heard[address] if at >= since)

    def close(self) -> None:
        self._stop.set()
        for sock in self._socks:
            sock.close()


def _can_unshare() -> None:
    subprocess.run(["unshare", "-m", "true"], check=True, capture_output=True, timeout=10)


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    r = Receivers(["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"])
    yield r
    r.close()


def test_one_name_for_every_server_reaches_each_and_follows_changes(
    tmp_path: Path, receivers: Receivers
) -> None:
    require("mount namespaces (root, unshare -m)", _can_unshare)
    hosts = tmp_path / "hosts"
    _hosts(hosts, ["127.0.0.11", "127.0.0.12", "127.0.0.13"])
    conf = tmp_path / "agent.conf"
    conf.write_text(
        f"[agent]\nkey = {KEY}\nhost = compute-7\nservers = {NAME}:{receivers.port}\n"
        "resolve_interval = 1\n[detection]\nheartbeat_interval = 0.2\n"
    )
    log = tmp_path / "agent.log"
    agent_command = Path(sys.executable).parent / "vigil-agent"  # as installed
    command = f"mount --bind {hosts} /etc/hosts && exec {agent_command} "
    with open(log, "ab") as out:
        agent = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", command + f"--config-file {conf}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        three = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
        wait_until(
            lambda: all(receivers.count(a) >= 5 for a in three), "heartbeats at all three", 15
        )
        # The same heartbeats (host and sequence) to each address of the name.
        seqs = [{(h, s) for h, s, _ in receivers.heard[a]} for a in three]
        assert len(seqs[0] & seqs[1] & seqs[2]) >= 3
        assert all(h == "compute-7" for a in three for h, _, _ in receivers.heard[a])
        assert receivers.count("127.0.0.14") == 0

        # A server replaced in the name: followed within resolve_interval, no restart.
        _hosts(hosts, ["127.0.0.11", "127.0.0.12", "127.0.0.14"])
        wait_until(lambda: receivers.count("127.0.0.14") >= 3, "heartbeats at the new one", 10)
        moved = time.monotonic()
        time.sleep(1.0)
        assert receivers.count("127.0.0.13", since=moved + 0.3) == 0  # (one in flight)
        assert receivers.count("127.0.0.11", since=moved) >= 3

        # The name gone from the resolver: the last addresses are kept, and said so.
        _hosts(hosts, [])
        time.sleep(2.5)
        kept = time.monotonic()
        time.sleep(1.0)
        assert all(receivers.count(a, since=kept) >= 3 for a in ["127.0.0.11", "127.0.0.14"])
        assert agent.poll() is None
    finally:
        agent.terminate()
        agent.wait(10)
    text = log.read_text()
    print(text)
    assert f"{NAME}:{receivers.port} resolve to 127.0.0.11, 127.0.0.12, 127.0.0.13\n" in text
    assert "resolve to 127.0.0.11, 127.0.0.12, 127.0.0.14 from now" in text
    assert f"servers {NAME}:{receivers.port}: cannot resolve" in text
    assert text.count("cannot resolve") == 1  # said when it happened, not every second
    assert "still sending to 127.0.0.11:" in text
