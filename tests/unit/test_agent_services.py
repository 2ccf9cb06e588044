"""The agent's service watch: its debounce and option parsing on a given process table,
then end to end with real processes and real HTTP — a watched process killed: the
server (real route, SQLite store, simulated Nova) disables the host's compute service and
does not fence it; the process back: enabled again; the server down meanwhile: the
latest state still arrives."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from support import new_store, wait_until

from vigil.agent.services import ServiceWatch, command_lines, parse_watched
from vigil.api.guest import add_guest_routes
from vigil.clock import SystemClock
from vigil.engine.guest_engine import GuestEngine
from vigil.engine.service_keeper import ServiceKeeper
from vigil.model import Host, HostState, Segment
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimCompute
from vigil.wire.keys import host_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bmc.emulators import free_port

KEY = "agent-key-for-service-tests"  # the server's master key; c1's agent holds its own


# --- on a given process table -----------------------------------------------------------


def watch_on(table: list[tuple[int, str]], down_after: int = 2) -> ServiceWatch:
    return ServiceWatch(
        host="c1",
        server_url="http://127.0.0.1:9",
        key=b"k",
        services={"nova-compute": r"nova-compute", "libvirtd": r"(^|/)libvirtd( |$)"},
        down_after=down_after,
        processes=lambda: list(table),
        clock=lambda: 100.0,
    )


def test_a_service_is_down_only_after_down_after_checks_in_a_row() -> None:
    table = [(10, "/usr/bin/python3 /usr/bin/nova-compute --config-file x"), (11, "libvirtd -d")]
    watch = watch_on(table, down_after=2)
    assert watch.check() and {n: s.up for n, s in watch.states().items()} == {
        "nova-compute": True,
        "libvirtd": True,
    }
    del table[0]
    assert not watch.check()  # one miss: systemd may be restarting it
    table.append((12, "/usr/bin/python3 /usr/bin/nova-compute"))
    assert not watch.check() and watch.states()["nova-compute"].up  # back in time
    del table[-1]
    assert not watch.check()
    assert watch.check()  # second miss in a row: down
    state = watch.states()["nova-compute"]
    assert not state.up and "nova-compute" in state.detail
    assert not watch.check()  # still down: no change


def test_at_start_a_service_is_judged_only_after_down_after_checks() -> None:
    watch = watch_on([(11, "/usr/sbin/libvirtd --timeout 120")])
    watch.check()
    assert set(watch.states()) == {"libvirtd"}  # nova-compute: not yet a verdict
    watch.check()
    assert not watch.states()["nova-compute"].up


def test_the_pattern_is_a_regex_on_the_whole_command_line() -> None:
    watch = watch_on([(11, "/usr/sbin/libvirtd-helper"), (12, "vi /etc/libvirtd.conf")], 1)
    watch.check()
    assert not watch.states()["libvirtd"].up  # neither is libvirtd itself


def test_watch_service_option_parsing() -> None:
    assert parse_watched(["nova-compute=nova-compute", "lv=(libvirtd|virtqemud)"]) == {
        "nova-compute": "nova-compute",
        "lv": "(libvirtd|virtqemud)",
    }
    for bad in (["nova-compute"], ["=x"], ["a=("], ["a=x", "a=y"]):
        with pytest.raises(ValueError):
            parse_watched(bad)


def test_the_real_process_table_is_read() -> None:
    mine = [line for pid, line in command_lines() if pid == os.getpid()]
    assert mine and "pytest" in mine[0]


# --- end to end, real processes and HTTP ------------------------------------------------


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.store = new_store(tmp_path, Segment("seg"), [Host("c1", "seg", state=HostState.UP)])
        clock = SystemClock()
        self.cloud = SimCloud(clock)
        self.cloud.add_host("c1")
        compute = SimCompute(self.cloud)
        keeper = ServiceKeeper(store=self.store, compute=compute, clock=clock)
        self.guest = GuestEngine(
            store=self.store, compute=compute, clock=clock, services=keeper, tick=0.05
        )
        app = FastAPI()
        add_guest_routes(app, guest=self.guest, agent_key=KEY, known_host=lambda h: h == "c1")
        self.port = free_port()
        self._app = app
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            self._app, host="127.0.0.1", port=self.port, log_level="warning", log_config=None
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_until(lambda: self._server is not None and self._server.started, "the API", 10)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.guest.start()
    s.start()
    yield s
    s.stop()
    s.guest.stop()
    s.store.close()


def fake_service(marker: str) -> subprocess.Popen[bytes]:
    """A real process whose command line names ``marker``, like a daemon would."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", f"--vigil-test={marker}"]
    )


def test_a_killed_service_disables_the_host_and_its_return_enables_it(server: Server) -> None:
    marker = uuid.uuid4().hex
    nova = fake_service(f"nova-{marker}")
    watch = ServiceWatch(
        host="c1",
        server_url=f"http://127.0.0.1:{server.port}",
        key=host_key(KEY, "c1").encode(),
        services={"nova-compute": f"--vigil-test=nova-{marker}"},
        interval=0.1,
    )
    watch.start()
    try:
        wait_until(lambda: server.store.get_host_services("c1"), "the first snapshot", 10)
        assert not server.cloud.get_service("c1").disabled

        nova.kill()
        nova.wait()
        wait_until(lambda: server.cloud.get_service("c1").disabled, "the host disabled", 10)
        service = server.cloud.get_service("c1")
        assert service.disabled_reason == "vigil: host services down: nova-compute"
        assert not service.forced_down
        assert server.store.get_host("c1").state is HostState.UP  # not failed, not fenced

        # The server goes away; nova-compute comes back meanwhile; the server returns.
        server.stop()
        nova = fake_service(f"nova-{marker}")
        time.sleep(0.5)
        server.start()
        wait_until(lambda: not server.cloud.get_service("c1").disabled, "the host enabled", 20)
        # The hold and its event are written right after Nova's answer.
        wait_until(lambda: len(server.store.list_events(limit=100)) == 4, "the last event", 5)
        types = [e.event_type for e in server.store.list_events(limit=100)]
        assert types == [
            "vigil.host.service.down",
            "vigil.host.compute.disabled",
            "vigil.host.service.up",
            "vigil.host.compute.enabled",
        ]
    finally:
        watch.stop()
        nova.kill()
        nova.wait()
