"""A key per host (issue 18): one agent's key cannot sign another host's heartbeats or
reports, and the master key rotates with no restart and no missed heartbeat."""

from __future__ import annotations

import hmac
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support.heartbeats import receiving
from support.world import World

from vigil.agent.heartbeat import HeartbeatSender
from vigil.agent.main import follow_key_files
from vigil.api.guest import add_guest_routes
from vigil.clock import SystemClock
from vigil.engine.heartbeat import HeartbeatReceiver, HeartbeatTable
from vigil.model import GuestFailureKind, GuestReport
from vigil.server import main as server_main
from vigil.wire.heartbeat import Heartbeat, OwnerHint, decode_hint, encode
from vigil.wire.keys import CHECK_EVERY, AgentKeys, KeyFile, host_key, peer_key
from vigil.wire.reports import SIGNATURE_HEADER, encode_reports, sign

OLD, NEW = "old-master-key", "new-master-key"
INTERVAL = 0.25  # the default heartbeat interval (DetectionSettings)


def test_a_host_key_is_the_masters_hmac_of_the_host_stable_and_its_own() -> None:
    expected = hmac.new(b"m", b"vigil-agent-host-key:c1", "sha256").hexdigest()
    assert host_key("m", "c1") == expected == host_key("m", "c1")
    keys = {host_key(m, h) for m in ("m", "m2") for h in ("c1", "c2", "c10")}
    assert len(keys) == 6  # per host and per master
    assert peer_key("m") not in keys and peer_key("m") != peer_key("m2")


def test_the_servers_keys_are_derived_current_first_and_cached() -> None:
    keys = AgentKeys([NEW, OLD])
    c1 = keys.for_host("c1")
    assert c1 == (host_key(NEW, "c1").encode(), host_key(OLD, "c1").encode())
    assert keys.for_host("c1") is c1  # derived once
    assert not keys.is_previous(0) and keys.is_previous(1)
    demo = AgentKeys([NEW], accept_masters=True)  # simulated agents holding the master
    assert demo.for_host("c1") == (host_key(NEW, "c1").encode(), NEW.encode())
    assert not demo.is_previous(1)
    assert AgentKeys.of("").for_host("c1") == ()


def test_the_agent_key_command_prints_a_hosts_key_from_the_servers_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "vigil.conf"
    key_file = tmp_path / "master"
    key_file.write_text(f"{NEW}\n{OLD}\n")
    conf.write_text(f"[agent]\nkey_file = {key_file}\n")
    assert server_main(["agent-key", "c1", "--config-file", str(conf)]) == 0
    assert server_main(["agent-key", "--peers", "--config-file", str(conf)]) == 0
    assert capsys.readouterr().out.split() == [host_key(NEW, "c1"), peer_key(NEW)]


@pytest.fixture(params=["thread", "process"])
def receiver(request: pytest.FixtureRequest) -> Iterator[tuple[HeartbeatReceiver, HeartbeatTable]]:
    with receiving(NEW, ("c1", "c2"), process=request.param == "process") as started:
        yield started


def _settle(rx: HeartbeatReceiver, received: int, refused: int) -> None:
    deadline = time.monotonic() + 3
    while (rx.received, rx.refused) != (received, refused) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (rx.received, rx.refused) == (received, refused)


def test_a_hosts_key_does_not_sign_another_hosts_heartbeat(
    receiver: tuple[HeartbeatReceiver, HeartbeatTable], caplog: pytest.LogCaptureFixture
) -> None:
    rx, table = receiver
    c1, c2 = host_key(NEW, "c1").encode(), host_key(NEW, "c2").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, caplog.at_level(logging.WARNING):
        s.sendto(encode(Heartbeat("c2", "b", 1, time.time()), c1), rx.address)  # c1 forging
        # The name read to choose the key is the first "h"; JSON would keep the second.
        body = b'VGL1{"h":"c1","b":"b","s":2,"t":1.0,"h":"c2"}'
        s.sendto(body + b"." + sign(body, c1).encode(), rx.address)
        _settle(rx, 0, 2)
        s.sendto(encode(Heartbeat("c2", "b", 3, time.time()), c2), rx.address)
        _settle(rx, 1, 2)
    assert table.age("c2") is not None and table.age("c1") is None
    assert "not host c2's agent key" in caplog.text and "names 'c1' and 'c2'" in caplog.text


def test_a_heartbeat_signed_with_the_master_key_is_refused_saying_how_to_move_on(
    receiver: tuple[HeartbeatReceiver, HeartbeatTable], caplog: pytest.LogCaptureFixture
) -> None:
    # An agent of before per-host keys signs with the one shared key: the servers' master.
    rx, table = receiver
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, caplog.at_level(logging.WARNING):
        s.sendto(encode(Heartbeat("c1", "b", 1, time.time()), NEW.encode()), rx.address)
        _settle(rx, 0, 1)
    assert table.age("c1") is None
    assert "host c1 signs with the servers' master key" in caplog.text
    assert "vigil-server agent-key c1" in caplog.text and "accept_master_key" in caplog.text


