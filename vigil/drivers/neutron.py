"""The network driver production uses: Neutron through openstacksdk.

``OpenStackNetwork`` implements ``vigil.drivers.network.NetworkDriver`` - what building an
in-guest cluster needs of Neutron: a network's subnets, ports with a fixed address made
before their VM exists, a VIP address allowed on every member's port, and a security
group that lets the members in from each other. Credentials come from ``clouds.yaml`` or
``OS_*`` variables, like every OpenStack tool (``build_openstack_network(cloud="mycloud")``);
calls go through the SDK's authenticated network adapter (Neutron's v2.0 REST API, found
in the service catalog), so what Neutron answers does not change with the SDK's release.

Errors are translated here, at the boundary, as ``vigil.drivers.openstack`` does for Nova:
connection failures, timeouts, 5xx and 429 -> ``TemporaryError``; 409 (an address already
taken, a security group still in use) -> ``Conflict``; 404 -> ``NotFound``; 401/403 and
other 4xx -> ``PermanentError``. Messages carry the method, the path, Neutron's error type
and its own sentence, never a password or a token.

Limits:

- Ports and security groups are made in the project of vigil's own credentials (the
  ``clouds.yaml`` cloud's), and ``list_ports`` looks only there. Neutron filters names
  exactly, not by prefix: ``list_ports`` lists that project's ports (in pages) and keeps
  those whose name starts with the prefix - fine for a service project, slow for a
  project with tens of thousands of ports.
- ``create_port`` without security groups leaves Neutron's default: the project's
  ``default`` group (which lets in what its members send, nothing from elsewhere).
- ``add_rule`` is idempotent: a rule Neutron already has (an earlier call whose answer
  was lost) counts as added. Rules are IPv4 only.
- Nothing here creates networks, subnets or routers: the operator names a network that
  exists (by id, or by a name unique among those vigil's project can see).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import openstack
import openstack.connection
import openstack.exceptions

from vigil.drivers.errors import (
    Conflict,
    NotFound,
    PermanentError,
    TemporaryError,
)
from vigil.drivers.network import Network, NetworkDriver, Port, Rule, Subnet
from vigil.drivers.sdk import LIBRARY_ERRORS, Boundary

LOG = logging.getLogger(__name__)

#: The Neutron API extensions vigil's in-guest clusters need (``check``).
REQUIRED_EXTENSIONS = ("security-group", "allowed-address-pairs")
_PAGE = 500  # ports per listing page


def _neutron_error(response: Any) -> tuple[str, str]:
    """Neutron's error type and sentence from an error body
    ({"NeutronError": {"type": ..., "message": ...}})."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("NeutronError")
        if isinstance(error, dict):
            return str(error.get("type") or ""), str(error.get("message") or "no message")
        for value in body.values():  # a 401/404 from a middleware: {"error": {"message"}}
            if isinstance(value, dict) and "message" in value:
                return "", str(value["message"])
        if "message" in body:
            return "", str(body["message"])
    text = str(getattr(response, "text", "") or "").strip()
    return "", text[:200] or "no message"


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class OpenStackNetwork(NetworkDriver):
    """``NetworkDriver`` on a real Neutron. ``conn`` is an ``openstack.connect()`` result.

    Thread-safe: it keeps no state but the (immutable) project id once read.
    """

    def __init__(self, conn: openstack.connection.Connection) -> None:
        self._conn = conn
        self._sdk = Boundary(conn, "network")
        self._project_id: str | None = None

    # ------------------------------------------------------------------ plumbing

    def _raise_for(self, response: Any, method: str, path: str) -> None:
        status = int(response.status_code)
        if status >= 400:
            kind, message = _neutron_error(response)
            self._sdk.raise_for(
                status, f"Neutron {method} {path}", f"{kind}: {message}" if kind else message
            )

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One Neutron API call (``path`` below /v2.0); the JSON answer or None."""
        try:
            response = self._conn.network.request(path, method, json=body)
        except LIBRARY_ERRORS as exc:
            raise self._sdk.translate(exc, f"Neutron {method} {path}") from None
        self._raise_for(response, method, path)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def _project(self) -> str:
        """The project of vigil's credentials: where its ports are made and listed."""
        if self._project_id is None:
            try:
                project = self._conn.current_project_id
            except LIBRARY_ERRORS as exc:
                raise self._sdk.translate(exc, "Neutron: the project of the credentials") from None
            if not project:
                raise PermanentError("the cloud's credentials are not scoped to a project")
            self._project_id = str(project)
        return self._project_id

    # ------------------------------------------------------------------ start-up

    def check(self) -> str:
        """Authenticate and read Neutron's extensions once: PermanentError when the
        credentials are refused or Neutron lacks what clusters need, TemporaryError when
        it is unreachable. Returns a one-line summary."""
        body = self._call("GET", "/extensions")
        aliases = {str(e.get("alias")) for e in body.get("extensions", [])}
        missing = [a for a in REQUIRED_EXTENSIONS if a not in aliases]
        if missing:
            raise PermanentError(
                f"Neutron lacks the API extension(s) {', '.join(missing)}: "
                "in-guest clusters need security groups and allowed address pairs"
            )
        return f"Neutron API with {len(aliases)} extensions"

    # ------------------------------------------------------------------ networks

    def get_network(self, name_or_id: str) -> Network:
        data: Mapping[str, Any] | None = None
        if _is_uuid(name_or_id):
            try:
                data = self._call("GET", f"/networks/{quote(name_or_id)}")["network"]
            except NotFound:
                data = None
        if data is None:
            query = urlencode({"name": name_or_id})
            found = self._call("GET", f"/networks?{query}")["networks"]
            if not found:
                raise NotFound(f"Neutron has no network {name_or_id!r} (by id or name)")
            if len(found) > 1:
                raise PermanentError(
                    f"{len(found)} Neutron networks are named {name_or_id!r}: name it by id"
                )
            data = found[0]
        network_id = str(data["id"])
        query = urlencode({"network_id": network_id})
        subnets = self._call("GET", f"/subnets?{query}")["subnets"]
        return Network(
            id=network_id,
            name=str(data.get("name") or ""),
            subnets=tuple(
                Subnet(
                    id=str(s["id"]),
                    cidr=str(s["cidr"]),
                    gateway_ip=s.get("gateway_ip") or None,
                    ip_version=int(s.get("ip_version") or 4),
                )
                for s in subnets
            ),
        )

    # ------------------------------------------------------------------ security groups

    def create_security_group(self, name: str, description: str) -> str:
        body = {"security_group": {"name": name, "description": description}}
        return str(self._call("POST", "/security-groups", body)["security_group"]["id"])

    def add_rule(self, group_id: str, rule: Rule) -> None:
        body = {
            "security_group_rule": {
                "security_group_id": group_id,
                "direction": "ingress",
                "ethertype": "IPv4",
                "protocol": rule.protocol,
                "port_range_min": rule.port_min,
                "port_range_max": rule.port_max,
                "remote_group_id": rule.remote_group_id,
            }
        }
        try:
            self._call("POST", "/security-group-rules", body)
        except Conflict as exc:
            if "SecurityGroupRuleExists" not in str(exc):
                raise
            LOG.debug("security group %s has the rule already: %s", group_id, exc)

    def delete_security_group(self, group_id: str) -> None:
        self._call("DELETE", f"/security-groups/{quote(group_id)}")

    # ------------------------------------------------------------------ ports

    @staticmethod
    def _port(data: Mapping[str, Any], first: str | None = None) -> Port:
        addresses = [str(ip["ip_address"]) for ip in data.get("fixed_ips") or []]
        if first in addresses:  # the address asked for comes first
            addresses.remove(first)
            addresses.insert(0, first)
        pairs = data.get("allowed_address_pairs") or []
        return Port(
            id=str(data["id"]),
            name=str(data.get("name") or ""),
            network_id=str(data["network_id"]),
            fixed_ips=tuple(addresses),
            status=str(data.get("status") or ""),
            device_id=str(data.get("device_id") or ""),
            allowed_address_pairs=tuple(str(p["ip_address"]) for p in pairs),
            security_groups=tuple(str(g) for g in data.get("security_groups") or []),
        )

    def create_port(
        self,
        *,
        name: str,
        network_id: str,
        fixed_ip: str | None = None,
        security_groups: tuple[str, ...] = (),
        allowed_address_pairs: tuple[str, ...] = (),
    ) -> Port:
        port: dict[str, Any] = {"name": name, "network_id": network_id}
        if fixed_ip is not None:
            port["fixed_ips"] = [{"ip_address": fixed_ip}]
        if security_groups:
            port["security_groups"] = list(security_groups)
        if allowed_address_pairs:
            port["allowed_address_pairs"] = [{"ip_address": a} for a in allowed_address_pairs]
        return self._port(self._call("POST", "/ports", {"port": port})["port"], fixed_ip)

    def get_port(self, port_id: str) -> Port:
        return self._port(self._call("GET", f"/ports/{quote(port_id)}")["port"])

    def list_ports(self, *, name_prefix: str) -> list[Port]:
        ports: list[Port] = []
        marker: str | None = None
        while True:
            query: dict[str, Any] = {"project_id": self._project(), "limit": _PAGE}
            if marker:
                query["marker"] = marker
            page = self._call("GET", "/ports?" + urlencode(query))["ports"]
            ports.extend(
                self._port(p) for p in page if str(p.get("name") or "").startswith(name_prefix)
            )
            if len(page) < _PAGE:
                return ports
            marker = str(page[-1]["id"])

    def ports_of(self, device_id: str) -> list[Port]:
        page = self._call("GET", "/ports?" + urlencode({"device_id": device_id}))["ports"]
        return sorted((self._port(p) for p in page), key=lambda p: p.id)

    def delete_port(self, port_id: str) -> None:
        self._call("DELETE", f"/ports/{quote(port_id)}")


def build_openstack_network(
    cloud: str | None = None,
    *,
    timeout: float = 60.0,
    check: bool = True,
) -> OpenStackNetwork:
    """Connect to the cloud named ``cloud`` in clouds.yaml (or the ``OS_*`` variables when
    None) and check the credentials and Neutron's extensions once.

    Raises PermanentError with a sentence to act on when the cloud is unknown, the
    credentials are refused or Neutron lacks an extension: the server should refuse to
    start. A cloud merely unreachable now is logged and not fatal: the engine retries.
    """
    try:
        # Retries are the engine's business: the library must not resend a POST itself
        # (a port created twice holds two addresses).
        conn = openstack.connect(
            cloud=cloud, api_timeout=timeout, connect_retries=0, status_code_retries=0
        )
    except LIBRARY_ERRORS as exc:
        name = cloud or "from OS_* variables"
        raise PermanentError(f"OpenStack cloud {name}: {type(exc).__name__}: {exc}") from None
    network = OpenStackNetwork(conn)
    if check:
        try:
            LOG.info("OpenStack cloud %s: %s", cloud or "(OS_* variables)", network.check())
        except TemporaryError as exc:
            LOG.warning("Neutron not reachable at start-up (will retry): %s", exc)
    return network
