"""An agent with several vigil-servers (issue 15): every heartbeat to each of them over
real UDP, a grant from any accepted; reports over real HTTP to the first server that
answers; the agent options that list the servers."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from support import wait_until

from vigil import config
from vigil.agent.heartbeat import HeartbeatSender
from vigil.agent.libvirt_monitor import ReportSender
from vigil.agent.servers import ServerUrls
from vigil.agent.services import ServiceWatch
from vigil.model import GuestFailureKind, GuestReport
from vigil.wire.heartbeat import Heartbeat, LeaseGrant, decode, encode_grant
from vigil.wire.reports import SIGNATURE_HEADER, sign

KEY = b"agent-key-for-server-tests"


# --- heartbeats over real UDP -----------------------------------------------------------


def udp_server() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    return sock


def addr(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()
    return str(host), int(port)


def closed_udp_port() -> tuple[str, int]:
    """A port that was bound and is no longer: nothing listens there."""
    sock = udp_server()
    address = addr(sock)
    sock.close()
    return address


def receive(sock: socket.socket) -> tuple[Heartbeat, tuple[str, int]]:
    datagram, source = sock.recvfrom(65536)
    return decode(datagram, KEY), source


@pytest.fixture
def two_servers() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = udp_server(), udp_server()
    yield a, b
    a.close()
    b.close()


def test_every_heartbeat_goes_to_each_server(two_servers: tuple[socket.socket, ...]) -> None:
    a, b = two_servers
    sender = HeartbeatSender(["c1"], servers=[addr(a), addr(b)], key=KEY, interval=0.02)
    sender.start()
    try:
        got_a = [receive(a)[0] for _ in range(3)]
        got_b = [receive(b)[0] for _ in range(3)]
    finally:
        sender.stop()
    assert [h.seq for h in got_a] == [h.seq for h in got_b] == [1, 2, 3]
    assert {(h.host, h.boot_id) for h in got_a + got_b} == {("c1", got_a[0].boot_id)}
    assert sender.servers == [addr(a), addr(b)]


def test_server_and_servers_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        HeartbeatSender(["c1"], key=KEY, interval=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        HeartbeatSender(
            ["c1"], server=("127.0.0.1", 1), servers=[("127.0.0.1", 2)], key=KEY, interval=1.0
        )
    with pytest.raises(ValueError, match="at least one"):
        HeartbeatSender(["c1"], servers=[], key=KEY, interval=1.0)
    # The one-server form of existing callers still works.
    assert HeartbeatSender(["c1"], server=("127.0.0.1", 1), key=KEY, interval=1.0).servers == [
        ("127.0.0.1", 1)
    ]


def test_a_server_gone_or_refused_does_not_keep_heartbeats_from_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One server gone (nothing bound to its port: UDP cannot tell), one the socket may
    not send to (the send fails): the live server still hears every heartbeat, and the
    failing one is logged once, naming host and server."""
    live = udp_server()
    refused = ("255.255.255.255", 8788)  # a broadcast address: EACCES without SO_BROADCAST
    sender = HeartbeatSender(
        ["c1", "c2"], servers=[closed_udp_port(), refused, addr(live)], key=KEY, interval=0.02
    )
    caplog.set_level(logging.WARNING, logger="vigil.agent.heartbeat")
    sender.start()
    try:
        seqs: dict[str, list[int]] = {"c1": [], "c2": []}
        while min(len(s) for s in seqs.values()) < 5:
            beat, _ = receive(live)
            seqs[beat.host].append(beat.seq)
    finally:
        sender.stop()
        live.close()
    assert seqs["c1"][:5] == seqs["c2"][:5] == [1, 2, 3, 4, 5]  # none missing
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(w.split(":")[0] for w in warnings) == ["host c1", "host c2"], warnings
    assert all("heartbeats not sent to 255.255.255.255:8788" in w for w in warnings)


