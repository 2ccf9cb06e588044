"""An in-guest cluster end to end, for the pacemaker tier and its benchmark: a real
vigil-server in this process on the simulated cloud (four hypervisors with simulated
BMCs, their agents' heartbeats), listening where the members reach it; a three-member
cluster built through vigil's API; and the members stood in for by namespaces running
corosync and pacemaker over the files of the user data vigil booted them with
(``support.guest_cluster``).

    with cluster_world(tmp_path) as world:
        world.guests.wait_for_quorum()
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support import wait_until
from support.guest_cluster import GuestCluster, Member, write_files_of
from support.served import AGENT_KEY, bearer, serving
from vigil.server import VigilServer
from vigil.sim.agents import SimAgents
from vigil.sim.cloud import SimCloud
from vigil.sim.network import SimNetwork

HOSTS = ("compute-1", "compute-2", "compute-3", "compute-4")
SUBNET, GATEWAY = "10.77.0.0/24", "10.77.0.1"
FENCE_VIGIL = Path(__file__).resolve().parents[2] / "vigil" / "agent" / "fence_vigil.py"


@dataclass
class ClusterWorld:
    server: VigilServer
    cloud: SimCloud
    api: httpx.Client
    cluster: dict[str, Any]
    guests: GuestCluster
    url: str  # vigil's API as the members reach it

    def host_of(self, member: str) -> str:
        instance = next(m["instance_id"] for m in self.cluster["members"] if m["name"] == member)
        return self.cloud.instance(instance).host

    def fence_vigil(self, action: str, member: str = "") -> subprocess.CompletedProcess[str]:
        """The agent as Pacemaker runs it (options on stdin), from this machine."""
        token = self.server.clusters.token(self.cluster["id"])
        options = [
            f"action={action}",
            f"vigil_url={self.url}",
            f"cluster={self.cluster['id']}",
            f"token={token}",
            "power_timeout=10",
        ]
        if member:
            options.append(f"port={member}")
        return subprocess.run(
            ["/usr/bin/python3", str(FENCE_VIGIL)],
            input="\n".join(options) + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def answers(address: str) -> bool:
    """Whether something holds ``address``: a refused TCP connection is an answer."""
    try:
        with socket.create_connection((address, 9), timeout=0.5):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


@contextmanager
def cluster_cloud(
    tmp_path: Path,
    *,
    subnet: str,
    vigil_url: str,
    api_host: str | None = None,
    api_port: int | None = None,
) -> Iterator[tuple[VigilServer, SimCloud, SimNetwork, httpx.Client]]:
    """vigil-server on the simulated cloud with a simulated Neutron (network ``private``
    on ``subnet``), its four hosts up (fenced by their simulated BMCs, their agents'
    heartbeats received); an admin's API client. No namespaces."""
    network = SimNetwork()
    network.add_network("private", subnet)
    served = {"api_host": api_host, "api_port": api_port} if api_port else {}
    with serving(
        tmp_path,
        hosts=HOSTS,
        network=network,
        clusters_vigil_url=vigil_url,
        accept_master_key=True,  # SimAgents sign every host's heartbeats with it
        **served,
    ) as (server, cloud):
        local = f"http://127.0.0.1:{api_port}" if api_port else server.api_url
        api = httpx.Client(base_url=local, headers=bearer(), timeout=30)
        api.post("/v1/segments", json={"name": "s"}).raise_for_status()
        for host in HOSTS:
            api.post(
                "/v1/hosts", json={"name": host, "segment": "s", "fencing": [{"driver": "sim"}]}
            ).raise_for_status()
        agents = SimAgents(
            cloud, server=server.heartbeat_address, key=AGENT_KEY.encode(), interval=0.1
        )
        agents.start()
        try:
            wait_until(
                lambda: all(h["state"] == "up" for h in api.get("/v1/hosts").json()), "hosts up"
            )
            yield server, cloud, network, api
        finally:
            agents.stop()
            api.close()


@contextmanager
def cluster_world(tmp_path: Path, *, size: int = 3, prefix: str = "vgc") -> Iterator[ClusterWorld]:
    """Everything above, started (corosync and pacemakerd running in every member);
    stopped and removed on the way out."""
    port = free_port()
    url = f"http://{GATEWAY}:{port}"
    # the members reach vigil on the bridge's address
    with cluster_cloud(
        tmp_path, subnet=SUBNET, vigil_url=url, api_host="0.0.0.0", api_port=port
    ) as (server, cloud, _, api):
        made = api.post(
            "/v1/clusters",
            json={
                "name": "db",
                "size": size,
                "image": "debian-12-ha",
                "flavor": "m1.small",
                "network": "private",
            },
        )
        assert made.status_code == 201, made.text
        cluster = made.json()
        files = write_files_of(api.get(f"/v1/clusters/{cluster['id']}/user-data").text)
        members = [Member(m["name"], m["address"], files) for m in cluster["members"]]
        with GuestCluster(members, prefix=prefix, subnet=SUBNET, gateway=GATEWAY) as guests:
            guests.start()
            yield ClusterWorld(server, cloud, api, cluster, guests, url)
