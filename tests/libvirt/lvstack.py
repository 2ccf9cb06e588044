"""Fixtures of the guest-OS failure tests against a real libvirt + QEMU.

Imported by the test modules rather than kept in a ``conftest.py``: that would need an
``__init__.py`` here, and a ``tests/libvirt`` package on ``sys.path`` shadows
libvirt-python itself.

``shared_libvirt`` is the machine's libvirtd, joined through ``tests/bmc/emulators.Libvirt``
(its lock file decides who starts and stops the daemons and relaxes ``/dev/kvm``).
``PrivateLibvirtd`` is one this test alone may kill and restart. ``guest_files`` builds
the tiny guest once per session (``tinyguest.py``). ``make_stack`` is vigil's side on a
real SQLite store: the guest engine, the agents' report route served by uvicorn, and an
agent (``LibvirtMonitor`` + ``ReportSender``) watching libvirt. Its compute driver is
``LibvirtCompute``, a small real driver that starts and resets the domain through
libvirt as Nova's libvirt driver would — so "panic → restart" is shown on the real
guest, not on a simulation that only records the call.
A missing piece skips on a developer's machine and fails with ``CI=true``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from services import require
from support import new_store, wait_until

from vigil.agent.libvirt_monitor import LibvirtMonitor, Observation, ReportSender
from vigil.api.guest import add_guest_routes
from vigil.clock import SystemClock
from vigil.drivers import compute as nova
from vigil.drivers.compute import ComputeDriver, ComputeService, Server
from vigil.drivers.errors import NotFound
from vigil.engine.guest import GuestPolicy, GuestSettings
from vigil.engine.guest_engine import GuestEngine
from vigil.engine.service_keeper import ServiceKeeper
from vigil.model import HaPolicy, Host, InstanceFailure, Segment
from vigil.store.sql import SqlStore
from vigil.wire.keys import host_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tinyguest as guest
from bmc.emulators import DOMAIN_PREFIX, LIBVIRT_URI, Libvirt, free_port

HOST = "compute-lv"
KEY = "agent-key-for-libvirt-tests"


class LibvirtCompute(ComputeDriver):
    """Nova as far as restarting a guest goes, done directly on libvirt."""

    def __init__(self, uri: str) -> None:
        import libvirt  # type: ignore[import-untyped]

        self._uri = uri
        self._conn = libvirt.open(uri)
        self.calls: list[tuple[str, str, float]] = []
        # The host's compute service, as Nova's os-services would keep it.
        self.service = ComputeService(HOST, up=True, forced_down=False, disabled=False)

    def _dom(self, sid: str) -> Any:
        import libvirt

        try:
            return self._conn.lookupByUUIDString(sid)
        except libvirt.libvirtError:
            pass
        self._conn = libvirt.open(self._uri)  # libvirtd may have restarted
        try:
            return self._conn.lookupByUUIDString(sid)
        except libvirt.libvirtError as exc:
            raise NotFound(sid) from exc

    def get_server(self, server_id: str) -> Server:
        dom = self._dom(server_id)
        status = nova.ACTIVE if dom.isActive() else nova.SHUTOFF
        return Server(server_id, dom.name(), HOST, status)

    def start(self, server_id: str) -> None:
        self.calls.append(("start", server_id, time.monotonic()))
        dom = self._dom(server_id)
        if not dom.isActive():
            dom.create()

    def reboot(self, server_id: str, hard: bool = True) -> None:
        self.calls.append(("reboot", server_id, time.monotonic()))
        dom = self._dom(server_id)
        if dom.isActive():
            dom.destroy()
        dom.create()

    def stop(self, server_id: str) -> None:
        self._dom(server_id).destroy()

    def list_services(self) -> list[ComputeService]:
        return []

    def get_service(self, host: str) -> ComputeService:
        if host != HOST:
            raise NotFound(host)
        return self.service

    def set_forced_down(self, host: str, forced_down: bool) -> None:
        self.service = dataclasses.replace(self.get_service(host), forced_down=forced_down)

    def disable(self, host: str, reason: str) -> None:
        self.calls.append(("disable", host, time.monotonic()))
        self.service = dataclasses.replace(
            self.get_service(host), disabled=True, disabled_reason=reason
        )

    def enable(self, host: str) -> None:
        self.calls.append(("enable", host, time.monotonic()))
        self.service = dataclasses.replace(
            self.get_service(host), disabled=False, disabled_reason=""
        )

    def list_servers(self, host: str) -> list[Server]:
        return []

    def evacuate(self, server_id: str, target_host: str | None = None) -> None: ...

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


class PrivateLibvirtd:
    """A libvirtd of this test alone, which it may kill and restart: the shared one serves
    other sessions (tests/bmc) and must never be stopped.

    It runs in a mount namespace of its own (``unshare -m``) where ``/run/libvirt``,
    ``/var/lib/libvirt``, ``/var/cache/libvirt`` and ``/var/log/libvirt`` are bind mounts
    of directories under ``workdir``: its sockets, domains and QEMU state never meet the
    shared daemon's, and its socket is reachable from outside as
    ``workdir/run/libvirt-sock``. QEMU's capabilities cache is copied from the shared
    daemon so that the first start does not probe QEMU again."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.uri = f"qemu:///system?socket={workdir / 'run' / 'libvirt-sock'}"
        self._holder: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.workdir / "libvirtd.pid"

    def start(self) -> None:
        for sub in ("run", "lib", "cache", "log"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        cache = Path("/var/cache/libvirt/qemu")
        if cache.is_dir():
            shutil.copytree(cache, self.workdir / "cache" / "qemu", dirs_exist_ok=True)
        w = self.workdir
        script = (
            f"mount --bind {w}/run /run/libvirt && mount --bind {w}/lib /var/lib/libvirt && "
            f"mount --bind {w}/cache /var/cache/libvirt && "
            f"mount --bind {w}/log /var/log/libvirt && "
            f"virtlogd -d -p {w}/virtlogd.pid && libvirtd -d -p {w}/libvirtd.pid && "
            "exec sleep infinity"
        )
        # The holder keeps the namespace alive while libvirtd is killed and restarted.
        self._holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            start_new_session=True,
        )
        wait_until(self._answers, "the private libvirtd", 60, every=0.1, ignoring=(Exception,))

    def _answers(self) -> bool:
        done = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True, timeout=10)
        return done.returncode == 0

    def libvirtd_pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def kill(self) -> None:
        """SIGKILL libvirtd (as a crash would); its guests keep running."""
        pid = self.libvirtd_pid()
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: not Path(f"/proc/{pid}").exists(),
            "libvirtd to die",
            10,
            every=0.1,
            ignoring=(Exception,),
        )
        self.pid_file.unlink(missing_ok=True)

    def restart(self) -> None:
        assert self._holder is not None
        subprocess.run(
            [
                "nsenter",
                "-t",
                str(self._holder.pid),
                "-m",
                "libvirtd",
                "-d",
                "-p",
                str(self.pid_file),
            ],
            check=True,
            timeout=60,
        )
        wait_until(
            self._answers,
            "the private libvirtd to answer again",
            60,
            every=0.1,
            ignoring=(Exception,),
        )

    def qemu_pid(self, name: str) -> int:
        return int((self.workdir / "run" / "qemu" / f"{name}.pid").read_text().strip())

    def stop(self, domains: list[Any]) -> None:
        for dom in domains:  # their QEMUs are ours; libvirtd may already be gone
            with contextlib.suppress(Exception):
                os.kill(self.qemu_pid(dom.name()), signal.SIGKILL)
        for name in ("libvirtd.pid", "virtlogd.pid"):
            with contextlib.suppress(Exception):
                os.kill(int((self.workdir / name).read_text().strip()), signal.SIGTERM)
        if self._holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._holder.pid, signal.SIGTERM)
            self._holder.wait(10)


