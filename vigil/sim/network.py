"""A simulated Neutron: networks with one IPv4 subnet, ports with fixed addresses, security
groups — what an in-guest cluster needs (``vigil.drivers.network``), for the demo and the
fast tests. A port is DOWN until an instance is plugged into it (``plug``), then ACTIVE,
as Neutron shows a port once the VM's interface is bound. It passes the same contract as
the real driver (``tests/contract/network_contract.py``).
"""

from __future__ import annotations

import ipaddress
import threading
import uuid
from dataclasses import replace

from vigil.drivers.errors import Conflict, NotFound
from vigil.drivers.network import PORT_ACTIVE, Network, NetworkDriver, Port, Rule, Subnet


class SimNetwork(NetworkDriver):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._networks: dict[str, Network] = {}
        self._ports: dict[str, Port] = {}
        self._groups: dict[str, tuple[str, list[Rule]]] = {}

    def add_network(self, name: str, cidr: str) -> Network:
        """A network with one subnet; its gateway takes the first address."""
        net = ipaddress.ip_network(cidr)
        subnet = Subnet(str(uuid.uuid4()), str(net), str(net.network_address + 1), net.version)
        network = Network(str(uuid.uuid4()), name, (subnet,))
        with self._lock:
            self._networks[network.id] = network
        return network

    def plug(self, port_id: str, device_id: str) -> None:
        """An instance booted on the port: bound, ACTIVE."""
        with self._lock:
            port = self._port(port_id)
            self._ports[port_id] = replace(port, device_id=device_id, status=PORT_ACTIVE)

    def rules(self, group_id: str) -> list[Rule]:
        with self._lock:
            return list(self._group(group_id)[1])

    def get_network(self, name_or_id: str) -> Network:
        with self._lock:
            if name_or_id in self._networks:
                return self._networks[name_or_id]
            named = [n for n in self._networks.values() if n.name == name_or_id]
        if len(named) != 1:
            raise NotFound(
                f"network {name_or_id!r} not found"
                if not named
                else f"network name {name_or_id!r} is not unique: give its id"
            )
        return named[0]

    def create_security_group(self, name: str, description: str) -> str:
        gid = str(uuid.uuid4())
        with self._lock:
            self._groups[gid] = (name, [])
        return gid

    def add_rule(self, group_id: str, rule: Rule) -> None:
        with self._lock:
            rules = self._group(group_id)[1]
            if rule in rules:
                raise Conflict(f"security group {group_id} has that rule already")
            rules.append(rule)

    def delete_security_group(self, group_id: str) -> None:
        with self._lock:
            self._group(group_id)
            if any(group_id in p.security_groups for p in self._ports.values()):
                raise Conflict(f"security group {group_id} is in use")
            del self._groups[group_id]

    def create_port(
        self,
        *,
        name: str,
        network_id: str,
        fixed_ip: str | None = None,
        security_groups: tuple[str, ...] = (),
        allowed_address_pairs: tuple[str, ...] = (),
    ) -> Port:
        with self._lock:
            network = self._networks.get(network_id)
            if network is None:
                raise NotFound(f"network {network_id} not found")
            for group in security_groups:
                self._group(group)
            subnet = ipaddress.ip_network(network.subnets[0].cidr)
            taken = {a for p in self._ports.values() for a in p.fixed_ips}
            taken.add(network.subnets[0].gateway_ip or "")
            if fixed_ip is not None:
                if ipaddress.ip_address(fixed_ip) not in subnet:
                    raise Conflict(f"{fixed_ip} is not in subnet {subnet}")
                if fixed_ip in taken:
                    raise Conflict(f"IP address {fixed_ip} already allocated in subnet {subnet}")
                address = fixed_ip
            else:
                # as Neutron's default allocation pool: from .2, skipping the taken ones
                free = (str(a) for a in subnet.hosts() if str(a) not in taken)
                address = next(free, "")
                if not address:
                    raise Conflict(f"no more IP addresses available on network {network_id}")
            port = Port(
                id=str(uuid.uuid4()),
                name=name,
                network_id=network_id,
                fixed_ips=(address,),
                status="DOWN",
                allowed_address_pairs=tuple(allowed_address_pairs),
                security_groups=tuple(security_groups),
            )
            self._ports[port.id] = port
            return port

    def get_port(self, port_id: str) -> Port:
        with self._lock:
            return self._port(port_id)

    def list_ports(self, *, name_prefix: str) -> list[Port]:
        with self._lock:
            return sorted(
                (p for p in self._ports.values() if p.name.startswith(name_prefix)),
                key=lambda p: p.name,
            )

    def ports_of(self, device_id: str) -> list[Port]:
        with self._lock:
            return sorted(
                (p for p in self._ports.values() if device_id and p.device_id == device_id),
                key=lambda p: p.id,
            )

    def delete_port(self, port_id: str) -> None:
        with self._lock:
            self._port(port_id)
            del self._ports[port_id]

    def _port(self, port_id: str) -> Port:
        port = self._ports.get(port_id)
        if port is None:
            raise NotFound(f"port {port_id} not found")
        return port

    def _group(self, group_id: str) -> tuple[str, list[Rule]]:
        group = self._groups.get(group_id)
        if group is None:
            raise NotFound(f"security group {group_id} not found")
        return group
