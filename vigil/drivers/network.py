"""The network interface: what vigil needs from Neutron to build an in-guest cluster.

An in-guest cluster (``vigil.engine.clusters``) needs every member's address before any
member exists, so that corosync's node list can go into each VM's user data at boot:
Neutron gives that — a port created on a network gets its fixed IP at once, and a VM
booted on that port gets that address. The rest is what a Pacemaker cluster inside VMs
needs from the cloud: a port kept for the floating service address (the VIP) and
allowed on every member's port (Neutron's port security drops traffic from an address
the port does not own), and a security group that lets corosync and pcsd in only from
the other members.

Implementations: ``vigil.drivers.neutron`` (Neutron through openstacksdk) and
``vigil.sim.network.SimNetwork`` (for the demo and fast tests); both pass the contract
of ``tests/contract/network_contract.py``. Statuses are Neutron's own (``ACTIVE``,
``DOWN``, ``BUILD``). Every method may raise a DriverError (``vigil.drivers.errors``):
TemporaryError for what may pass, NotFound, Conflict (an address already taken),
PermanentError for the rest.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

PORT_ACTIVE = "ACTIVE"  # Neutron's status of a bound port whose VM's interface is up


@dataclass(frozen=True)
class Subnet:
    id: str
    cidr: str  # "10.0.0.0/24"
    gateway_ip: str | None
    ip_version: int = 4


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    subnets: tuple[Subnet, ...]


@dataclass(frozen=True)
class Port:
    id: str
    name: str
    network_id: str
    fixed_ips: tuple[str, ...]  # the addresses Neutron gave it, first the one asked for
    status: str  # ACTIVE once bound to a booted VM's interface; DOWN before
    device_id: str = ""  # the instance it is plugged into ("" for none, e.g. a VIP's)
    allowed_address_pairs: tuple[str, ...] = ()  # addresses also allowed out of it
    security_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """An ingress rule: ``protocol`` (``udp``, ``tcp``) to ports ``port_min..port_max``,
    from members of the security group ``remote_group_id`` only."""

    protocol: str
    port_min: int
    port_max: int
    remote_group_id: str


class NetworkDriver(abc.ABC):
    """Neutron, as far as an in-guest cluster needs it."""

    @abc.abstractmethod
    def get_network(self, name_or_id: str) -> Network:
        """Raises NotFound for an unknown network (by id, then by unique name)."""

    @abc.abstractmethod
    def create_security_group(self, name: str, description: str) -> str:
        """A new security group (no ingress rules; Neutron's default egress); its id."""

    @abc.abstractmethod
    def add_rule(self, group_id: str, rule: Rule) -> None:
        """Add an ingress rule to the group."""

    @abc.abstractmethod
    def delete_security_group(self, group_id: str) -> None:
        """Delete it; NotFound when it is gone already."""

    @abc.abstractmethod
    def create_port(
        self,
        *,
        name: str,
        network_id: str,
        fixed_ip: str | None = None,
        security_groups: tuple[str, ...] = (),
        allowed_address_pairs: tuple[str, ...] = (),
    ) -> Port:
        """A new port on the network, with ``fixed_ip`` (Conflict when taken) or one
        Neutron picks; returned with its address."""

    @abc.abstractmethod
    def get_port(self, port_id: str) -> Port:
        """Raises NotFound for an unknown port."""

    @abc.abstractmethod
    def list_ports(self, *, name_prefix: str) -> list[Port]:
        """The ports whose name starts with ``name_prefix`` (a cluster's, to find what a
        crashed creation left behind)."""

    @abc.abstractmethod
    def ports_of(self, device_id: str) -> list[Port]:
        """The ports plugged into the instance ``device_id`` (any project's): an adopted
        cluster's members' (``vigil cluster adopt``)."""

    @abc.abstractmethod
    def delete_port(self, port_id: str) -> None:
        """Delete it; NotFound when it is gone already."""
