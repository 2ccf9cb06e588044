"""The network contract: what every NetworkDriver must do for vigil's in-guest clusters.

Reuse: subclass ``NetworkContract`` in a test module and define two fixtures:
``network_driver`` (the ``NetworkDriver`` under test) and ``network_name`` (the name of
a network it has, with an IPv4 subnet that has room for a dozen more ports). Every
``test_*`` here then runs against that implementation (a real Neutron through
``vigil.drivers.neutron``, the simulated one of ``vigil.sim.network``). Tests name what
they make with a prefix of their own and delete it afterwards through the driver, so
they need no clean world, only that network.

What the contract holds a driver to:

- a network is found by name and by id, with its subnets; an unknown one is NotFound;
- a port gets the address asked for, or one of the subnet's; an address already taken is
  ``Conflict`` (which the engine may retry, e.g. once a crashed creation's port is gone);
- a port carries the security groups and the allowed address pairs it was made with; a
  new port is not ACTIVE and belongs to no instance;
- ``list_ports`` finds ports by name prefix and nothing else;
- deleting a port or a security group that is gone is NotFound;
- a security group takes an ingress rule whose source is the group itself (corosync's
  UDP 5405 between the members).
"""

from __future__ import annotations

import contextlib
import ipaddress
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from vigil.drivers.errors import Conflict, NotFound
from vigil.drivers.network import PORT_ACTIVE, Network, NetworkDriver, Port, Rule


@dataclass
class Made:
    """What one test made, deleted after it (whatever it deleted itself)."""

    driver: NetworkDriver
    prefix: str = field(default_factory=lambda: f"vigil-contract-{uuid.uuid4().hex[:8]}-")
    ports: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def port(
        self,
        suffix: str,
        network: Network,
        *,
        fixed_ip: str | None = None,
        security_groups: tuple[str, ...] = (),
        allowed_address_pairs: tuple[str, ...] = (),
    ) -> Port:
        port = self.driver.create_port(
            name=self.prefix + suffix,
            network_id=network.id,
            fixed_ip=fixed_ip,
            security_groups=security_groups,
            allowed_address_pairs=allowed_address_pairs,
        )
        self.ports.append(port.id)
        return port

    def group(self, suffix: str) -> str:
        group = self.driver.create_security_group(self.prefix + suffix, "vigil network contract")
        self.groups.append(group)
        return group

    def clean(self) -> None:
        for port_id in self.ports:
            with contextlib.suppress(NotFound):
                self.driver.delete_port(port_id)
        for group_id in self.groups:  # after the ports that use them
            with contextlib.suppress(NotFound):
                self.driver.delete_security_group(group_id)


def _in_subnet(address: str, network: Network) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(s.cidr) for s in network.subnets)


