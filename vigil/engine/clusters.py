"""In-guest clusters: a Pacemaker cluster inside a set of VMs, built whole, fenced safely.

Building one (``Clusters.create``; ``vigil cluster create``): Neutron gives every address
before any VM exists, so all corosync needs goes into the VMs at boot —

1. a security group that lets corosync (knet, UDP 5405) and pcsd (TCP 2224) in only from
   the other members;
2. a port kept for the service address (the VIP), allowed on every member's port;
3. one port per member, its address fixed now;
4. an anti-affinity server group (Nova's scheduler puts each member on its own host);
5. each member booted on its port with cloud-init user data carrying the generated
   ``corosync.conf`` (the node list with the members' addresses), the authkey, a
   pre-written CIB (the VIP resource, the fence device), and the fence agent
   ``fence_vigil`` with the cluster's token.

Each resource is recorded as it is made (``vigil.store.ClusterStore``), so a crash of
vigil resumes where it stopped: the build is an operator request (``RequestKind``) run by
a worker of the requests reaction (``vigil.engine.requests``), never on a decision thread.

Fencing (``Clusters.fence``; the agent ``vigil/agent/fence_vigil.py``): what a member's
power is, decided by ``member_power`` — a pure rule of what vigil knows of the member's
host and what Nova says of the instance:

- a member on a host vigil has fenced, confirmed off: **off** (the only case in which a
  member whose hypervisor died is off: Nova's own stop never completes there);
- on a host that failed but is not fenced yet (or is suspect): not known — fence_vigil
  keeps asking, Pacemaker waits; never "off" on a guess;
- on a live host: Nova's view (SHUTOFF off, ACTIVE on); ``off`` powers it off through
  Nova (a request), confirmed by the next status.

The members' HA policy is the cluster's (``notify`` by default: the in-guest cluster
moves the service; the member is rebuilt or moved afterwards on request); vigil's
evacuation never puts two members on one host (``vigil.engine.steps``).

Nova's create is not idempotent: a member Nova made but vigil did not record before a
crash is found again in the cluster's server group by its name and cluster (metadata), and
taken, not made twice. Members are booted one at a time (``_placed``): booted together,
Nova would schedule them all before any has a host, blind to its own anti-affinity.

Limits: Nova's stop is graceful for ``shutdown_timeout`` (60 s) unless the image sets
``os_shutdown_timeout=0`` — doc/clusters.md says to set it; ``verify`` does not check it.

External clusters (``external``; doc/heat/vigil-cluster.yaml): a Heat stack makes the
resources from ``stack_parameters``; ``adopt`` takes the members from its server group;
``delete`` only forgets the cluster.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any
from xml.sax.saxutils import quoteattr

import yaml

from vigil.clock import Clock
from vigil.drivers import compute as nova
from vigil.drivers.compute import CLUSTER_KEY, ComputeDriver, Server
from vigil.drivers.errors import Conflict, NotFound, PermanentError
from vigil.drivers.network import PORT_ACTIVE, NetworkDriver, Port, Rule
from vigil.engine.requests import OperatorRequests
from vigil.model import (
    Cluster,
    ClusterMember,
    ClusterStatus,
    Event,
    HaPolicy,
    Host,
    HostState,
    OperatorRequest,
    RecoveryStatus,
    RequestKind,
    StepKind,
    StepStatus,
)
from vigil.store import NotFoundError, Store

LOG = logging.getLogger("vigil.engine.clusters")

MAX_SIZE = 8  # corosync's and Red Hat's supported limit for a cluster of VMs
TOKEN_HEADER = "X-Vigil-Cluster-Token"
REPORT_MAX_AGE = 180.0  # seconds: three of fence_vigil's monitors missed
PEERS_TTL = 5.0  # seconds the members' table of ``Clusters.peers`` is kept
PLACE_WAIT = 120.0  # seconds a member may take to be scheduled before the next one boots
KNET_PORT = 5405
PCSD_PORT = 2224
# corosync's default totem token (ms), stated in corosync.conf so that what the
# failover benchmark measured is what runs
TOKEN_MS = 3000
FENCE_AGENT_PATH = "/usr/sbin/fence_vigil"
TOKEN_PATH = "/etc/vigil/fence_vigil.token"


# --- the generated configuration (pure) ------------------------------------------------


def corosync_conf(cluster: Cluster) -> str:
    """corosync 3's configuration: knet, encrypted with the authkey, the members by
    name and address; two_node for a pair (each alone keeps quorum, fencing decides)."""
    nodes = "".join(
        f"    node {{\n        ring0_addr: {m.address}\n        name: {m.name}\n"
        f"        nodeid: {i}\n    }}\n"
        for i, m in enumerate(cluster.members, start=1)
    )
    two_node = "    two_node: 1\n" if len(cluster.members) == 2 else ""
    return (
        f"# generated by vigil for cluster {cluster.name} ({cluster.id})\n"
        "totem {\n    version: 2\n"
        f"    cluster_name: {cluster.name}\n"
        "    transport: knet\n    crypto_cipher: aes256\n    crypto_hash: sha256\n"
        f"    token: {TOKEN_MS}\n}}\n"
        f"nodelist {{\n{nodes}}}\n"
        f"quorum {{\n    provider: corosync_votequorum\n{two_node}}}\n"
        "logging {\n    to_logfile: yes\n    logfile: /var/log/corosync/corosync.log\n"
        "    to_syslog: yes\n    timestamp: on\n}\n"
    )


def _nvpairs(owner: str, values: Mapping[str, str]) -> str:
    return "".join(
        f"<nvpair id={quoteattr(f'{owner}-{k}')} name={quoteattr(k)} value={quoteattr(v)}/>"
        for k, v in values.items()
    )


def cib_xml(cluster: Cluster, *, vigil_url: str, prefix_len: int) -> str:
    """The CIB every member starts with: fencing on, the fence device (fence_vigil for
    every member, ``off`` for Pacemaker's reboot), and the VIP if there is one."""
    fence = {
        "vigil_url": vigil_url,
        "cluster": cluster.id,
        "token_file": TOKEN_PATH,
        "pcmk_host_list": " ".join(m.name for m in cluster.members),
        "pcmk_reboot_action": "off",
        "power_timeout": "120",
        "pcmk_off_timeout": "150s",
    }
    resources_xml = (
        '<primitive id="fence-vigil" class="stonith" type="fence_vigil">'
        f'<instance_attributes id="fence-vigil-attrs">{_nvpairs("fence-vigil", fence)}'
        "</instance_attributes>"
        '<operations><op id="fence-vigil-monitor" name="monitor" interval="60s"/>'
        "</operations></primitive>"
    )
    if cluster.vip:
        vip = {"ip": cluster.vip, "cidr_netmask": str(prefix_len)}
        resources_xml += (
            '<primitive id="vip" class="ocf" provider="heartbeat" type="IPaddr2">'
            f'<instance_attributes id="vip-attrs">{_nvpairs("vip", vip)}</instance_attributes>'
            '<operations><op id="vip-monitor" name="monitor" interval="10s"/></operations>'
            "</primitive>"
        )
    options = {
        "stonith-enabled": "true",
        "cluster-name": cluster.name,
        # the default of 20 s is for clusters whose members boot one by one
        "dc-deadtime": "2s",
        "stonith-timeout": "160s",
    }
    return (
        '<cib crm_feature_set="3.0.0" validate-with="pacemaker-3.0" epoch="1" '
        'num_updates="0" admin_epoch="0"><configuration><crm_config>'
        '<cluster_property_set id="cib-bootstrap-options">'
        f"{_nvpairs('cib-bootstrap-options', options)}</cluster_property_set></crm_config>"
        f"<nodes/><resources>{resources_xml}</resources><constraints/></configuration>"
        "<status/></cib>\n"
    )


def fence_agent_source() -> str:
    return resources.files("vigil.agent").joinpath("fence_vigil.py").read_text()


def user_data(cluster: Cluster, *, vigil_url: str, token: str, prefix_len: int) -> str:
    """cloud-init user data of a member (all members get the same): the files, written
    once the packages are in (``defer``: ``hacluster`` exists only then), and the
    daemons started."""

    def entry(path: str, content: str, mode: str, owner: str = "root:root") -> dict[str, Any]:
        return {
            "path": path,
            "content": content,
            "permissions": mode,
            "owner": owner,
            "defer": True,
        }

    files = [
        entry("/etc/corosync/corosync.conf", corosync_conf(cluster), "0644"),
        {**entry("/etc/corosync/authkey", cluster.authkey, "0400"), "encoding": "b64"},
        entry(
            "/var/lib/pacemaker/cib/cib.xml",
            cib_xml(cluster, vigil_url=vigil_url, prefix_len=prefix_len),
            "0600",
            "hacluster:haclient",
        ),
        entry(FENCE_AGENT_PATH, fence_agent_source(), "0755"),
        entry(TOKEN_PATH, token + "\n", "0600"),
    ]
    document = {
        "packages": ["corosync", "pacemaker", "fence-agents", "resource-agents"],
        "write_files": files,
        "runcmd": [["systemctl", "enable", "--now", "corosync", "pacemaker"]],
    }
    return "#cloud-config\n" + str(yaml.safe_dump(document, sort_keys=False, width=1000))


def _natural(name: str) -> tuple[str, int]:
    """db-2 before db-10: corosync's node ids follow the members' order."""
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


# --- a member's power (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class MemberFacts:
    """What vigil knows of one member when asked for its power."""

    member: ClusterMember
    server: Server | None  # Nova's view; None: Nova does not know it (or was not asked)
    host: Host | None  # vigil's record of the server's host; None: not monitored by vigil
    fenced: str | None  # how the host was confirmed off in its current failure, if it was


@dataclass(frozen=True)
class Power:
    """``state``: "on", "off", or None (not known: the caller must not take it as off);
    ``may_act``: an off or on through Nova can be asked (the member's host is alive)."""

    state: str | None
    detail: str
    may_act: bool = False


def member_power(facts: MemberFacts) -> Power:
    m, server, host = facts.member, facts.server, facts.host
    if server is None:
        return Power(None, f"member {m.name}: Nova does not know its instance {m.instance_id!r}")
    where = f"member {m.name} (instance {server.id}) on host {server.host}"
    if host is not None and host.state in (HostState.FAILED, HostState.RECOVERED):
        if facts.fenced is not None:
            return Power("off", f"{where}: the host was fenced: {facts.fenced}")
        return Power(None, f"{where}: the host failed and is not fenced yet")
    if host is not None and host.state == HostState.SUSPECT:
        return Power(None, f"{where}: the host is suspect; not fenced")
    if server.status == nova.SHUTOFF and server.power_state != nova.POWER_RUNNING:
        return Power("off", f"{where}: Nova shows it SHUTOFF", may_act=True)
    if server.status == nova.ACTIVE:
        return Power("on", f"{where}: Nova shows it ACTIVE", may_act=True)
    task = f" ({server.task_state})" if server.task_state else ""
    return Power(None, f"{where}: Nova shows it {server.status}{task}")


# --- the service --------------------------------------------------------------------------


class BadToken(Exception):
    """A fence call without the cluster's token."""


class ClusterError(Exception):
    """A request about a cluster that cannot be done as asked (a 409 or 400)."""


@dataclass(frozen=True)
class FenceAnswer:
    status: int  # HTTP: 200 known, 202 asked of Nova, 409 not known yet
    body: dict[str, Any]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class Clusters:
    """Create, delete, verify and fence in-guest clusters. The API calls these; what
    waits on the cloud runs as operator requests on the engine's workers."""

    def __init__(
        self,
        *,
        store: Store,
        compute: ComputeDriver,
        network: NetworkDriver | None,
        requests: OperatorRequests,
        clock: Clock,
        key: bytes,
        vigil_url: str,
        wait: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store  # the API reads the clusters' records through it
        self._compute = compute
        self._network = network
        self._requests = requests
        self._clock = clock
        self._key = key
        self.vigil_url = vigil_url
        self._wait = wait
        self._sleep = sleep
        self._peers_lock = threading.Lock()
        self._peers: tuple[float, dict[str, tuple[str, ...]]] | None = None
        requests.register(RequestKind.BUILD_CLUSTER, self._build)
        requests.register(RequestKind.DELETE_CLUSTER, self._delete)
        requests.register(RequestKind.POWER_OFF_MEMBER, self._power_off)
        requests.register(RequestKind.POWER_ON_MEMBER, self._power_on)

    def peers(self, instance_id: str) -> tuple[str, ...]:
        """The other members of the instance's cluster (none: in no cluster). Read from
        the store at most every PEERS_TTL seconds: an evacuation of a rack's thousands of
        instances asks once each."""
        now = self._clock.monotonic()
        with self._peers_lock:
            if self._peers is None or now - self._peers[0] > PEERS_TTL:
                table: dict[str, tuple[str, ...]] = {}
                for c in self.store.list_clusters():
                    ids = tuple(m.instance_id for m in c.members if m.instance_id)
                    for sid in ids:
                        table[sid] = tuple(p for p in ids if p != sid)
                self._peers = (now, table)
            return self._peers[1].get(instance_id, ())

    def user_data(self, cluster: Cluster) -> str:
        """The members' cloud-init user data, as they were booted with."""
        if cluster.status == ClusterStatus.WAITING:
            raise ClusterError(
                f"cluster {cluster.name} is not adopted yet: its stack makes the files "
                "from its parameters (GET /v1/clusters/{id}/stack-parameters)"
            )
        if self._network is None:
            raise ClusterError("clusters need Neutron: set [network] driver")
        return user_data(
            cluster,
            vigil_url=self.vigil_url,
            token=self.token(cluster.id),
            prefix_len=self._prefix_len(cluster.network_id or cluster.network),
        )

    def _prefix_len(self, network: str) -> int:
        assert self._network is not None
        subnet = next(
            (s for s in self._network.get_network(network).subnets if s.ip_version == 4), None
        )
        if subnet is None:
            raise PermanentError(f"network {network} has no IPv4 subnet")
        return ipaddress.ip_network(subnet.cidr, strict=False).prefixlen

    def token(self, cluster_id: str) -> str:
        """The cluster's fencing token: good for this cluster's fence calls only."""
        return hmac.new(self._key, f"cluster:{cluster_id}".encode(), hashlib.sha256).hexdigest()

    # --- the API's calls -------------------------------------------------------------

    def create(
        self,
        *,
        name: str,
        project_id: str | None,
        size: int,
        image: str,
        flavor: str,
        network: str,
        vip: bool,
        policy: HaPolicy = HaPolicy.NOTIFY,
        external: bool = False,
    ) -> Cluster:
        """Record the cluster and build it (waiting up to the request wait: a cluster
        still building is returned BUILDING and goes on). ``external``: another tool (a
        Heat stack of doc/heat/) makes its resources with ``stack_parameters``; the
        cluster waits for ``adopt``."""
        if self._network is None:
            raise ClusterError("clusters need Neutron: set [network] driver")
        if not self.vigil_url:
            raise ClusterError(
                "clusters need the address their members reach vigil at: set [clusters] vigil_url"
            )
        if external:
            size, image, flavor, network, vip = 0, "", "", "", False  # the stack's
        else:
            for field, value in (("image", image), ("flavor", flavor), ("network", network)):
                if not value:
                    raise ValueError(f"{field}: required unless the cluster is external")
            if not 2 <= size <= MAX_SIZE:
                raise ValueError(f"size: a cluster has 2 to {MAX_SIZE} members, not {size}")
        now = self._clock.wall()
        cluster = Cluster(
            id=str(uuid.uuid4()),
            name=name,
            project_id=project_id,
            status=ClusterStatus.WAITING if external else ClusterStatus.BUILDING,
            external=external,
            size=size,
            image=image,
            flavor=flavor,
            network=network,
            policy=policy,
            want_vip=vip,
            authkey=base64.b64encode(secrets.token_bytes(256)).decode(),
            created_at=now,
            updated_at=now,
        )
        self.store.add_cluster(cluster)
        if external:
            LOG.info("cluster %s (%s): recorded; its stack makes the members", name, cluster.id)
            return cluster
        LOG.info("cluster %s (%s): %d members requested", name, cluster.id, size)
        request = self._requests.submit(
            RequestKind.BUILD_CLUSTER, cluster.id, host=None, reason=f"cluster {name} created"
        )
        self._settle(request)
        return self.store.get_cluster(cluster.id)

    def stack_parameters(self, cluster: Cluster) -> dict[str, str]:
        """What a Heat stack of doc/heat/vigil-cluster.yaml takes from vigil: the
        cluster's identity, its secrets and the fence agent (the stack makes the same
        files as ``user_data``, over the addresses of the ports it creates)."""
        if not cluster.external:
            raise ClusterError(
                f"cluster {cluster.name} is built by vigil: its members' user data is "
                "GET /v1/clusters/{id}/user-data"
            )
        return {
            "cluster_id": cluster.id,
            "cluster_name": cluster.name,
            "vigil_url": self.vigil_url,
            "cluster_token": self.token(cluster.id),
            "authkey": cluster.authkey,
            "fence_agent": fence_agent_source(),
            "policy": cluster.policy.value,
        }

    def adopt(self, cluster_id: str, server_group: str) -> Cluster:
        """Take the members of an external cluster from its server group: each instance
        (its metadata naming this cluster), its one port and address; the VIP allowed
        on every member's port. Its resources stay its stack's."""
        c = self.store.get_cluster(cluster_id)
        if not c.external:
            raise ClusterError(f"cluster {c.name} is built by vigil: nothing to adopt")
        if c.status != ClusterStatus.WAITING:
            raise ClusterError(f"cluster {c.name} is {c.status.value}: adopted already")
        if self._network is None:
            raise ClusterError("clusters need Neutron: set [network] driver")
        ids = self._compute.server_group_members(server_group)
        if not 2 <= len(ids) <= MAX_SIZE:
            raise ClusterError(
                f"server group {server_group} has {len(ids)} instances; "
                f"a cluster has 2 to {MAX_SIZE} members"
            )
        found: list[tuple[ClusterMember, Port]] = []
        for sid in ids:
            server = self._compute.get_server(sid)
            if server.cluster != c.id:
                raise ClusterError(
                    f"instance {sid} ({server.name}) of server group {server_group} is not "
                    f"a member of cluster {c.name}: its metadata {CLUSTER_KEY} is "
                    f"{server.cluster or 'not set'}, not {c.id}"
                )
            ports = [p for p in self._network.ports_of(sid) if p.fixed_ips]
            if len(ports) != 1:
                raise ClusterError(
                    f"instance {sid} ({server.name}) has {len(ports)} ports with an "
                    "address; a member has one"
                )
            port = ports[0]
            found.append((ClusterMember(server.name, port.fixed_ips[0], port.id, sid), port))
        found.sort(key=lambda mp: _natural(mp[0].name))
        names = [m.name for m, _ in found]
        if len(set(names)) != len(names):
            raise ClusterError(f"members must have distinct names (corosync's): {names}")
        networks = {p.network_id for _, p in found}
        if len(networks) != 1:
            raise ClusterError(f"the members are on {len(networks)} networks; one is needed")
        shared = set.intersection(*(set(p.allowed_address_pairs) for _, p in found))
        if len(shared) > 1:
            raise ClusterError(f"the members' ports allow {len(shared)} shared addresses: one VIP")
        first = found[0][1]
        adopted = self.store.update_cluster(
            c.id,
            at=self._clock.wall(),
            status=ClusterStatus.ACTIVE,
            detail=f"adopted from server group {server_group}",
            size=len(found),
            network=first.network_id,
            network_id=first.network_id,
            want_vip=bool(shared),
            vip=next(iter(shared), ""),
            server_group_id=server_group,
            security_group_id=first.security_groups[0] if first.security_groups else "",
            members=tuple(m for m, _ in found),
        )
        LOG.info(
            "cluster %s (%s): adopted %d members of server group %s: %s",
            c.name,
            c.id,
            len(found),
            server_group,
            ", ".join(f"{m.name} ({m.instance_id}) at {m.address}" for m in adopted.members),
        )
        return adopted

    def delete(self, cluster_id: str) -> None:
        cluster = self.store.get_cluster(cluster_id)
        if cluster.status != ClusterStatus.DELETING:
            self.store.update_cluster(
                cluster_id, at=self._clock.wall(), status=ClusterStatus.DELETING, detail=""
            )
        request = self._requests.submit(
            RequestKind.DELETE_CLUSTER, cluster_id, host=None, reason=f"cluster {cluster.name}"
        )
        self._requests.outcome(request.id, self._wait)

    def _settle(self, request: OperatorRequest) -> None:
        """Wait for the request, bounded; its failure is in the cluster's record."""
        try:
            self._requests.outcome(request.id, self._wait)
        except Exception as exc:
            LOG.debug("request %d: %s", request.id, exc)

    def verify(self, cluster_id: str) -> list[Check]:
        """What an operator checks after a build: every member ACTIVE on a host of its
        own, every port ACTIVE (Neutron bound it to the VM), the image's stop immediate."""
        cluster = self.store.get_cluster(cluster_id)
        checks = [Check("built", cluster.status == ClusterStatus.ACTIVE, cluster.status.value)]
        servers: dict[str, Server | None] = {}
        for m in cluster.members:
            try:
                servers[m.name] = self._compute.get_server(m.instance_id) if m.instance_id else None
            except NotFound:
                servers[m.name] = None
        missing = [n for n, s in servers.items() if s is None]
        checks.append(
            Check(
                "instances ACTIVE",
                not missing
                and all(s is not None and s.status == nova.ACTIVE for s in servers.values()),
                ", ".join(
                    f"{n}: {'missing' if s is None else s.status}" for n, s in servers.items()
                ),
            )
        )
        hosts = [s.host for s in servers.values() if s is not None]
        checks.append(
            Check(
                "members on distinct hosts",
                len(hosts) == cluster.size and None not in hosts and len(set(hosts)) == len(hosts),
                ", ".join(f"{n}: {s.host if s else '-'}" for n, s in servers.items()),
            )
        )
        checks.append(self._reported(cluster))
        if self._network is not None:
            states = []
            for m in cluster.members:
                try:
                    states.append((m.name, self._network.get_port(m.port_id).status))
                except NotFound:
                    states.append((m.name, "missing"))
            checks.append(
                Check(
                    "ports ACTIVE",
                    bool(states) and all(s == PORT_ACTIVE for _, s in states),
                    ", ".join(f"{n}: {s}" for n, s in states),
                )
            )
        return checks

    def _reported(self, cluster: Cluster) -> Check:
        """What the members last said through fence_vigil's monitor: quorum, and every
        member online."""
        name = "members report quorum, all online"
        report = cluster.report
        if not report:
            return Check(name, False, "no report yet (fence_vigil's monitor, every minute)")
        age = self._clock.wall() - float(report.get("at", 0.0))
        online = sorted(str(n) for n in report.get("online") or [])
        missing = sorted({m.name for m in cluster.members} - set(online))
        detail = (
            f"{'quorate' if report.get('quorate') else 'NOT quorate'}, online: "
            f"{', '.join(online) or '-'}{'; offline: ' + ', '.join(missing) if missing else ''}"
            f" (said {age:.0f}s ago by {report.get('by') or '?'})"
        )
        fresh = age <= REPORT_MAX_AGE
        if not fresh:
            detail += f": older than {REPORT_MAX_AGE:.0f}s"
        return Check(name, fresh and bool(report.get("quorate")) and not missing, detail)

    def fence(
        self,
        cluster_id: str,
        token: str | None,
        action: str,
        member: str | None,
        report: Mapping[str, Any] | None = None,
    ) -> FenceAnswer:
        """The fence agent's call (see the module docstring)."""
        if not token or not hmac.compare_digest(self.token(cluster_id), token):
            raise BadToken("wrong or missing cluster token")
        cluster = self.store.get_cluster(cluster_id)  # NotFoundError: 404
        if action == "monitor":
            return FenceAnswer(200, {"detail": f"cluster {cluster.name}: vigil answers"})
        if action == "list":
            if report is not None:  # fence_vigil's monitor: the members' own view
                self.store.update_cluster(
                    cluster.id, at=self._clock.wall(), report={**report, "at": self._clock.wall()}
                )
            out = []
            for m in cluster.members:
                power = member_power(self._facts(m))
                out.append({"name": m.name, "address": m.address, "power": power.state or ""})
            return FenceAnswer(200, {"members": out})
        found = cluster.member(member or "")
        if found is None:
            raise LookupError(f"cluster {cluster.name} has no member {member!r}")
        power = member_power(self._facts(found))
        body = {"member": found.name, "power": power.state, "detail": power.detail}
        if action == "status":
            return FenceAnswer(200 if power.state else 409, body)
        wanted = {"off": "off", "on": "on"}.get(action)
        if wanted is None:
            raise ValueError(f"action: one of off, on, status, list, monitor; not {action!r}")
        if power.state == wanted:
            return FenceAnswer(200, body)
        if not power.may_act:
            return FenceAnswer(409, body)
        kind = RequestKind.POWER_OFF_MEMBER if wanted == "off" else RequestKind.POWER_ON_MEMBER
        if self._asked(kind, found.instance_id):  # the agent polls: once is enough
            return FenceAnswer(202, {**body, "detail": f"{action} asked of Nova; {power.detail}"})
        server = self._server(found)
        self._requests.submit(
            kind,
            found.instance_id,
            host=server.host if server else None,
            reason=f"fence_vigil of cluster {cluster.name}: {action} {found.name}",
        )
        LOG.warning(
            "cluster %s: member %s (instance %s): %s asked by its cluster's fence agent",
            cluster.name,
            found.name,
            found.instance_id,
            action,
        )
        return FenceAnswer(202, {**body, "detail": f"{action} asked of Nova; {power.detail}"})

    def _asked(self, kind: RequestKind, instance_id: str) -> bool:
        """Whether such a request for the instance is pending or running."""
        return any(
            r.kind == kind and r.target == instance_id
            for r in self.store.list_requests(statuses=(StepStatus.PENDING, StepStatus.RUNNING))
        )

    def _server(self, member: ClusterMember) -> Server | None:
        if not member.instance_id:
            return None
        try:
            return self._compute.get_server(member.instance_id)
        except NotFound:
            return None

    def _facts(self, member: ClusterMember) -> MemberFacts:
        server = self._server(member)
        host: Host | None = None
        fenced: str | None = None
        if server is not None and server.host:
            try:
                host = self.store.get_host(server.host)
            except NotFoundError:
                host = None
            if host is not None and host.state in (HostState.FAILED, HostState.RECOVERED):
                fenced = self._fenced(host)
        return MemberFacts(member, server, host, fenced)

    def _fenced(self, host: Host) -> str | None:
        """How the host's latest recovery confirmed it off, if its fence step succeeded
        (after the host's failure: an older recovery's fence says nothing of now)."""
        for recovery in self.store.list_recoveries(host=host.name, limit=1):
            if recovery.status == RecoveryStatus.WITHDRAWN:
                return None
            step = recovery.step(StepKind.FENCE)
            if step is not None and step.status == StepStatus.SUCCEEDED:
                return step.detail or f"recovery {recovery.id}"
        return None

    # --- the requests' handlers (on the engine's workers) ------------------------------

    def _power_off(self, request: OperatorRequest) -> tuple[str, Sequence[Event]]:
        self._compute.stop(request.target)
        return "power-off asked of Nova", []

    def _power_on(self, request: OperatorRequest) -> tuple[str, Sequence[Event]]:
        self._compute.start(request.target)
        return "start asked of Nova", []

    def _build(self, request: OperatorRequest) -> tuple[str, Sequence[Event]]:
        try:
            return self._build_steps(request.target)
        except (PermanentError, Conflict) as exc:  # the request ends: so does the build
            self._failed(request.target, str(exc))
            raise
        except Exception as exc:  # retried by the request: said meanwhile
            self.store.update_cluster(
                request.target, at=self._clock.wall(), detail=f"retrying: {exc}"
            )
            raise

    def _failed(self, cluster_id: str, why: str) -> None:
        LOG.error("cluster %s: build failed: %s", cluster_id, why)
        self.store.update_cluster(
            cluster_id, at=self._clock.wall(), status=ClusterStatus.ERROR, detail=why
        )

    def _build_steps(self, cluster_id: str) -> tuple[str, Sequence[Event]]:
        assert self._network is not None
        net, c = self._network, self.store.get_cluster(cluster_id)
        if c.status != ClusterStatus.BUILDING:
            return f"cluster is {c.status.value}: nothing to build", []

        def save(**changes: Any) -> Cluster:
            return self.store.update_cluster(cluster_id, at=self._clock.wall(), **changes)

        network = net.get_network(c.network)
        prefix = self._prefix_len(network.id)
        if not c.network_id:
            c = save(network_id=network.id)
        tag = f"vigil-{c.name}-{c.id[:8]}"
        if not c.security_group_id:
            group = net.create_security_group(tag, f"vigil cluster {c.name}: members only")
            c = save(security_group_id=group)
            for protocol, number in (("udp", KNET_PORT), ("tcp", PCSD_PORT)):
                with contextlib.suppress(Conflict):  # there already (a resumed build)
                    net.add_rule(group, Rule(protocol, number, number, group))
        groups = (c.security_group_id,)
        leftovers = {p.name: p for p in net.list_ports(name_prefix=tag)}
        if c.want_vip and not c.vip_port_id:
            port = leftovers.get(f"{tag}-vip") or net.create_port(
                name=f"{tag}-vip", network_id=c.network_id, security_groups=groups
            )
            c = save(vip=port.fixed_ips[0], vip_port_id=port.id)
        members = list(c.members)
        for i in range(len(members), c.size):
            name = f"{c.name}-{i + 1}"
            port = leftovers.get(f"{tag}-{name}") or net.create_port(
                name=f"{tag}-{name}",
                network_id=c.network_id,
                security_groups=groups,
                allowed_address_pairs=(c.vip,) if c.vip else (),
            )
            members.append(ClusterMember(name, port.fixed_ips[0], port.id))
            c = save(members=tuple(members))
        if not c.server_group_id:
            c = save(server_group_id=self._compute.create_server_group(tag, "anti-affinity"))
        data = user_data(c, vigil_url=self.vigil_url, token=self.token(c.id), prefix_len=prefix)
        made = self._unrecorded(c)
        for i, m in enumerate(members):
            if m.instance_id:
                continue
            sid = made.get(m.name) or self._compute.create_server(
                name=m.name,
                image=c.image,
                flavor=c.flavor,
                port_id=m.port_id,
                user_data=data,
                server_group=c.server_group_id,
                metadata={nova.POLICY_KEY: c.policy.value, CLUSTER_KEY: c.id},
            )
            members[i] = replace(m, instance_id=sid)
            c = save(members=tuple(members))
            LOG.info(
                "cluster %s: member %s booting as instance %s at %s", c.name, m.name, sid, m.address
            )
            self._placed(c, m.name, sid)
        save(status=ClusterStatus.ACTIVE, detail="")
        return f"cluster {c.name}: {c.size} members booted", []

    def _unrecorded(self, c: Cluster) -> dict[str, str]:
        """The members Nova made but vigil did not record (it crashed in between: Nova's
        create is not idempotent), by name, found in the cluster's server group: a
        resumed build takes them instead of making them twice."""
        recorded = {m.instance_id for m in c.members if m.instance_id}
        if len(recorded) == c.size:
            return {}
        found: dict[str, str] = {}
        for sid in self._compute.server_group_members(c.server_group_id):
            if sid in recorded:
                continue
            server = self._compute.get_server(sid)
            if server.cluster == c.id and c.member(server.name) is not None:
                LOG.warning(
                    "cluster %s: member %s: instance %s made before vigil's restart, "
                    "not recorded; taken, not made again",
                    c.name,
                    server.name,
                    sid,
                )
                found[server.name] = sid
        return found

    def _placed(self, c: Cluster, name: str, sid: str) -> None:
        """Wait (bounded) until Nova has put the member on a host. Members booted
        together are scheduled before any of them has a host, so Nova's anti-affinity
        filter sees none of the others: the scheduler picks one host for all, and its late
        check on that host sends them back, three times at most, then ERROR. One at a
        time, the filter sees the members placed before."""
        deadline = self._clock.monotonic() + PLACE_WAIT
        while True:
            server = self._compute.get_server(sid)
            if server.host or server.status == nova.ERROR:
                return
            if self._clock.monotonic() > deadline:
                LOG.warning(
                    "cluster %s: member %s (instance %s) not on a host after %.0fs; booting "
                    "the next one anyway (Nova's own check keeps them apart, or fails it)",
                    c.name,
                    name,
                    sid,
                    PLACE_WAIT,
                )
                return
            self._sleep(0.5)

    def _delete(self, request: OperatorRequest) -> tuple[str, Sequence[Event]]:
        c = self.store.get_cluster(request.target)
        if c.external:  # its stack made its resources; deleting the stack removes them
            self.store.delete_cluster(c.id)
            LOG.info("cluster %s (%s): forgotten; its resources are its stack's", c.name, c.id)
            return f"cluster {c.name} forgotten (its stack keeps its resources)", []

        def gone(call: Callable[[str], None], what: str) -> None:
            if what:
                with contextlib.suppress(NotFound):
                    call(what)

        for m in c.members:
            gone(self._compute.delete_server, m.instance_id)
        if self._network is not None:
            for m in c.members:
                gone(self._network.delete_port, m.port_id)
            gone(self._network.delete_port, c.vip_port_id)
        gone(self._compute.delete_server_group, c.server_group_id)
        if self._network is not None:
            gone(self._network.delete_security_group, c.security_group_id)
        self.store.delete_cluster(c.id)
        LOG.info("cluster %s (%s): deleted with its instances, ports and groups", c.name, c.id)
        return f"cluster {c.name} deleted", []