def test_a_hosts_key_does_not_sign_another_hosts_report(tmp_path: Path) -> None:
    with World(tmp_path, ["c1", "c2"]) as w:
        app = FastAPI()
        add_guest_routes(
            app,
            guest=w.guest_engine(),
            agent_key=AgentKeys([NEW, OLD]),
            known_host=lambda h: h in ("c1", "c2"),
        )
        client = TestClient(app)
        report = GuestReport("r1", "c2", "i-1", GuestFailureKind.CRASHED, 1.0)
        body = encode_reports("c2", [report])

        def post(key: str) -> int:
            headers = {SIGNATURE_HEADER: sign(body, key.encode())}
            return client.post("/v1/agents/c2/reports", content=body, headers=headers).status_code

        assert post(host_key(NEW, "c1")) == 401  # c1's key, current or previous
        assert post(host_key(OLD, "c1")) == 401
        assert post(NEW) == 401  # a master itself is no host's key
        assert post(host_key(OLD, "c2")) == 200  # c2's previous key, still accepted
        assert post(host_key(NEW, "c2")) == 200


class _Agent:
    """A real agent's heartbeat sender, signing with its key file, re-read as
    vigil-agent does."""

    def __init__(self, host: str, tmp_path: Path, server: tuple[str, int]) -> None:
        self.file = tmp_path / f"{host}.key"
        self.file.write_text(host_key(OLD, host) + "\n")
        key = self.file.read_text().strip()
        self.sender = HeartbeatSender([host], server=server, key=key.encode(), interval=INTERVAL)
        self._stop = threading.Event()
        self._follow = threading.Thread(
            target=follow_key_files,
            args=(self._stop, KeyFile(str(self.file), [key]), [self.sender], None, None),
            daemon=True,
        )
        self.sender.start()
        self._follow.start()

    def stop(self) -> None:
        self._stop.set()
        self.sender.stop()


def test_the_master_key_rotates_with_no_missed_heartbeat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Real agents beating every 0.25 s to a server reading in a child process (what
    vigil-server runs): the new master put first, three agents' key files switched one
    by one, the old master removed. No host is silent for two intervals throughout; the
    hosts still on the old key are logged; once it is removed, the fourth agent, never
    switched, is refused."""
    masters = tmp_path / "masters"
    masters.write_text(OLD + "\n")
    table = HeartbeatTable(SystemClock())
    rx = HeartbeatReceiver(
        table,
        keys=AgentKeys([OLD], path=str(masters)),
        known_host=lambda h: True,
        bind=("127.0.0.1", 0),
        clock=SystemClock(),
        process=True,
    )
    rx.start()
    hosts = ["c1", "c2", "c3", "c4"]
    agents = {h: _Agent(h, tmp_path, rx.address) for h in hosts}
    worst: dict[str, float] = dict.fromkeys(hosts, 0.0)
    watching = {"c1", "c2", "c3", "c4"}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            ages = table.ages()
            for h in list(watching):
                worst[h] = max(worst[h], ages.get(h, float("inf")))

    time.sleep(1.0)  # every agent heard
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with caplog.at_level(logging.INFO):
            masters.write_text(f"{NEW}\n{OLD}\n")  # (a) the new master first
            time.sleep(CHECK_EVERY + 0.5)
            for h in ("c1", "c2", "c3"):  # (b) each agent's new key, one by one
                agents[h].file.write_text(host_key(NEW, h) + "\n")
                time.sleep(1.0)
            time.sleep(CHECK_EVERY + 0.5)
            refused = rx.refused
            watching.discard("c4")
            masters.write_text(NEW + "\n")  # (c) the old master removed
            time.sleep(CHECK_EVERY + 1.0)
        assert rx.refused > refused  # c4 still signs with the old master's key
        assert (table.age("c4") or 0.0) > 1.0
        assert max(worst.values()) < 2 * INTERVAL, worst
        for h in hosts:
            assert f"host {h}: its agent still signs with a key of a previous master" in caplog.text
        assert "agent keys: 2 master key(s) accepted now" in caplog.text
        assert "agent keys: 1 master key(s) accepted now" in caplog.text
        assert "not host c4's agent key" in caplog.text
    finally:
        stop.set()
        for agent in agents.values():
            agent.stop()
        rx.stop()


def test_hints_are_signed_with_the_key_the_heartbeat_was() -> None:
    """Mid-rotation, one agent holds a key of the old master, another of the new: each
    owner hint verifies with the key its agent holds."""
    rx = HeartbeatReceiver(
        HeartbeatTable(SystemClock()),
        keys=AgentKeys([NEW, OLD]),
        known_host=lambda h: True,
        bind=("127.0.0.1", 0),
        clock=SystemClock(),
        owner_hint=(0.6, 1.0),
    )
    rx.start()
    rx.verify_only(["c1", "c2"])
    try:
        for host, master in (("c1", NEW), ("c2", OLD)):
            key = host_key(master, host).encode()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as agent:
                agent.settimeout(2)
                agent.sendto(encode(Heartbeat(host, "b", 1, time.time()), key), rx.address)
                assert decode_hint(agent.recv(2048), key) == OwnerHint(host, 0.6, 1.0)
    finally:
        rx.stop()