@dataclass
class GuestFiles:
    kernel: Path
    initrd: Path
    workdir: Path


@pytest.fixture(scope="session")
def guest_files() -> Iterator[GuestFiles]:
    require("libvirt and QEMU (tools/libvirt/setup)", Libvirt.check)
    require("the tiny guest's kernel and busybox (tools/libvirt/setup)", guest.check)
    workdir = Path(f"/var/tmp/vigil-guest-{os.getpid()}")
    kernel, initrd = guest.build_guest(workdir)
    yield GuestFiles(kernel, initrd, workdir)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_libvirt() -> Iterator[Libvirt]:
    lv = Libvirt()
    try:
        require("libvirtd", lv.start)
        yield lv
    finally:
        lv.stop()


@dataclass
class Stack:
    store: SqlStore
    compute: LibvirtCompute
    guest: GuestEngine
    monitor: LibvirtMonitor
    sender: ReportSender
    files: GuestFiles
    uri: str
    port: int = 0  # of the agents' API
    policies: dict[str, GuestPolicy] = field(default_factory=dict)
    seen: list[tuple[float, str, str, Observation]] = field(default_factory=list)
    domains: list[Any] = field(default_factory=list)

    def define(self, mode: str, *, watchdog: str = "none", on_crash: str = "destroy") -> Any:
        dom_uuid = str(uuid.uuid4())
        name = f"{DOMAIN_PREFIX}{os.getpid()}-{mode}-{dom_uuid[:8]}"
        xml = guest.domain_xml(
            name=name,
            uuid=dom_uuid,
            kernel=self.files.kernel,
            initrd=self.files.initrd,
            console=self.files.workdir / f"{name}.log",
            mode=mode,
            watchdog=watchdog,
            on_crash=on_crash,
        )
        dom = self.compute._conn.defineXML(xml)
        self.domains.append(dom)
        return dom

    def failures(self, instance_id: str) -> list[InstanceFailure]:
        return self.store.list_guest_failures(instance_id=instance_id)

    def events(self, instance_id: str) -> list[str]:
        return [
            e.event_type
            for e in self.store.list_events(limit=10_000)
            if e.instance_id == instance_id
        ]


