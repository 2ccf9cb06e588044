"""The agent's application checks (issue 17) on a fake clock, fake libvirt domains, a fake
guest agent and a fake vigil-server behind httpx's mock transport that verifies each
report's signature and answers signed: what runs when, how it is judged, what is
reported, which answers are obeyed. Then the http and tcp command forms, run for real
by this machine's /bin/sh against real sockets."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from support import wait_until

from vigil.agent.app_checks import AppChecks, command_for, outcome
from vigil.agent.guest_agent import ExecResult, GuestAgentError
from vigil.agent.servers import ServerUrls
from vigil.model import CheckState, Health
from vigil.wire.app_checks import (
    AppAnswer,
    AppReport,
    CheckSpec,
    CheckType,
    GuestCommand,
    decode_app_report,
    encode_app_answer,
)
from vigil.wire.reports import SIGNATURE_HEADER, sign

HOST = "c1"
KEY = b"agent-key-for-app-check-tests"
U1, U2, U3, U4, U5 = (f"00000000-0000-0000-0000-00000000000{i}" for i in range(1, 6))


# --- fakes --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class NoDomain(Exception):
    def get_error_code(self) -> int:
        return 42  # VIR_ERR_NO_DOMAIN


class FakeDomain:
    """A libvirt domain as the checks read it."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.libvirt_state = (1, 1)  # running, booted
        self.libvirt_id = 1
        self.control = 0  # no job
        self.job: dict[str, int] = {}

    def state(self) -> list[int]:
        return list(self.libvirt_state)

    def ID(self) -> int:
        return self.libvirt_id if self.libvirt_state[0] in (1, 2, 3) else -1

    def controlInfo(self) -> list[int]:
        return [self.control, 0, 0]

    def jobStats(self) -> dict[str, int]:
        return dict(self.job)


class LibvirtDown(Exception):
    def get_error_code(self) -> int:
        return 38  # VIR_ERR_SYSTEM_ERROR


class FakeConn:
    def __init__(self, *uuids: str) -> None:
        self.domains = {u: FakeDomain(u) for u in uuids}
        self.down = False

    def lookupByUUIDString(self, uuid: str) -> FakeDomain:
        if self.down:
            raise LibvirtDown("Cannot write data: Broken pipe")
        if uuid not in self.domains:
            raise NoDomain(f"Domain not found: no domain with matching uuid '{uuid}'")
        return self.domains[uuid]


OK = ExecResult(0, None, "", "", 0.1)


