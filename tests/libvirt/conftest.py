"""The tiny guest with the real QEMU guest agent, booted once for every module that
talks to it (``tests/libvirt/test_guest_agent.py``, ``tests/libvirt/test_app_checks.py``):
under software emulation a boot costs ~15 s.

A conftest, not an import from ``lvstack``: a fixture imported into two modules is two
fixtures and would boot two guests. Still no ``__init__.py`` here (a ``tests/libvirt``
package would shadow libvirt-python).

``agent_guest`` hands each test the guest in good shape: its agent answers (a test that
stopped it gets the guest restarted for the next one) and its httpd serves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tinyguest as guest
from bmc.emulators import DOMAIN_PREFIX, LIBVIRT_URI, Libvirt
from services import require
from support import wait_until

from vigil.agent.guest_agent import GuestAgent, GuestAgentError

# Busybox applets named through busybox itself: this static busybox's wget, run by its
# symlink with -T, died of SIGSEGV under guest-exec.
BUSYBOX = "/bin/busybox"
FETCH = [BUSYBOX, "wget", "-q", "-O", "-", "http://127.0.0.1:8080/"]
# As the guest's /init starts it: by its applet link, so that its process is named httpd.
START_HTTPD = ["/bin/httpd", "-p", "127.0.0.1:8080", "-h", "/www"]


@dataclass
class BootedGuest:
    agent: GuestAgent
    dom: Any
    name: str
    console: Path

    def boot(self) -> None:
        with contextlib.suppress(Exception):
            self.dom.destroy()
        self.dom.create()
        wait_until(
            lambda: self.agent.ping(self.dom, timeout=1) is None,
            f"the guest agent of {self.name} to answer (console: {self.console})",
            90,
            every=0.5,
            ignoring=(GuestAgentError,),
        )

    def make_healthy(self) -> None:
        """The agent answers and a process named httpd serves, as after a boot."""
        try:
            self.agent.ping(self.dom, timeout=3)
        except GuestAgentError:
            self.boot()  # a test stopped the agent: only a restart brings it back
        if self.agent.exec(self.dom, [BUSYBOX, "pidof", "httpd"], timeout=10).ok:
            return
        # None, or one a test started as "/bin/busybox httpd" (so named busybox: the only
        # process of that name in the guest, this busybox has no pkill).
        self.agent.exec(self.dom, [BUSYBOX, "killall", "busybox"], timeout=10)
        assert self.agent.exec(self.dom, START_HTTPD, timeout=10).ok
        assert self.agent.exec(self.dom, FETCH, timeout=10).ok


@pytest.fixture(scope="session")
def booted_guest() -> Iterator[BootedGuest]:
    import libvirt  # type: ignore[import-untyped]

    lv = Libvirt()
    try:
        require("libvirtd", lv.start)
        require("the qemu-guest-agent package (tools/libvirt/setup)", guest.agent_package)
        workdir = Path(f"/var/tmp/vigil-guest-agent-{os.getpid()}")
        kernel, initrd = guest.build_guest(workdir, guest_agent=True)
        conn = libvirt.open(LIBVIRT_URI)
        dom_uuid = str(uuid.uuid4())
        name = f"{DOMAIN_PREFIX}{os.getpid()}-agent-{dom_uuid[:8]}"
        console = workdir / f"{name}.log"
        dom = conn.defineXML(
            guest.domain_xml(
                name=name,
                uuid=dom_uuid,
                kernel=kernel,
                initrd=initrd,
                console=console,
                mode="idle",
                guest_agent=True,
            )
        )
        try:
            booted = BootedGuest(GuestAgent(conn), dom, name, console)
            booted.boot()
            yield booted
        finally:
            with contextlib.suppress(Exception):
                dom.destroy()
            with contextlib.suppress(Exception):
                dom.undefine()
            conn.close()
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        lv.stop()


@pytest.fixture
def agent_guest(booted_guest: BootedGuest) -> tuple[GuestAgent, Any]:
    booted_guest.make_healthy()
    return booted_guest.agent, booted_guest.dom