class _FlakySocket:
    """The sender's socket, failing sends to the addresses in ``down``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.down: set[tuple[str, int]] = set()

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if address in self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        return self.sock.sendto(data, address)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_the_warning_is_per_server_once_per_condition(
    two_servers: tuple[socket.socket, ...], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two_servers
    sender = HeartbeatSender(["c1"], servers=[addr(a), addr(b)], key=KEY, interval=1.0)
    flaky = _FlakySocket(sender._sock)
    sender._sock = flaky  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="vigil.agent.heartbeat")
    try:
        flaky.down = {addr(a)}
        for _ in range(3):
            sender._beat("c1")
        flaky.down = set()
        sender._beat("c1")
        sender._beat("c1")
        flaky.down = {addr(a)}
        sender._beat("c1")
    finally:
        sender.stop()
    a_, b_ = f"127.0.0.1:{addr(a)[1]}", f"127.0.0.1:{addr(b)[1]}"
    assert [r.getMessage() for r in caplog.records] == [
        f"host c1: heartbeats not sent to {a_}: [Errno 111] Connection refused",
        f"host c1: heartbeats sent to {a_} again",
        f"host c1: heartbeats not sent to {a_}: [Errno 111] Connection refused",
    ]
    assert [receive(b)[0].seq for _ in range(6)] == [1, 2, 3, 4, 5, 6]  # b heard every one
    assert [receive(a)[0].seq for _ in range(2)] == [4, 5]
    assert b_ not in caplog.text


def test_a_grant_from_the_second_server_is_accepted(
    two_servers: tuple[socket.socket, ...],
) -> None:
    """Only the owner of the host's segment grants; here it is the second server."""
    a, b = two_servers
    leases: list[tuple[str, float]] = []
    grants: list[LeaseGrant] = []
    sent_at = time.monotonic()
    sender = HeartbeatSender(
        ["c1"],
        servers=[addr(a), addr(b)],
        key=KEY,
        interval=0.05,
        watchdog=1.0,
        on_lease=lambda host, expires: leases.append((host, expires)),
        on_grant=lambda grant, _at: grants.append(grant),
    )
    sender.start()
    try:
        beat, source = receive(b)
        assert beat.watchdog == 1.0 and beat.ack == 0
        grant = LeaseGrant(beat.host, beat.boot_id, beat.seq, ttl=3.0, segment="s", n=2)
        b.sendto(encode_grant(grant, KEY), source)
        wait_until(lambda: leases, "the lease", 2, every=0.01)
        # Later heartbeats (to both servers) acknowledge the grant.
        wait_until(lambda: receive(a)[0].ack == beat.seq, "the ack", 2, every=0)
    finally:
        sender.stop()
    assert grants == [grant]
    assert len(leases) == 1 and leases[0][0] == "c1"
    assert sent_at + 3.0 <= leases[0][1] <= time.monotonic() + 3.0


# --- reports over real HTTP -------------------------------------------------------------


