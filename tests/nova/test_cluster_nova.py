"""``vigil cluster create`` on the real Nova and Neutron of the minicloud (issue 19): the
members' ports made first with their addresses on the shared network, the VIP's port and
the members-only security group, an anti-affinity server group, the members booted on
their ports with the generated user data — each member ACTIVE on a host of its own, each
port ACTIVE with its member as device — verified, then deleted with everything made for
it. Nova's fake driver runs nothing in the VMs, so what the members would say of their
corosync (fence_vigil's monitor) is sent here as the agent sends it; the configuration
itself runs for real in tests/pacemaker."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from vigil.drivers.errors import NotFound
from vigil.drivers.neutron import build_openstack_network
from vigil.engine.clusters import TOKEN_HEADER

from .cloud import FLAVOR, IMAGE, Minicloud, Vigil, cluster_vigil

pytestmark = [pytest.mark.nova, pytest.mark.neutron]


@pytest.fixture
def vigil(minicloud: Minicloud, tmp_path: Path) -> Iterator[Vigil]:
    with cluster_vigil(minicloud, tmp_path) as v:
        yield v


def test_a_cluster_is_built_on_the_real_nova_and_neutron(
    minicloud: Minicloud, vigil: Vigil
) -> None:
    made = vigil.api.post(
        "/v1/clusters",
        json={"name": "db", "size": 3, "image": IMAGE, "flavor": FLAVOR, "network": "private"},
        timeout=120,
    )
    assert made.status_code in (201, 202), made.text
    cluster = made.json()
    members = cluster["members"]
    assert len(members) == 3 and cluster["vip"]

    conn = minicloud.conn
    hosts, booted = set(), []
    for m in members:
        minicloud.wait_active([m["instance_id"]], timeout=120)
        server = minicloud.server(m["instance_id"])
        hosts.add(server["OS-EXT-SRV-ATTR:host"])
        assert server["metadata"]["vigil:ha_policy"] == "notify"
        port = conn.network.get_port(m["port_id"])
        assert [ip["ip_address"] for ip in port.fixed_ips] == [m["address"]]
        assert port.device_id == m["instance_id"]
        assert [p["ip_address"] for p in port.allowed_address_pairs] == [cluster["vip"]]
        # the user data Nova holds is what vigil generated for the cluster
        data = minicloud.nova("GET", f"/servers/{m['instance_id']}", mv="2.3")["server"]
        booted.append(base64.b64decode(data["OS-EXT-SRV-ATTR:user_data"]).decode())
    assert hosts == {"compute1", "compute2", "compute3"}  # anti-affinity: one each
    group = minicloud.nova("GET", f"/os-server-groups/{cluster['server_group_id']}", mv="2.64")
    assert group["server_group"]["policy"] == "anti-affinity"
    assert sorted(group["server_group"]["members"]) == sorted(m["instance_id"] for m in members)
    rules = conn.network.get_security_group(cluster["security_group_id"]).security_group_rules
    ingress = {
        (r["protocol"], r["port_range_min"], r["remote_group_id"])
        for r in rules
        if r["direction"] == "ingress"
    }
    assert ingress == {
        ("udp", 5405, cluster["security_group_id"]),
        ("tcp", 2224, cluster["security_group_id"]),
    }
    text = vigil.api.get(f"/v1/clusters/{cluster['id']}/user-data").text
    assert booted == [text] * len(members)  # every member booted with what vigil generated
    corosync = next(
        f["content"]
        for f in yaml.safe_load(text)["write_files"]
        if f["path"] == "/etc/corosync/corosync.conf"
    )
    assert all(f"ring0_addr: {m['address']}" in corosync for m in members)

    # the members' own word, as fence_vigil's monitor sends it
    token = vigil.server.clusters.token(cluster["id"])
    vigil.api.post(
        f"/v1/clusters/{cluster['id']}/fence",
        json={"action": "list", "report": {"quorate": True, "online": ["db-1", "db-2", "db-3"]}},
        headers={TOKEN_HEADER: token},
    ).raise_for_status()
    verified = vigil.api.get(f"/v1/clusters/{cluster['id']}/verify").json()
    assert verified["ok"], verified

    deleted = vigil.api.delete(f"/v1/clusters/{cluster['id']}", timeout=120)
    assert deleted.status_code == 204, deleted.text
    network = build_openstack_network("minicloud")
    for m in members:
        with pytest.raises(NotFound):
            network.get_port(m["port_id"])
    assert network.list_ports(name_prefix=f"vigil-db-{cluster['id'][:8]}") == []  # the VIP's
