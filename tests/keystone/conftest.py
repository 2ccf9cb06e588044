"""The identity tier: a real Keystone (tools/keystone), started for the session if it is
not running (and stopped at the end if started here), and a vigil-server that takes its
tokens. Tokens last ``EXPIRATION`` seconds in this tier, so that one test can see a token
expire; a Keystone already running with another lifetime is restarted with this one.

Not installed: skipped, or failed with CI=true (``services.require``). Every test module
here is marked ``keystone``.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openstack
import pytest
from keystoneauth1 import session
from keystoneauth1.identity import v3
from services import require

from vigil import config
from vigil.clock import SystemClock
from vigil.server import VigilServer
from vigil.sim.cloud import SimCloud, SimLatency

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "keystone" / "keystone"
HOME = Path(os.environ.get("KEYSTONE_HOME") or ROOT / ".keystone").resolve()
EXPIRATION = 20  # seconds a token lasts in this tier


def _tool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYSTONE_TOKEN_EXPIRATION": str(EXPIRATION)}
    return subprocess.run(
        [str(TOOL), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _installed() -> None:
    if not (HOME / "venv" / "bin" / "keystone-manage").exists():
        raise RuntimeError(f"not installed in {HOME}: run tools/keystone/keystone install")


def _running_expiration() -> int | None:
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


@pytest.fixture(scope="session")
def keystone() -> Iterator[Keystone]:
    require("keystone (tools/keystone: a real Keystone)", _installed)
    already = _tool("status").returncode == 0
    if already and _running_expiration() != EXPIRATION:
        _tool("stop")
        already = False
    result = _tool("start")
    if result.returncode != 0:

        def failed() -> None:
            raise RuntimeError(f"keystone start failed: {result.stderr[-3000:]}")

        require("keystone (tools/keystone: a real Keystone)", failed)
    info = json.loads(_tool("info", "--json").stdout)
    try:
        yield Keystone(info)
    finally:
        if not already and os.environ.get("KEYSTONE_KEEP") != "1":
            _tool("stop")


@dataclass
class Served:
    server: VigilServer
    cloud: SimCloud
    keystone: Keystone

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"X-Auth-Token": token} if token is not None else {}
        with httpx.Client(base_url=self.server.api_url, timeout=30) as client:
            return client.request(method, path, headers=headers, **kw)


def write_conf(path: Path, keystone: Keystone, tmp: Path) -> Path:
    """vigil-server's configuration as an operator writes it for Keystone."""
    path.write_text(
        f"""[database]
connection = sqlite:///{tmp}/vigil.db

[api]
port = 0
auth_strategy = keystone

[agent]
key = agent-key
listen_port = 0

[keystone_authtoken]
www_authenticate_uri = {keystone.auth_url}
auth_url = {keystone.auth_url}
auth_type = password
username = vigil
password = {keystone.password("vigil")}
project_name = service
user_domain_id = default
project_domain_id = default
region_name = RegionOne
# Seconds a validated token is taken on trust (300 by default): a revoked token passes
# at most this long. Short here, so that a test sees the revocation.
token_cache_time = 5
"""
    )
    return path


@pytest.fixture(scope="module")
def served(keystone: Keystone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("vigil-keystone")
    conf = config.load([], config_files=[str(write_conf(tmp / "vigil.conf", keystone, tmp))])
    settings = config.settings_from_conf(conf)
    cloud = SimCloud(SystemClock(), latency=SimLatency.zero())
    for name in ("compute-1", "compute-2"):
        cloud.add_host(name)
    server = VigilServer(settings, cloud=cloud)
    server.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.api_url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    try:
        yield Served(server, cloud, keystone)
    finally:
        server.stop()