class _Api:
    """A tiny HTTP server answering every POST with ``status``; records what it got."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.posts: list[tuple[str, dict[str, Any]]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers[SIGNATURE_HEADER] == sign(body, KEY)
                api.posts.append((self.path, json.loads(body)))
                self.send_response(api.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def apis() -> Iterator[list[_Api]]:
    made: list[_Api] = []
    yield made
    for api in made:
        api.close()


def closed_http_url() -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # never listened: connections are refused
    return url


def report() -> GuestReport:
    return GuestReport(str(uuid.uuid4()), "c1", str(uuid.uuid4()), GuestFailureKind.CRASHED, 1.0)


def test_a_report_lands_on_the_second_server_when_the_first_refuses(apis: list[_Api]) -> None:
    second = _Api()
    apis.append(second)
    sender = ReportSender(host="c1", server_urls=[closed_http_url(), second.url + "/"], key=KEY)
    sender.start()
    try:
        first = report()
        sender.put(first)
        wait_until(lambda: sender.sent == 1, "the report sent", 2, every=0.01)
    finally:
        sender.stop()
    assert [(path, body["reports"][0]["id"]) for path, body in second.posts] == [
        ("/v1/agents/c1/reports", first.id)
    ]


def test_a_5xx_moves_on_and_the_server_that_answered_is_tried_first(apis: list[_Api]) -> None:
    busy, good = _Api(503), _Api()
    apis += [busy, good]
    urls = ServerUrls([busy.url, good.url])
    with httpx.Client(timeout=2.0) as client:
        assert urls.post(client, "/v1/x", b'{"n": 1}', KEY) is None
        assert urls.current == good.url
        assert urls.post(client, "/v1/x", b'{"n": 2}', KEY) is None
        good.status = 502  # now the other one is busy: back to the first, which answers
        busy.status = 200
        assert urls.post(client, "/v1/x", b'{"n": 3}', KEY) is None
    assert [b["n"] for _, b in busy.posts] == [1, 3]
    assert [b["n"] for _, b in good.posts] == [1, 2, 3]
    assert urls.current == busy.url


def test_a_4xx_is_final_and_other_servers_are_not_asked(apis: list[_Api]) -> None:
    refusing, good = _Api(400), _Api()
    apis += [refusing, good]
    urls = ServerUrls([refusing.url, good.url])
    with httpx.Client(timeout=2.0) as client:
        error = urls.post(client, "/v1/x", b"{}", KEY)
    assert error is not None and error.startswith(f"{refusing.url}/v1/x: HTTP 400")
    assert len(refusing.posts) == 1 and good.posts == []


def test_every_server_failing_names_each(apis: list[_Api]) -> None:
    busy = _Api(500)
    apis.append(busy)
    dead = closed_http_url()
    with httpx.Client(timeout=2.0) as client:
        error = ServerUrls([dead, busy.url]).post(client, "/v1/x", b"{}", KEY)
    assert error is not None and f"{dead}/v1/x: " in error and f"{busy.url}/v1/x: HTTP 500" in error


def test_service_states_go_to_the_server_that_answers(apis: list[_Api]) -> None:
    good = _Api()
    apis.append(good)
    watch = ServiceWatch(
        host="c1",
        server_urls=[closed_http_url(), good.url],
        key=KEY,
        services={"nova-compute": "nova-compute"},
        interval=0.02,
        processes=lambda: [(10, "/usr/bin/nova-compute")],
    )
    watch.start()
    try:
        wait_until(lambda: watch.acknowledged, "the snapshot", 2, every=0.01)
    finally:
        watch.stop()
    assert good.posts[0][0] == "/v1/agents/c1/services"


def test_report_senders_take_one_url_or_several() -> None:
    for kwargs in ({}, {"server_url": "http://a", "server_urls": ["http://b"]}):
        with pytest.raises(ValueError, match="exactly one"):
            ReportSender(host="c1", key=KEY, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="exactly one"):
            ServiceWatch(host="c1", key=KEY, **kwargs)  # type: ignore[arg-type]
    ReportSender(host="c1", server_url="http://a", key=KEY)  # existing callers


# --- the options ------------------------------------------------------------------------


def load(*overrides: str) -> Any:
    return config.load([], config_files=[], overrides=overrides, prog="vigil-agent")


def test_heartbeat_servers_default_to_server_host_and_port() -> None:
    assert config.agent_servers(load()) == [("127.0.0.1", 8788)]
    conf = load("agent.server_host=ctl", "agent.server_port=9000")
    assert config.agent_servers(conf) == [("ctl", 9000)]
    conf = load("agent.servers=ctl1:8788, 10.0.0.2:8790", "agent.server_host=ignored")
    assert config.agent_servers(conf) == [("ctl1", 8788), ("10.0.0.2", 8790)]


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("ctl1", "is not HOST:PORT"),
        (":8788", "is not HOST:PORT"),
        ("ctl1:", "is not HOST:PORT"),
        ("ctl1:http", "is not HOST:PORT"),
        ("[::1]:8788", "is not HOST:PORT"),
        ("ctl1:0", "port 0 is not in 1..65535"),
        ("ctl1:70000", "port 70000 is not in 1..65535"),
    ],
)
def test_a_bad_heartbeat_server_is_refused_by_name(entry: str, why: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.agent_servers(load(f"agent.servers=ctl0:8788,{entry}"))
    assert str(err.value).startswith(f"agent.servers: {entry!r}") and why in str(err.value)


def test_report_urls_default_to_server_url() -> None:
    assert config.agent_server_urls(load()) == []
    assert config.agent_server_urls(load("agent.server_url=http://v:8787")) == ["http://v:8787"]
    conf = load("agent.server_urls=http://a:8787/,https://b", "agent.server_url=http://x")
    assert config.agent_server_urls(conf) == ["http://a:8787", "https://b"]
    for bad in ("a:8787", "ftp://a", "http://a:99999", "http://"):
        with pytest.raises(config.ConfigError, match=f"agent.server_urls: '{bad}'"):
            config.agent_server_urls(load(f"agent.server_urls=http://ok,{bad}"))
    with pytest.raises(config.ConfigError, match="given twice"):
        config.agent_server_urls(load("agent.server_urls=http://a,http://a/"))