class FakeAgent:
    """The guest agent: records each call; ``on_ping`` / ``on_exec`` say what happens."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self.on_ping: Callable[[str, float], None] = lambda uuid, timeout: None
        self.on_exec: Callable[[str, tuple[str, ...], float], ExecResult] = (
            lambda uuid, argv, timeout: OK
        )

    def ping(self, domain: FakeDomain, timeout: float = 2.0) -> None:
        with self._lock:
            self.calls.append(("ping", domain.uuid))
        self.on_ping(domain.uuid, timeout)

    def exec(self, domain: FakeDomain, argv: Any, timeout: float = 5.0) -> ExecResult:
        with self._lock:
            self.calls.append(("exec", domain.uuid, tuple(argv)))
        return self.on_exec(domain.uuid, tuple(argv), timeout)

    def count(self, kind: str, uuid: str) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c[0] == kind and c[1] == uuid)


class FakeServer:
    """vigil-server's ``POST /v1/agents/{host}/app``: checks the signature of each
    report, keeps it, answers with ``plan`` and ``commands`` signed with ``sign_with``."""

    def __init__(self) -> None:
        self.plan: dict[str, tuple[CheckSpec, ...]] = {}
        self.commands: tuple[GuestCommand, ...] = ()
        self.sign_with = KEY
        self.refuse_done = 0  # answer 503 to this many reports that carry outcomes
        self.reports: list[AppReport] = []
        self.answered: list[AppReport] = []
        self._lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v1/agents/{HOST}/app"
        report = decode_app_report(
            request.content, request.headers.get(SIGNATURE_HEADER), KEY, host=HOST
        )
        with self._lock:
            self.reports.append(report)
            if report.done and self.refuse_done > 0:
                self.refuse_done -= 1
                return httpx.Response(503, text="busy")
            self.answered.append(report)
            body = encode_app_answer(HOST, report.at, AppAnswer(dict(self.plan), self.commands))
        return httpx.Response(
            200, content=body, headers={SIGNATURE_HEADER: sign(body, self.sign_with)}
        )

    def last(self) -> AppReport | None:
        with self._lock:
            return self.reports[-1] if self.reports else None

    def all(self) -> list[AppReport]:
        with self._lock:
            return list(self.reports)


@pytest.fixture
def world() -> Iterator[
    Callable[..., tuple[AppChecks, FakeServer, FakeConn, FakeAgent, FakeClock]]
]:
    made: list[AppChecks] = []

    def make(
        *uuids: str, **options: Any
    ) -> tuple[AppChecks, FakeServer, FakeConn, FakeAgent, FakeClock]:
        server, conn, agent, clock = FakeServer(), FakeConn(*uuids), FakeAgent(), FakeClock()
        checks = AppChecks(
            host=HOST,
            connection=lambda: conn,
            guest_agent=agent,
            key=KEY,
            server_url="http://vigil.test:8787",
            clock=clock,
            poll=0.01,
            transport=httpx.MockTransport(server.handle),
            **options,
        )
        made.append(checks)
        return checks, server, conn, agent, clock

    yield make
    for checks in made:
        checks.stop()


def state(checks: AppChecks, uuid: str, name: str) -> CheckState | None:
    return checks.states().get(uuid, {}).get(name)


def exec_check(**kw: Any) -> CheckSpec:
    options: dict[str, Any] = {"interval": 10.0, "timeout": 2.0, "threshold": 3, "grace": 0.0}
    options.update(kw)
    return CheckSpec("db", CheckType.EXEC, command=("pg_isready", "-q"), **options)


def ping_check(**kw: Any) -> CheckSpec:
    options: dict[str, Any] = {"interval": 1.0, "timeout": 2.0, "threshold": 1, "grace": 0.0}
    options.update(kw)
    return CheckSpec("agent", CheckType.GUEST_AGENT, **options)


# --- running, judging, reporting -----------------------------------------------------------


def test_a_failing_exec_check_fails_after_threshold_runs_and_is_reported_at_once(
    world: Any,
) -> None:
    checks, server, _, agent, clock = world(U1)
    server.plan = {U1: (exec_check(threshold=3),)}
    agent.on_exec = lambda uuid, argv, timeout: ExecResult(2, None, "", "no response\n", 0.2)
    checks.start()

    for runs in (1, 2):
        s = wait_until(lambda n=runs: (x := state(checks, U1, "db")) and x.failures == n and x)
        assert s.health == Health.UNKNOWN and s.detail == "exit 2: no response"
        assert agent.count("exec", U1) == runs
        clock.advance(10)
    failing = wait_until(
        lambda: (
            (r := server.last())
            and r.instances.get(U1, {}).get("db", CheckState()).health == Health.FAILING
            and r
        ),
        "a report with the check FAILING",
    )
    assert failing.at == clock.now  # at once: not report_interval (30 s) later
    assert failing.instances[U1]["db"].failures == 3
    assert agent.calls == [("exec", U1, ("pg_isready", "-q"))] * 3
    # Reports so far: the first one (at start) and the one the change made, nothing per run.
    assert len(server.all()) == 2


def test_one_hung_guest_does_not_delay_the_checks_of_the_others(world: Any) -> None:
    checks, server, _, agent, clock = world(U1, U2, U3, U4, U5, workers=2)
    server.plan = {u: (ping_check(timeout=2.0),) for u in (U1, U2, U3, U4, U5)}
    released = threading.Event()

    def ping(uuid: str, timeout: float) -> None:
        if uuid == U1:  # hangs until its timeout (cut short by the test once it has seen)
            released.wait(timeout)
            raise GuestAgentError("guest-ping: Guest agent is not responding", unresponsive=True)

    agent.on_ping = ping
    others = (U2, U3, U4, U5)
    checks.start()
    wait_until(lambda: all(agent.count("ping", u) == 1 for u in others) and agent.count("ping", U1))
    started = time.monotonic()
    for runs in (2, 3, 4):
        clock.advance(1)
        wait_until(lambda n=runs: all(agent.count("ping", u) == n for u in others), f"run {runs}")
    assert time.monotonic() - started < 1.5  # less than the hung guest's timeout
    assert agent.count("ping", U1) == 1 and not released.is_set()  # never two at once
    assert all(state(checks, u, "agent").health == Health.HEALTHY for u in others)  # type: ignore[union-attr]

    released.set()  # its timeout
    hung = wait_until(
        lambda: (s := state(checks, U1, "agent")) and s.health == Health.FAILING and s
    )
    assert hung.detail.startswith("guest agent unresponsive: guest-ping")
    clock.advance(1)
    wait_until(lambda: agent.count("ping", U1) == 2, "the freed guest checked again")


@pytest.mark.parametrize(
    ("situation", "why"),
    [
        ({"libvirt_state": (3, 1)}, "paused"),  # paused by a user
        ({"libvirt_state": (3, 2)}, "migrating"),  # paused for a migration's last step
        ({"control": 1, "job": {"type": 2, "operation": 5}}, "migrating"),  # live migration
        ({"libvirt_state": (5, 1)}, "not running"),  # shut off
        (None, "not running"),  # not on this host
    ],
)
def test_a_guest_that_cannot_run_its_application_has_its_checks_suspended(
    world: Any, situation: dict[str, Any] | None, why: str
) -> None:
    checks, server, conn, agent, _ = world(U1)
    server.plan = {U1: (ping_check(), exec_check())}
    if situation is None:
        del conn.domains[U1]
    else:
        for name, value in situation.items():
            setattr(conn.domains[U1], name, value)
    checks.start()
    for name in ("agent", "db"):
        s = wait_until(lambda n=name: (x := state(checks, U1, n)) and x.last_run_at and x)
        assert (s.health, s.detail) == (Health.SUSPENDED, why)
    assert agent.calls == []  # the guest is not asked
    report = wait_until(lambda: (r := server.last()) and U1 in r.instances and r)
    assert report.instances[U1]["agent"].health == Health.SUSPENDED


def test_a_domain_restart_starts_the_grace_period_again(world: Any) -> None:
    checks, server, conn, agent, clock = world(U1)
    server.plan = {U1: (exec_check(threshold=1, grace=60.0),)}
    agent.on_exec = lambda uuid, argv, timeout: ExecResult(1, None, "", "down\n", 0.1)
    checks.start()

    def run_after(seconds: float) -> CheckState:
        runs = agent.count("exec", U1)
        clock.advance(seconds)
        wait_until(lambda: agent.count("exec", U1) == runs + 1)
        return wait_until(
            lambda: (s := state(checks, U1, "db")) and s.last_run_at == clock.now and s
        )

    # The agent's first sight of the running domain counts as its start.
    first = run_after(0)
    assert (first.health, first.detail) == (Health.UNKNOWN, "in its grace period: exit 1: down")
    assert run_after(60).health == Health.FAILING  # the grace period is over
    assert run_after(10).health == Health.FAILING  # same domain ID: no grace
    conn.domains[U1].libvirt_id = 7  # stopped and started again (or rebuilt)
    restarted = run_after(10)
    assert (restarted.health, restarted.detail) == (
        Health.UNKNOWN,
        "in its grace period: exit 1: down",
    )
    assert run_after(60).health == Health.FAILING


def test_while_libvirt_cannot_be_read_checks_keep_their_state_and_it_is_logged_once(
    world: Any, caplog: pytest.LogCaptureFixture
) -> None:
    checks, server, conn, agent, clock = world(U1, U2)
    server.plan = {U1: (ping_check(interval=10.0),), U2: (ping_check(interval=10.0),)}
    checks.start()
    wait_until(
        lambda: all(
            (s := state(checks, u, "agent")) and s.health == Health.HEALTHY for u in (U1, U2)
        )
    )
    conn.down = True
    for _ in range(3):
        clock.advance(10)
        wait_until(
            lambda: all(
                (s := state(checks, u, "agent")) and s.last_run_at == clock.now for u in (U1, U2)
            )
        )
    s = state(checks, U1, "agent")
    assert s is not None and s.health == Health.HEALTHY  # no verdict on the guest
    assert s.detail == "libvirt: Cannot write data: Broken pipe"
    assert len([r for r in caplog.records if "not run" in r.getMessage()]) == 1
    conn.down = False
    clock.advance(10)
    wait_until(lambda: (s := state(checks, U1, "agent")) and s.detail == "the guest agent answers")
    assert agent.count("ping", U1) == 2


def test_a_guest_command_runs_once_and_its_outcome_is_reported_until_acknowledged(
    world: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vigil.agent.app_checks")
    checks, server, _, agent, clock = world(U1)
    restart = GuestCommand("restart-web-1", U1, ("systemctl", "restart", "web"), 30.0)
    server.plan = {U1: (exec_check(),)}
    server.commands = (restart,)  # repeated in every answer, as a server that has not heard
    server.refuse_done = 1  # the first report carrying the outcome does not get through
    checks.start()

    wait_until(lambda: any(r.done for r in server.all()), "a report carrying the outcome")
    clock.advance(1)  # the retry's backoff
    acked = wait_until(
        lambda: [r for r in server.answered if r.done], "an answered report carrying the outcome"
    )[0]
    (done,) = acked.done
    assert (done.id, done.instance_id, done.ok, done.detail) == (
        "restart-web-1",
        U1,
        True,
        "exit 0 in 0.1s",
    )
    carrying = [r for r in server.all() if r.done]
    assert len(carrying) == 2  # refused once, then carried again
    clock.advance(30)  # the next report: acknowledged, so no longer carried
    wait_until(lambda: server.last() is not None and server.last().at == clock.now)  # type: ignore[union-attr]
    later = [r for r in server.all() if r.at > acked.at]
    assert later and not any(r.done for r in later)
    assert [c for c in agent.calls if c[2] == restart.argv] == [("exec", U1, restart.argv)]
    lines = [r.getMessage() for r in caplog.records if "restart-web-1" in r.getMessage()]
    assert lines == [
        f"host {HOST}: instance {U1}: running guest command restart-web-1: systemctl restart web",
        f"host {HOST}: instance {U1}: guest command restart-web-1 succeeded: exit 0 in 0.1s",
    ]


def test_an_answer_not_signed_with_the_agent_key_is_refused_and_the_plan_kept(
    world: Any, caplog: pytest.LogCaptureFixture
) -> None:
    checks, server, _, agent, clock = world(U1)
    server.plan = {U1: (ping_check(),)}
    server.commands = (GuestCommand("evil", U1, ("rm", "-rf", "/"), 5.0),)
    server.sign_with = b"someone-else"
    checks.start()
    for _ in range(4):  # retried with backoff, still refused
        n = len(server.all())
        clock.advance(10)
        wait_until(lambda n=n: len(server.all()) > n)
    assert agent.calls == [] and checks.states() == {}  # nothing from it is used
    assert "not signed with the agent key" in checks.last_error
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1  # once per change of error, not per retry

    server.sign_with, server.commands = KEY, ()
    clock.advance(10)
    wait_until(lambda: agent.count("ping", U1) == 1)
    assert checks.last_error == ""
    server.sign_with, server.plan = b"someone-else", {}  # a forged answer: "no checks"
    clock.advance(30)
    wait_until(lambda: checks.last_error != "", "the forged answer refused")
    clock.advance(1)
    wait_until(lambda: agent.count("ping", U1) >= 2, "the check still run")
    assert set(checks.states()) == {U1}


def test_heartbeat_checks_are_judged_by_the_server_never_run_here(world: Any) -> None:
    checks, server, _, agent, _ = world(U1, U2)
    beat = CheckSpec("app", CheckType.HEARTBEAT, interval=30.0)
    server.plan = {U1: (beat, ping_check()), U2: (beat,)}
    checks.start()
    wait_until(lambda: (s := state(checks, U1, "agent")) and s.health == Health.HEALTHY)
    report = wait_until(lambda: (r := server.last()) and U1 in r.instances and r)
    assert {iid: set(c) for iid, c in report.instances.items()} == {U1: {"agent"}}
    assert agent.calls == [("ping", U1)]


def test_instances_gone_from_the_plan_are_forgotten(world: Any) -> None:
    checks, server, _, agent, clock = world(U1, U2)
    hourly = ping_check(interval=3600.0)
    server.plan = {U1: (hourly,), U2: (hourly,)}
    checks.start()
    wait_until(lambda: agent.count("ping", U1) == 1 and agent.count("ping", U2) == 1)
    server.plan = {U1: (hourly,)}  # U2 left this host
    clock.advance(30)  # the next report; its answer is the new plan
    wait_until(lambda: set(checks.states()) == {U1})
    clock.advance(3600)
    wait_until(lambda: agent.count("ping", U1) == 2)
    report = wait_until(lambda: (r := server.last()) and r.at == clock.now and r)
    assert set(report.instances) == {U1}
    assert agent.count("ping", U2) == 1


def test_server_urls_exchange_returns_the_answer_of_the_server_that_took_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            return httpx.Response(503, text="draining")
        return httpx.Response(200, content=b'{"plan": {}}')

    servers = ServerUrls(["http://a", "http://b"])
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        answer = servers.exchange(client, "/v1/agents/c1/app", b"{}", KEY)
        assert isinstance(answer, httpx.Response) and answer.content == b'{"plan": {}}'
        assert servers.current == "http://b"
        assert servers.post(client, "/v1/agents/c1/app", b"{}", KEY) is None
    down = ServerUrls(["http://a"])
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        assert down.exchange(client, "/x", b"{}", KEY) == "http://a/x: HTTP 503: draining"


# --- the http and tcp commands, run by this machine's /bin/sh ---------------------------


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 404
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, int]]:
    web = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    mute = socket.socket()  # accepts (the kernel does), never answers
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    yield {"web": web.server_port, "mute": mute.getsockname()[1], "closed": closed_port}
    web.shutdown()
    mute.close()


def run_in_shell(spec: CheckSpec, path: str | None) -> ExecResult:
    """The check's command as the guest agent would run it; ``path``: the PATH the guest
    has (None: this machine's)."""
    env = dict(os.environ) if path is None else {"PATH": path}
    started = time.monotonic()
    done = subprocess.run(command_for(spec), env=env, capture_output=True, text=True, timeout=10)
    code = done.returncode
    return ExecResult(
        code if code >= 0 else None,
        -code if code < 0 else None,
        done.stdout,
        done.stderr,
        time.monotonic() - started,
    )


def need(*tools: str) -> None:
    missing = [
        t for t in tools if not (os.path.exists(t) if t.startswith("/") else shutil.which(t))
    ]
    if missing:
        pytest.skip(f"not on this machine: {', '.join(missing)}")


def http(port: int, path: str = "/healthz") -> CheckSpec:
    return CheckSpec("web", CheckType.HTTP, port=port, path=path, timeout=1.0)


def tcp(port: int) -> CheckSpec:
    return CheckSpec("port", CheckType.TCP, port=port, timeout=1.0)


@pytest.mark.parametrize(
    ("tool", "path"), [("curl", None), ("/bin/busybox", "/nonexistent")], ids=["curl", "busybox"]
)
def test_the_http_check_command(ports: dict[str, int], tool: str, path: str | None) -> None:
    need("/bin/sh", tool)
    assert run_in_shell(http(ports["web"]), path).ok
    missing = run_in_shell(http(ports["web"], "/nope"), path)
    assert not missing.ok and "404" in outcome(missing, bounded=1.0)
    assert not run_in_shell(http(ports["closed"]), path).ok
    silent = run_in_shell(http(ports["mute"]), path)
    assert not silent.ok and silent.seconds < 3
    if tool == "/bin/busybox":
        assert outcome(silent, bounded=1.0) == "no answer within 1s"


@pytest.mark.parametrize(
    ("tool", "path"), [("bash", None), ("/bin/busybox", "/nonexistent")], ids=["bash", "busybox"]
)
def test_the_tcp_check_command(ports: dict[str, int], tool: str, path: str | None) -> None:
    need("/bin/sh", tool)
    assert run_in_shell(tcp(ports["web"]), path).ok
    assert run_in_shell(tcp(ports["mute"]), path).ok  # it accepts: the port is open
    refused = run_in_shell(tcp(ports["closed"]), path)
    assert not refused.ok and refused.seconds < 3