class NetworkContract:
    # ---------------------------------------------------------------------- fixtures

    @pytest.fixture
    def made(self, network_driver: NetworkDriver) -> Iterator[Made]:
        made = Made(network_driver)
        try:
            yield made
        finally:
            made.clean()

    @pytest.fixture
    def network(self, network_driver: NetworkDriver, network_name: str) -> Network:
        return network_driver.get_network(network_name)

    def _free_address(self, made: Made, network: Network) -> str:
        """An address of the subnet nobody holds: one the driver picked, then freed."""
        port = made.port("probe", network)
        made.driver.delete_port(port.id)
        return port.fixed_ips[0]

    # ---------------------------------------------------------------------- networks

    def test_network_by_name_and_by_id(
        self, network_driver: NetworkDriver, network_name: str
    ) -> None:
        network = network_driver.get_network(network_name)
        assert network.name == network_name
        assert network.id and network.id != network_name
        assert network.subnets, "the contract's network needs a subnet"
        v4 = [s for s in network.subnets if s.ip_version == 4]
        assert v4, "the contract's network needs an IPv4 subnet"
        for subnet in v4:
            cidr = ipaddress.ip_network(subnet.cidr)
            assert cidr.version == 4
            if subnet.gateway_ip is not None:
                assert ipaddress.ip_address(subnet.gateway_ip) in cidr
        assert network_driver.get_network(network.id) == network

    def test_unknown_network_is_not_found(self, network_driver: NetworkDriver) -> None:
        with pytest.raises(NotFound):
            network_driver.get_network(f"no-such-network-{uuid.uuid4().hex[:8]}")
        with pytest.raises(NotFound):
            network_driver.get_network(str(uuid.uuid4()))

    # ---------------------------------------------------------------------- ports

    def test_port_without_an_address_gets_one_of_the_subnet(
        self, made: Made, network: Network
    ) -> None:
        port = made.port("any", network)
        assert port.name == made.prefix + "any"
        assert port.network_id == network.id
        assert port.fixed_ips and _in_subnet(port.fixed_ips[0], network)
        assert port.status != PORT_ACTIVE, "no instance is plugged into a new port"
        assert port.device_id == ""
        assert port.allowed_address_pairs == ()
        assert made.driver.get_port(port.id) == port

    def test_port_gets_the_address_asked_for(self, made: Made, network: Network) -> None:
        address = self._free_address(made, network)
        port = made.port("fixed", network, fixed_ip=address)
        assert port.fixed_ips[0] == address
        assert made.driver.get_port(port.id).fixed_ips[0] == address

    def test_taken_address_is_a_conflict(self, made: Made, network: Network) -> None:
        taken = made.port("first", network).fixed_ips[0]
        with pytest.raises(Conflict):
            made.port("second", network, fixed_ip=taken)
        assert [p.name for p in made.driver.list_ports(name_prefix=made.prefix)] == [
            made.prefix + "first"
        ], "the refused port must not exist"

    def test_port_carries_allowed_address_pairs_and_security_groups(
        self, made: Made, network: Network
    ) -> None:
        group = made.group("members")
        vip = made.port("vip", network).fixed_ips[0]
        member = made.port(
            "member", network, security_groups=(group,), allowed_address_pairs=(vip,)
        )
        assert member.allowed_address_pairs == (vip,)
        assert member.security_groups == (group,)
        again = made.driver.get_port(member.id)
        assert again.allowed_address_pairs == (vip,)
        assert again.security_groups == (group,)
        assert vip not in again.fixed_ips

    def test_list_ports_by_name_prefix(self, made: Made, network: Network) -> None:
        a = made.port("node-a", network)
        b = made.port("node-b", network)
        made.port("vip", network)
        other = Made(made.driver)  # another cluster's port, of another prefix
        try:
            other.port("node-a", network)
            found = made.driver.list_ports(name_prefix=made.prefix + "node-")
            assert sorted(p.id for p in found) == sorted([a.id, b.id])
            assert {p.id: p for p in found}[a.id] == made.driver.get_port(a.id)
            assert len(made.driver.list_ports(name_prefix=made.prefix)) == 3
            assert made.driver.list_ports(name_prefix=made.prefix + "nothing-") == []
        finally:
            other.clean()

    def test_ports_of_an_instance_with_none_are_none(self, made: Made, network: Network) -> None:
        made.port("unplugged", network)  # a port plugged into nothing is nobody's
        assert made.driver.ports_of(str(uuid.uuid4())) == []

    def test_deleted_port_is_not_found(self, made: Made, network: Network) -> None:
        port = made.port("gone", network)
        made.driver.delete_port(port.id)
        with pytest.raises(NotFound):
            made.driver.get_port(port.id)
        with pytest.raises(NotFound):
            made.driver.delete_port(port.id)
        assert made.driver.list_ports(name_prefix=made.prefix) == []
        with pytest.raises(NotFound):
            made.driver.get_port(str(uuid.uuid4()))

    def test_freed_address_can_be_taken_again(self, made: Made, network: Network) -> None:
        address = self._free_address(made, network)
        first = made.port("first", network, fixed_ip=address)
        made.driver.delete_port(first.id)
        assert made.port("again", network, fixed_ip=address).fixed_ips[0] == address

    # ---------------------------------------------------------------------- security groups

    def test_security_group_with_a_rule_from_itself(self, made: Made, network: Network) -> None:
        group = made.group("corosync")
        rule = Rule(protocol="udp", port_min=5405, port_max=5405, remote_group_id=group)
        made.driver.add_rule(group, rule)
        made.driver.add_rule(group, Rule("tcp", 2224, 2224, group))  # pcsd
        port = made.port("node", network, security_groups=(group,))
        assert port.security_groups == (group,)

    def test_deleted_security_group_is_not_found(self, made: Made) -> None:
        group = made.group("gone")
        made.driver.delete_security_group(group)
        with pytest.raises(NotFound):
            made.driver.delete_security_group(group)
