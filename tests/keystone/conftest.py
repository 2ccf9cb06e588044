"""The identity tier: a real Keystone (tools/keystone), started for the session if it is
not running (and stopped at the end if started here), and a vigil-server that takes its
tokens. Tokens last ``EXPIRATION`` seconds in this tier, so that one test can see a token
expire; a Keystone already running with another lifetime is restarted with this one. The
Keystone part is ``support.keystone``'s, shared with the real-Nova tier.

Not installed: skipped, or failed with CI=true (``services.require``). Every test module
here is marked ``keystone``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.keystone import EXPIRATION, Keystone, session_keystone

from vigil import config
from vigil.clock import SystemClock
from vigil.server import VigilServer
from vigil.sim.cloud import SimCloud, SimLatency

__all__ = ["EXPIRATION", "Keystone", "Served", "keystone", "served", "write_conf"]


@pytest.fixture(scope="session")
def keystone() -> Iterator[Keystone]:
    yield from session_keystone()


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
