"""The agent's application checks (``vigil.agent.app_checks``) against the real tiny guest
(``conftest.py``: Debian's qemu-ga and busybox httpd on 127.0.0.1:8080 inside it) through
real libvirt, reporting over real HTTP to a small vigil-server of the test's own that
verifies each report and answers signed with the agent key: httpd killed in the guest,
the ``http`` check fails; the server's guest command starts httpd again; the check passes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from bmc.emulators import LIBVIRT_URI
from support import wait_until

from vigil.agent.app_checks import AppChecks, LibvirtConnection
from vigil.agent.guest_agent import GuestAgent
from vigil.model import Health
from vigil.wire.app_checks import (
    AppAnswer,
    AppReport,
    CheckSpec,
    CheckType,
    GuestCommand,
    decode_app_report,
    encode_app_answer,
)
from vigil.wire.reports import SIGNATURE_HEADER, BadReport, sign

pytestmark = [pytest.mark.libvirt, pytest.mark.guest_agent, pytest.mark.slow]

HOST = "compute-app"
KEY = b"agent-key-for-app-check-tests"
BUSYBOX = "/bin/busybox"  # applets through busybox itself (see conftest.py)
# The guest's /init starts httpd by its applet link, so its process is named httpd (run
# as "/bin/busybox httpd" it would be named busybox, and "killall httpd" would miss it).
START_HTTPD = ("/bin/httpd", "-p", "127.0.0.1:8080", "-h", "/www")


class Vigil:
    """vigil-server as far as one instance's checks go: plans an ``http`` check, and
    once a report says it fails, asks for the application's restart until a report
    carries the command's outcome (as the ladder's first rung would)."""

    def __init__(self, instance_id: str, spec: CheckSpec, restart: GuestCommand) -> None:
        self.instance_id, self.spec, self.restart = instance_id, spec, restart
        self.reports: list[AppReport] = []
        self.lock = threading.Lock()
        vigil = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    assert self.path == f"/v1/agents/{HOST}/app"
                    report = decode_app_report(
                        body, self.headers.get(SIGNATURE_HEADER), KEY, host=HOST
                    )
                except (AssertionError, BadReport) as exc:
                    self.send_error(403, str(exc))
                    return
                answer = encode_app_answer(HOST, report.at, vigil.answer(report))
                self.send_response(200)
                self.send_header(SIGNATURE_HEADER, sign(answer, KEY))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}"

    def answer(self, report: AppReport) -> AppAnswer:
        with self.lock:
            self.reports.append(report)
            failed = any(self.health(r) == Health.FAILING for r in self.reports)
            done = any(d.id == self.restart.id for r in self.reports for d in r.done)
        commands = (self.restart,) if failed and not done else ()
        return AppAnswer({self.instance_id: (self.spec,)}, commands)

    def health(self, report: AppReport) -> Health | None:
        state = report.instances.get(self.instance_id, {}).get(self.spec.name)
        return None if state is None else state.health

    def seen(self) -> list[AppReport]:
        with self.lock:
            return list(self.reports)

    def __enter__(self) -> Vigil:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def connection() -> Iterator[LibvirtConnection]:
    conn = LibvirtConnection(LIBVIRT_URI)
    yield conn
    conn.close()


def test_a_killed_service_fails_its_check_and_the_servers_restart_command_heals_it(
    agent_guest: tuple[GuestAgent, Any],
    connection: LibvirtConnection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vigil.agent.app_checks")
    agent, dom = agent_guest
    iid = dom.UUIDString()
    # Intervals the software-emulated guest meets: a run takes ~0.5-1 s there.
    web = CheckSpec(
        "web", CheckType.HTTP, port=8080, path="/", interval=3.0, timeout=2.0, threshold=2, grace=0
    )
    restart = GuestCommand("restart-httpd-1", iid, START_HTTPD, 10.0)
    with Vigil(iid, web, restart) as vigil:
        checks = AppChecks(
            host=HOST,
            connection=connection,
            guest_agent=GuestAgent(connection),
            key=KEY,
            server_url=vigil.url,
        )
        checks.start()
        try:
            wait_until(
                lambda: any(vigil.health(r) == Health.HEALTHY for r in vigil.seen()),
                "the http check reported healthy",
                60,
                every=0.2,
            )
            assert agent.exec(dom, [BUSYBOX, "killall", "httpd"], timeout=10).ok

            failing = wait_until(
                lambda: [r for r in vigil.seen() if vigil.health(r) == Health.FAILING],
                "the http check reported FAILING",
                60,
                every=0.2,
            )[0]
            state = failing.instances[iid]["web"]
            assert state.failures >= 2 and state.detail.startswith("exit 1: "), state.detail

            with_outcome = wait_until(
                lambda: [r for r in vigil.seen() if r.done],
                "the restart command's outcome reported",
                60,
                every=0.2,
            )[0]
            (done,) = with_outcome.done
            assert (done.id, done.instance_id, done.ok) == (restart.id, iid, True), done
            wait_until(
                lambda: any(
                    vigil.health(r) == Health.HEALTHY
                    for r in vigil.seen()
                    if r.at > with_outcome.at
                ),
                "the http check reported healthy again",
                60,
                every=0.2,
            )
        finally:
            checks.stop()
    # Run once, though the server asked again until it heard of it.
    runs = [r for r in caplog.records if "running guest command restart-httpd-1" in r.getMessage()]
    assert len(runs) == 1
    assert agent.exec(dom, [BUSYBOX, "pidof", "httpd"], timeout=10).stdout.split()
