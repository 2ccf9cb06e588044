"""vigil-server in this process with Masakari's API mounted at /instance-ha, on the
simulated cloud (or on a given compute driver and fence devices: the real Nova tier).

Authentication, as Masakari's clients do it: keystoneauth's ``admin_token`` plugin (an
endpoint and a token, no Keystone) sends vigil's API token as ``X-Auth-Token`` — the SDK
with ``auth_type="admin_token"``, the CLI with ``--os-auth-type admin_token --os-endpoint
… --os-token …``, masakari-monitors with ``[api] auth_type = admin_token``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openstack.connection

from vigil import config
from vigil.api.masakari import masakari_app
from vigil.drivers.compute import ComputeDriver
from vigil.drivers.fencing import FenceDevice
from vigil.model import Host
from vigil.server import VigilServer
from vigil.sim.cloud import SimCloud
from vigil.store.masakari import MasakariRecords

PREFIX = "/instance-ha"


@dataclass
class Running:
    server: VigilServer
    token: str
    api: httpx.Client  # vigil's own API
    cloud: SimCloud | None

    @property
    def endpoint(self) -> str:
        """The catalog endpoint of the instance-ha service."""
        return f"{self.server.api_url}{PREFIX}/v1"

    def masakari(self, version: str | None = None) -> httpx.Client:
        headers = {"X-Auth-Token": self.token}
        if version:
            headers["OpenStack-API-Version"] = f"instance-ha {version}"
        return httpx.Client(base_url=self.endpoint, headers=headers, timeout=30)

    def sdk(self) -> Any:
        """openstacksdk's instance_ha proxy, authenticated like a monitor would be."""
        conn = openstack.connection.Connection(
            auth_type="admin_token",
            auth={"endpoint": self.endpoint, "token": self.token},
        )
        return conn.instance_ha


def sim_cloud(hosts: int = 4, instances: int = 8) -> SimCloud:
    from vigil.cli.demo import DemoOptions, build_cloud

    return build_cloud(DemoOptions(hosts=hosts, instances=instances))


@contextmanager
def running_vigil(
    tmp_path: Path,
    *,
    cloud: SimCloud | None = None,
    compute: ComputeDriver | None = None,
    fence_devices: Callable[[Host], list[FenceDevice]] | None = None,
    overrides: list[str] | None = None,
) -> Iterator[Running]:
    token = config.random_secret()
    conf = config.load([], config_files=[])
    config.apply_overrides(
        conf,
        [
            f"database.connection=sqlite:///{tmp_path / 'vigil.db'}",
            "api.port=0",
            "agent.listen_port=0",
            f"api.auth_token={token}",
            f"agent.key={config.random_secret()}",
            *(overrides or []),
        ],
    )
    settings = config.settings_from_conf(conf)
    server = VigilServer(settings, cloud=cloud, compute=compute, fence_devices=fence_devices)
    records = MasakariRecords(settings.database_url)
    # What vigil/server.py does once it mounts the Masakari API.
    server.app.mount(
        PREFIX,
        masakari_app(
            store=server.store,
            engine=server.engine,
            compute=server.compute,
            token=token,
            clock=server.clock,
            records=records,
            defaults=settings.recovery,
        ),
    )
    server.start()
    api = httpx.Client(
        base_url=server.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    try:
        yield Running(server, token, api, cloud)
    finally:
        api.close()
        server.stop()
        records.close()
