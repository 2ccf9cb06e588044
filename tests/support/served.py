"""A real vigil-server in the test's process, on the simulated cloud: its API on an
ephemeral port, SQLite under the test's directory, the static token ``TOKEN``.

    with serving(tmp_path, hosts=("compute-1",)) as (server, cloud):
        httpx.get(f"{server.api_url}/v1/hosts", headers=bearer())
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vigil.clock import SystemClock
from vigil.config import Settings
from vigil.drivers.network import NetworkDriver
from vigil.server import VigilServer
from vigil.sim.cloud import SimCloud, SimLatency

TOKEN = "static-token"
AGENT_KEY = "agent-key"


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def serving(
    tmp_path: Path,
    *,
    hosts: Iterable[str] = ("compute-1",),
    network: NetworkDriver | None = None,
    **settings: Any,
) -> Iterator[tuple[VigilServer, SimCloud]]:
    """A started server and its simulated cloud with ``hosts`` (and ``network``, its
    Neutron); ``settings`` override the test defaults of ``Settings``. Stopped on the
    way out."""
    cloud = SimCloud(SystemClock(), latency=SimLatency.zero())
    for name in hosts:
        cloud.add_host(name)
    given: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/v.db",
        "api_port": 0,
        "heartbeat_port": 0,
        "api_token": TOKEN,
        "agent_key": AGENT_KEY,
        "sim_url": None,
        **settings,
    }
    server = VigilServer(Settings(**given), cloud=cloud, network=network)
    server.start()
    try:
        yield server, cloud
    finally:
        server.stop()
