"""The real Neutron of the minicloud (tools/minicloud): the network contract
(tests/contract/network_contract.py) through ``OpenStackNetwork``, and what building an
in-guest cluster asks of Nova and Neutron together - servers booted through
``OpenStackCompute.create_server`` on ports made beforehand, in an anti-affinity server
group, each port ACTIVE with its server as device, and everything deleted again.

The minicloud's Neutron runs ML2 with a mechanism driver that binds every port
(tools/minicloud/minicloud_ml2.py) on the shared flat network ``private``.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from contract.network_contract import NetworkContract
from support import wait_until

from vigil.drivers.errors import Conflict, NotFound, PermanentError
from vigil.drivers.network import PORT_ACTIVE, Port, Rule
from vigil.drivers.neutron import OpenStackNetwork, build_openstack_network
from vigil.drivers.openstack import OpenStackCompute

from .cloud import CLOUDS_YAML, COMPUTES, IMAGE, Minicloud

pytestmark = [pytest.mark.nova, pytest.mark.neutron]

NETWORK = "private"  # made by minicloud start: 10.20.0.0/24, shared, the admin's


class TestNeutronNetwork(NetworkContract):
    @pytest.fixture
    def network_driver(self, minicloud: Minicloud) -> OpenStackNetwork:
        return OpenStackNetwork(minicloud.conn)

    @pytest.fixture
    def network_name(self) -> str:
        return NETWORK


# --------------------------------------------------------------------------- the driver


def _neutron(cloud: Minicloud, path: str) -> Any:
    response = cloud.conn.network.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def test_start_up_check_reads_the_extensions(minicloud: Minicloud) -> None:
    assert "extensions" in build_openstack_network("minicloud").check()


def test_wrong_credentials_are_refused_without_the_secret(
    minicloud: Minicloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = CLOUDS_YAML.read_text()
    line = next(x for x in text.splitlines() if "password:" in x)
    password = line.split(":", 1)[1].strip()
    wrong = f"not-{password}"
    bad = tmp_path / "clouds.yaml"
    bad.write_text(text.replace(f"password: {password}", f"password: {wrong}"))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(bad))
    with pytest.raises(PermanentError) as caught:
        build_openstack_network("minicloud")
    assert "credentials" in str(caught.value)
    assert wrong not in str(caught.value) and password not in str(caught.value)


def test_a_conflict_names_the_call_and_carries_neutron_s_sentence(
    minicloud: Minicloud,
) -> None:
    network = OpenStackNetwork(minicloud.conn)
    net = network.get_network(NETWORK)
    name = f"vigil-nova-{uuid.uuid4().hex[:8]}"
    port = network.create_port(name=name, network_id=net.id)
    try:
        with pytest.raises(Conflict) as caught:
            network.create_port(name=name, network_id=net.id, fixed_ip=port.fixed_ips[0])
        message = str(caught.value)
        assert message.startswith("Neutron POST /ports: 409: IpAddressAlreadyAllocated")
        assert f"IP address {port.fixed_ips[0]} already allocated" in message
        token = minicloud.conn.session.get_token()
        assert token and token not in message
        with pytest.raises(PermanentError, match=r"Invalid input|not a valid"):
            network.create_port(name=name, network_id="not-a-uuid")
    finally:
        network.delete_port(port.id)


def test_the_rule_is_what_neutron_keeps(minicloud: Minicloud) -> None:
    network = OpenStackNetwork(minicloud.conn)
    group = network.create_security_group(f"vigil-nova-{uuid.uuid4().hex[:8]}", "corosync")
    try:
        rule = Rule("udp", 5405, 5405, group)
        network.add_rule(group, rule)
        network.add_rule(group, rule)  # a lost answer retried: Neutron has it already
        rules = _neutron(minicloud, f"/security-group-rules?security_group_id={group}")
        ingress = [r for r in rules["security_group_rules"] if r["direction"] == "ingress"]
        assert [
            (r["protocol"], r["port_range_min"], r["port_range_max"], r["remote_group_id"])
            for r in ingress
        ] == [("udp", 5405, 5405, group)]
    finally:
        network.delete_security_group(group)


# --------------------------------------------------------------------------- with Nova


@pytest.fixture
def cluster(minicloud: Minicloud) -> Iterator[tuple[OpenStackCompute, OpenStackNetwork, str]]:
    """The drivers and a name prefix; the hosts clean before and everything gone after."""
    minicloud.restore()
    compute, network = OpenStackCompute(minicloud.conn), OpenStackNetwork(minicloud.conn)
    prefix = f"vigil-cluster-{uuid.uuid4().hex[:8]}-"
    try:
        yield compute, network, prefix
    finally:
        minicloud.restore()  # every server deleted
        for port in network.list_ports(name_prefix=prefix):
            network.delete_port(port.id)
        body = minicloud.nova("GET", "/os-server-groups?all_projects=true")
        for group in body["server_groups"]:
            if group["name"].startswith(prefix):
                with contextlib.suppress(NotFound):
                    compute.delete_server_group(group["id"])


def _boot(
    cloud: Minicloud, compute: OpenStackCompute, ports: dict[str, Port], **kw: str
) -> dict[str, str]:
    """Boot one server per port (name -> port) and wait until all are ACTIVE; one that
    Nova found no host for is deleted and booted again (twice at most), as the tier's
    ``boot_many`` does: a compute that has just been restored may miss one report."""
    ids: dict[str, str] = {}

    def create(name: str) -> str:
        return compute.create_server(
            name=name,
            port_id=ports[name].id,
            metadata={"vigil:cluster": name.rsplit("-", 1)[0]},
            **kw,
        )

    for name in ports:
        ids[name] = create(name)
    for attempt in range(3):
        try:
            cloud.wait_active(list(ids.values()), 90)
            return ids
        except AssertionError as exc:
            if "No valid host" not in str(exc) or attempt == 2:
                raise
        for name, sid in ids.items():
            if cloud.server(sid)["status"] == "ERROR":
                compute.delete_server(sid)
                wait_until(lambda sid=sid: _gone(compute, sid), f"{sid} deleted", 60, every=0.2)
                ids[name] = create(name)
    return ids


def _active_on(server_id: str) -> Callable[[Port], bool]:
    return lambda p: p.status == PORT_ACTIVE and p.device_id == server_id


def _port_when(
    network: OpenStackNetwork, port: Port, what: str, ok: Callable[[Port], bool]
) -> Port:
    def check() -> Port | None:
        now = network.get_port(port.id)
        return now if ok(now) else None

    found: Port = wait_until(check, f"port {port.name} {what}", 30, every=0.2)
    return found


def _gone(compute: OpenStackCompute, server_id: str) -> bool:
    try:
        compute.get_server(server_id)
    except NotFound:
        return True
    return False


def test_servers_boot_on_their_ports_apart_and_go_away(
    minicloud: Minicloud, cluster: tuple[OpenStackCompute, OpenStackNetwork, str]
) -> None:
    compute, network, prefix = cluster
    net = network.get_network(NETWORK)
    group = compute.create_server_group(prefix + "group", "anti-affinity")
    ports = {prefix + n: network.create_port(name=prefix + n, network_id=net.id) for n in "ab"}
    user_data = "#cloud-config\nwrite_files:\n- path: /etc/corosync/corosync.conf\n"
    wait_until(
        lambda: all(s["state"] == "up" for s in minicloud.services().values()),
        "every compute up",
        60,
        every=0.2,
    )
    # The image and the flavor by name: what an operator writes in a cluster's spec.
    ids = _boot(
        minicloud,
        compute,
        ports,
        image="cirros",
        flavor="m1.tiny",
        user_data=user_data,
        server_group=group,
    )

    servers = {name: compute.get_server(sid) for name, sid in ids.items()}
    hosts = {s.host for s in servers.values()}
    assert len(hosts) == 2 and hosts <= set(COMPUTES), "anti-affinity: two hosts"
    for name, server in servers.items():
        assert server.server_group == group
        port = ports[name]
        bound = _port_when(network, port, f"ACTIVE on {server.id}", _active_on(server.id))
        assert bound.fixed_ips == port.fixed_ips
        nova = minicloud.server(server.id)
        assert [a["addr"] for a in nova["addresses"][NETWORK]] == list(port.fixed_ips)
        assert nova["image"]["id"] == IMAGE
        assert base64.b64decode(nova["OS-EXT-SRV-ATTR:user_data"]).decode() == user_data
        assert nova["metadata"] == {"vigil:cluster": prefix.rstrip("-")}

    for sid in ids.values():
        compute.delete_server(sid)
    for sid in ids.values():
        wait_until(lambda sid=sid: _gone(compute, sid), f"{sid} deleted", 60, every=0.2)
        with pytest.raises(NotFound):
            compute.delete_server(sid)
    for port in ports.values():  # made before the servers: Nova leaves them, unplugged
        left = _port_when(network, port, "unplugged", lambda p: p.device_id == "")
        assert left.status != PORT_ACTIVE
    compute.delete_server_group(group)
    with pytest.raises(NotFound):
        compute.delete_server_group(group)


def test_unknown_image_or_flavor_is_not_found(
    cluster: tuple[OpenStackCompute, OpenStackNetwork, str],
) -> None:
    compute, network, prefix = cluster
    port = network.create_port(name=prefix + "x", network_id=network.get_network(NETWORK).id)
    common = {"name": prefix + "x", "port_id": port.id, "user_data": "", "server_group": ""}
    with pytest.raises(NotFound, match="no image"):
        compute.create_server(image="no-such-image", flavor="1", metadata={}, **common)
    with pytest.raises(NotFound, match="no flavor"):
        compute.create_server(image=IMAGE, flavor="no-such-flavor", metadata={}, **common)
    with pytest.raises(NotFound):
        compute.delete_server(str(uuid.uuid4()))
    with pytest.raises(NotFound):
        compute.delete_server_group(str(uuid.uuid4()))
