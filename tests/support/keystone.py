"""A real Keystone (tools/keystone) for a test session: the identity tier's (tests/keystone)
and the real-Nova tier's (tests/nova, whose minicloud validates tokens with it).

``session_keystone()`` starts it if it is not running and stops it at the end if it
started it here (``KEYSTONE_KEEP=1`` keeps it). Tokens last ``EXPIRATION`` seconds when it
is started here, so that the identity tier can see a token expire; both tiers start it
with that lifetime, so one session running both never restarts it between them.

Not installed: skipped, or failed with CI=true (``services.require``).
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
from keystoneauth1 import session
from keystoneauth1.identity import v3
from services import require

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "keystone" / "keystone"
HOME = Path(os.environ.get("KEYSTONE_HOME") or ROOT / ".keystone").resolve()
EXPIRATION = 20  # seconds a token lasts in the tests' Keystone
SERVICE = "keystone (tools/keystone: a real Keystone)"


def tool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYSTONE_TOKEN_EXPIRATION": str(EXPIRATION)}
    return subprocess.run(
        [str(TOOL), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def installed() -> None:
    """A check for services.require: the tool's virtualenv is there."""
    if not (HOME / "venv" / "bin" / "keystone-manage").exists():
        raise RuntimeError(f"not installed in {HOME}: run tools/keystone/keystone install")


def running_expiration() -> int | None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(HOME / "etc" / "keystone.conf")
    value = parser.get("token", "expiration", fallback=None)
    return int(value) if value else None


@dataclass
class Keystone:
    info: dict[str, Any]

    @property
    def auth_url(self) -> str:
        return str(self.info["auth_url"])

    def password(self, user: str) -> str:
        return str(self.info["users"][user]["password"])

    def project_id(self, user: str) -> str:
        return str(self.info["users"][user]["project_id"])

    def credentials(self, user: str) -> dict[str, str]:
        """``user``'s password credentials, scoped to its project (keystoneauth's and
        openstacksdk's keyword arguments)."""
        return {
            "auth_url": self.auth_url,
            "username": user,
            "password": self.password(user),
            "user_domain_id": "default",
            "project_name": self.info["users"][user]["project"],
            "project_domain_id": "default",
        }

    def session(self, user: str, *, system: bool = False) -> session.Session:
        """A keystoneauth session of ``user``: project-scoped, or system-scoped."""
        creds = self.credentials(user)
        if system:
            del creds["project_name"], creds["project_domain_id"]
            creds["system_scope"] = "all"
        return session.Session(auth=v3.Password(**creds))

    def connect(self, user: str) -> openstack.connection.Connection:
        """An openstacksdk connection of ``user``, through the catalog."""
        return openstack.connect(**self.credentials(user), region_name="RegionOne")

    @contextmanager
    def in_catalog(self, service_type: str, url: str) -> Iterator[None]:
        """A service of ``service_type`` with its public endpoint ``url`` in the catalog,
        as an operator registers vigil (removed on the way out)."""
        admin = self.session("admin")
        identity = {"endpoint_override": self.auth_url}
        name = f"vigil-{uuid.uuid4().hex[:6]}"
        service = admin.post(
            "/services", json={"service": {"type": service_type, "name": name}}, **identity
        ).json()["service"]
        body = {"service_id": service["id"], "interface": "public", "region_id": "RegionOne"}
        endpoint = admin.post(
            "/endpoints", json={"endpoint": {**body, "url": url}}, **identity
        ).json()["endpoint"]
        try:
            yield
        finally:
            admin.delete(f"/endpoints/{endpoint['id']}", **identity)
            admin.delete(f"/services/{service['id']}", **identity)

    def token(self, user: str, *, system: bool = False) -> str:
        """A fresh token of ``user``: project-scoped, or system-scoped."""
        return str(self.session(user, system=system).get_token())


def session_keystone(*, any_expiration: bool = False, keep: bool = False) -> Iterator[Keystone]:
    """The body of a session fixture: a running Keystone, started here if need be.

    A Keystone already running with another token lifetime than ``EXPIRATION`` is
    restarted with it, unless ``any_expiration`` (a tier that does not care takes it as
    it is). Stopped at the end only if started here, and neither ``keep`` nor
    ``KEYSTONE_KEEP=1``."""
    require(SERVICE, installed)
    already = tool("status").returncode == 0
    if already and not any_expiration and running_expiration() != EXPIRATION:
        tool("stop")
        already = False
    result = tool("start")
    if result.returncode != 0:

        def failed() -> None:
            raise RuntimeError(f"keystone start failed: {result.stderr[-3000:]}")

        require(SERVICE, failed)
    info = json.loads(tool("info", "--json").stdout)
    try:
        yield Keystone(info)
    finally:
        if not already and not keep and os.environ.get("KEYSTONE_KEEP") != "1":
            tool("stop")
