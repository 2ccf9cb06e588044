"""The sender processes the demo and the scale benchmark use beyond a thousand hosts:
real signed heartbeats over real UDP from another process, in step with the cloud (one
process started for the module)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from vigil.clock import SystemClock
from vigil.sim.cloud import SimCloud
from vigil.sim.senders import CloudFollower, SenderProcesses
from vigil.wire.heartbeat import Heartbeat, decode

KEY = b"senders-key"
INTERVAL = 0.05


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[SimCloud, SenderProcesses, socket.socket]]:
    cloud = SimCloud(SystemClock())
    for name in ("h1", "h2", "h3"):
        cloud.add_host(name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    senders = SenderProcesses(
        cloud.hosts(),
        {h: cloud.boot_id(h) for h in cloud.hosts()},
        addresses=[sock.getsockname()],
        key=KEY,
        interval=INTERVAL,
        processes=2,
    )
    senders.start()
    try:
        yield cloud, senders, sock
    finally:
        senders.close()
        sock.close()


def listen(sock: socket.socket, seconds: float) -> list[Heartbeat]:
    beats = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            beats.append(decode(sock.recv(2048), KEY))
    return beats


def test_every_host_beats_signed_in_sequence_with_its_kernel_boot_id(
    world: tuple[SimCloud, SenderProcesses, socket.socket],
) -> None:
    cloud, senders, sock = world
    beats = listen(sock, 0.5)
    assert {b.host for b in beats} == {"h1", "h2", "h3"}
    for host in ("h1", "h2", "h3"):
        mine = [b for b in beats if b.host == host]
        assert len(mine) >= 5  # every INTERVAL for half a second
        assert [b.seq for b in mine] == sorted(b.seq for b in mine)
        assert {b.kernel_boot_id for b in mine} == {cloud.boot_id(host)}
    assert {s["hosts"] for s in senders.stats()} == {1, 2}  # every other host


def test_a_host_that_loses_power_falls_silent_and_comes_back_as_a_new_agent(
    world: tuple[SimCloud, SenderProcesses, socket.socket],
) -> None:
    cloud, senders, sock = world
    follower = CloudFollower(cloud, senders)
    before = [b for b in listen(sock, 0.2) if b.host == "h2"]
    assert before
    cloud.power_loss("h2")
    follower.follow()
    listen(sock, 0.1)  # what was already on its way
    silent = listen(sock, 0.4)
    assert "h2" not in {b.host for b in silent}
    assert {"h1", "h3"} <= {b.host for b in silent}  # the others go on

    cloud.power_restore("h2")
    deadline = time.monotonic() + 10
    while not cloud.host_can_heartbeat("h2") and time.monotonic() < deadline:
        time.sleep(0.01)  # booting
    follower.follow()
    after = [b for b in listen(sock, 0.4) if b.host == "h2"]
    assert after, "h2 did not start beating again"
    assert after[0].seq == 1  # a new agent: its sequence from 1, a new boot id
    assert after[0].boot_id != before[-1].boot_id
    assert after[0].kernel_boot_id == cloud.boot_id("h2") != before[-1].kernel_boot_id
