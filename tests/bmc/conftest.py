"""Fixtures of the fencing tests against real BMC emulators (``tests/bmc/emulators.py``).

``lab`` (one for the tests of this package, stopped when they are done) starts libvirtd
if it is not running, defines one tiny QEMU domain per role, and starts sushy-tools'
Redfish emulator (HTTPS, a user file) and virtualbmc over them; everything is stopped
and the domains undefined afterwards. A missing piece skips the tests that need it on a
developer's machine and fails them with ``CI=true`` (``tests/services.py``).
``tools/bmc/setup`` installs the pieces.

The BMC password is random per session, so that a test can search every log record and
message for it.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from services import require

from .emulators import Domain, Libvirt, SushyEmulator, Tls, VirtualBmc, make_tls

ROLES = ("redfish", "ipmi", "agent-ipmi", "agent-redfish", "levels", "e2e")
USERNAME = "vigil-admin"
AGENTS = ("fence_ipmilan", "fence_redfish")


def new_password() -> str:
    return "pw-" + secrets.token_hex(8)  # 19 bytes: IPMI 2.0 allows 20


@dataclass
class Lab:
    """The running emulators and their domains."""

    libvirt: Libvirt
    tls: Tls
    redfish: SushyEmulator
    ipmi: VirtualBmc
    username: str
    password: str
    domains: dict[str, Domain] = field(default_factory=dict)

    def redfish_options(self, role: str, **extra: str) -> dict[str, str]:
        return {
            "address": self.redfish.url,
            "username": self.username,
            "password": self.password,
            "ca_bundle": str(self.tls.ca),
            "system_id": self.domains[role].uuid,
            **extra,
        }

    def ipmi_options(self, role: str, **extra: str) -> dict[str, str]:
        return {
            "address": "127.0.0.1",
            "ipport": str(self.ipmi.ports[self.domains[role].name]),
            "username": self.username,
            "password": self.password,
            **extra,
        }

    def fence_ipmilan_options(self, role: str, **extra: str) -> dict[str, str]:
        return {
            "agent": "fence_ipmilan",
            "ip": "127.0.0.1",
            "ipport": str(self.ipmi.ports[self.domains[role].name]),
            "username": self.username,
            "password": self.password,
            "lanplus": "1",
            "agent_timeout": "60",
            **extra,
        }

    def fence_redfish_options(self, role: str, **extra: str) -> dict[str, str]:
        port = self.redfish.url.rsplit(":", 1)[1]
        return {
            "agent": "fence_redfish",
            "ip": "127.0.0.1",
            "ipport": port,
            "username": self.username,
            "password": self.password,
            "ssl_insecure": "1",  # fence_redfish has no CA option: its requests use the system's
            "systems_uri": f"/redfish/v1/Systems/{self.domains[role].uuid}",
            "agent_timeout": "60",
            **extra,
        }


def _check_agents() -> None:
    missing = [a for a in AGENTS if shutil.which(a, path="/usr/sbin:/sbin:/usr/bin") is None]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not installed (Debian's fence-agents)")


@pytest.fixture(scope="package")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require("libvirt and QEMU (tools/bmc/setup)", Libvirt.check)
    require("sushy-tools (tools/bmc/setup)", SushyEmulator.check)
    require("virtualbmc (tools/bmc/setup)", VirtualBmc.check)
    work = tmp_path_factory.mktemp("bmc")
    password = new_password()
    libvirt = Libvirt()
    redfish: SushyEmulator | None = None
    ipmi = VirtualBmc(work / "vbmc", username=USERNAME, password=password)
    try:
        require("libvirtd", libvirt.start)
        domains = {role: libvirt.define(role) for role in ROLES}
        tls = make_tls(work / "tls")
        redfish = SushyEmulator(
            work / "sushy", tls, users={USERNAME: password}, domains=list(domains.values())
        )
        require("sushy-tools' Redfish emulator", redfish.start)
        require("vbmcd", ipmi.start)
        for domain in domains.values():

            def add(domain: Domain = domain) -> None:
                ipmi.add(domain)

            require(f"a virtualbmc BMC for {domain.name}", add)
        yield Lab(libvirt, tls, redfish, ipmi, USERNAME, password, domains)
    finally:
        ipmi.stop()
        if redfish is not None:
            redfish.stop()
        libvirt.stop()


@pytest.fixture(scope="session")
def fence_agents() -> None:
    require("fence-agents (tools/bmc/setup)", _check_agents)