def make_stack(tmp_path: Path, files: GuestFiles, uri: str) -> Iterator[Stack]:
    store = new_store(tmp_path, Segment("lv"), [Host(HOST, "lv")])
    compute = LibvirtCompute(uri)
    policies: dict[str, GuestPolicy] = {}
    clock = SystemClock()
    engine = GuestEngine(
        store=store,
        compute=compute,
        clock=clock,
        services=ServiceKeeper(store=store, compute=compute, clock=clock),
        settings=GuestSettings(restart_budget=2, backoff_base=1.0, backoff_max=10.0),
        policies=lambda f: policies.get(f.instance_id, GuestPolicy(HaPolicy.OFF)),
        tick=0.2,
    )
    app = FastAPI()
    add_guest_routes(app, guest=engine, agent_key=KEY, known_host=lambda h: h == HOST)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the report API", 10, every=0.1, ignoring=(Exception,))
    key = host_key(KEY, HOST).encode()  # the server holds KEY, the master
    sender = ReportSender(host=HOST, server_url=f"http://127.0.0.1:{port}", key=key)
    seen: list[tuple[float, str, str, Observation]] = []
    monitor = LibvirtMonitor(
        host=HOST,
        uri=uri,
        report=sender.put,
        on_event=lambda u, e, o: seen.append((time.monotonic(), u, e, o)),
        backoff_max=1.0,
    )
    stack = Stack(store, compute, engine, monitor, sender, files, uri, port, policies, seen)
    engine.start()
    sender.start()
    monitor.start()
    assert monitor.connected.wait(30), "the monitor did not connect to libvirt"
    try:
        yield stack
    finally:
        monitor.stop()
        sender.stop()
        engine.stop()
        server.should_exit = True
        thread.join(timeout=10)
        for dom in stack.domains:
            with contextlib.suppress(Exception):
                dom.destroy()
            with contextlib.suppress(Exception):
                dom.undefine()
        compute.close()
        store.close()


@pytest.fixture
def private_stack(
    tmp_path: Path, guest_files: GuestFiles, shared_libvirt: Libvirt
) -> Iterator[tuple[Stack, PrivateLibvirtd]]:
    daemon = PrivateLibvirtd(Path(f"/var/tmp/vigil-libvirtd-{os.getpid()}"))
    stack: Stack | None = None
    try:
        require("a private libvirtd (unshare, nsenter)", daemon.start)
        for stack in make_stack(tmp_path, guest_files, daemon.uri):
            yield stack, daemon
    finally:
        daemon.stop(stack.domains if stack else [])
        shutil.rmtree(daemon.workdir, ignore_errors=True)


@pytest.fixture
def lv_stack(tmp_path: Path, guest_files: GuestFiles, shared_libvirt: Libvirt) -> Iterator[Stack]:
    yield from make_stack(tmp_path, guest_files, LIBVIRT_URI)
