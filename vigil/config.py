"""Configuration: oslo.config options (the INI form OpenStack operators know) and the
typed, validated settings the rest of vigil receives.

Options are registered on a ``ConfigOpts`` made here, never on a global: every process
builds its own and passes the resulting ``Settings`` down. ``list_opts`` feeds
``oslo-config-generator`` (see ``etc/vigil-config-generator.conf``), which writes the
documented sample ``etc/vigil.conf.sample``.

Timing that would make detection or fencing unsafe is refused at load with a sentence
saying why (``ConfigError``), the way Patroni checks ``loop_wait + 2*retry_timeout <= ttl``.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from oslo_config import cfg, types


class ConfigError(Exception):
    """Configuration that vigil refuses to run with; the message says why."""


_database = [
    cfg.StrOpt(
        "connection",
        default="sqlite:///vigil.db",
        secret=True,
        help="SQLAlchemy URL of the store: sqlite:////var/lib/vigil/vigil.db (embedded), "
        "postgresql+psycopg://vigil:...@db/vigil or mysql+pymysql://vigil:...@db/vigil.",
    ),
    cfg.BoolOpt(
        "auto_migrate",
        default=True,
        help="Apply pending schema migrations when the server starts.",
    ),
    cfg.FloatOpt(
        "idle_transaction_timeout",
        default=5.0,
        min=1.0,
        help="Seconds after which the database server ends a session of vigil's that sits "
        "idle inside a transaction (PostgreSQL idle_in_transaction_session_timeout, "
        "MariaDB idle_transaction_timeout; not on SQLite or MySQL). A vigil-server frozen "
        "in the middle of a write (SIGSTOP, a VM paused, swapping) holds row locks; this "
        "frees them, so that another server can take its segments over and its write, "
        "when it wakes, is rolled back. vigil's own transactions never wait on anything "
        "but the database.",
    ),
    cfg.IntOpt(
        "max_pool_size",
        default=10,
        min=1,
        help="Connections to a database server (PostgreSQL, MariaDB) each vigil-server "
        "keeps open (oslo.db's name). Not used on SQLite.",
    ),
    cfg.IntOpt(
        "max_overflow",
        default=40,
        min=0,
        help="Connections a vigil-server may open beyond max_pool_size while it is busy "
        "(a rack failure's evacuations record their steps at once), closed once returned. "
        "Servers x (max_pool_size + max_overflow) must stay within the database's "
        "max_connections (PostgreSQL's default: 100).",
    ),
    cfg.FloatOpt(
        "pool_timeout",
        default=30.0,
        min=1.0,
        help="Seconds a store call waits for a free connection before it fails (the store "
        "is then taken as unavailable).",
    ),
    cfg.FloatOpt(
        "event_retention_days",
        default=30.0,
        min=0.0,
        help="Days events are kept (GET /v1/events, the event stream's replay). Older "
        "ones are deleted once every sink (the notifiers, each webhook subscription) has "
        "delivered them; one not yet delivered is never deleted. 0: kept for ever. "
        "Recoveries, their steps and failures are kept whatever this says.",
    ),
]

_api = [
    cfg.HostAddressOpt("host", default="127.0.0.1", help="Address the REST API listens on."),
    cfg.PortOpt("port", default=8787, help="Port of the REST API."),
    cfg.StrOpt(
        "auth_token",
        secret=True,
        help="Bearer token required on every /v1 API call. Prefer auth_token_file.",
    ),
    cfg.StrOpt("auth_token_file", help="File whose first line is the API bearer token."),
    cfg.StrOpt(
        "auth_strategy",
        default="token",
        choices=[
            ("token", "one static bearer token (auth_token), an admin's: the demo, standalone"),
            (
                "keystone",
                "Keystone tokens, validated by keystonemiddleware with the options of "
                "[keystone_authtoken]; oslo.policy decides ([oslo_policy])",
            ),
        ],
        help="How API callers are authenticated (both vigil's API and Masakari's).",
    ),
    cfg.StrOpt(
        "cert_file",
        help="PEM file of the API's TLS certificate (its chain may follow it): set it and "
        "key_file to serve HTTPS, vigil's API and Masakari's. Its subjectAltName must name "
        "the host and address clients use. Unset: plain HTTP (the demo; only on a trusted "
        "network).",
    ),
    cfg.StrOpt(
        "key_file",
        help="PEM file of the private key of cert_file (readable by vigil-server only).",
    ),
]

_agent = [
    cfg.StrOpt(
        "key",
        secret=True,
        help="(server) The master key, from which each host's agent key is derived "
        "(vigil-server agent-key HOST prints it); (agent) this host's agent key, which "
        "signs its heartbeats and reports (HMAC-SHA256) and no other host's. Prefer "
        "key_file.",
    ),
    cfg.StrOpt(
        "key_file",
        help="File holding the key. On a server, one master key per line: the first "
        "derives the keys agents should hold, the others are still accepted (rotation: "
        "put the new master first, install each host's new key, then remove the old "
        "master). On an agent, its host's key on the first line. Both re-read the file "
        "within seconds of a change: no restart.",
    ),
    cfg.BoolOpt(
        "accept_master_key",
        default=False,
        help="(server) Also accept a master key itself as any host's key: for simulated "
        "agents that sign every host's heartbeats in one process (vigil demo, "
        "bench/scale.py). Never with real agents: a host holding a master signs for all.",
    ),
    cfg.StrOpt(
        "peer_key",
        secret=True,
        help="(agent, self-fencing) The key peer checks are signed with, the same on "
        "every agent of the cloud (vigil-server agent-key --peers prints it). Prefer "
        "peer_key_file.",
    ),
    cfg.StrOpt(
        "peer_key_file",
        help="(agent, self-fencing) File holding the peer key on its first line; other "
        "lines are keys still accepted (rotation: the new key first, the old second on "
        "every agent, then the new alone). Re-read within seconds of a change.",
    ),
    cfg.HostAddressOpt(
        "listen_host", default="127.0.0.1", help="Address the server receives heartbeats on."
    ),
    cfg.PortOpt("listen_port", default=8788, help="UDP port the server receives heartbeats on."),
    cfg.BoolOpt(
        "receiver_process",
        default=True,
        help="(server) Read and verify heartbeats in a child process of vigil-server, so "
        "that its engine and API never delay them (at 10,000 hosts, 40,000 datagrams a "
        "second). false: on a thread of the server's own process.",
    ),
    cfg.StrOpt("host", help="(agent) Name of this compute host, as Nova knows it."),
    cfg.StrOpt(
        "libvirt_uri",
        default="",
        help="(agent) libvirt URI to watch guests on (e.g. qemu:///system); empty: no guest "
        "monitoring.",
    ),
    cfg.URIOpt(
        "server_url",
        help="(agent) vigil-server's API, where guest failure reports and the state of the "
        "watched services go (e.g. http://vigil:8787; https://vigil:8787 when its API "
        "serves TLS, see api_ca_file). Unset: neither is sent. Ignored when server_urls "
        "is set.",
    ),
    cfg.ListOpt(
        "server_urls",
        default=[],
        help="(agent) The API of every vigil-server, when several share the hosts (e.g. "
        "http://ctl1:8787,http://ctl2:8787,http://ctl3:8787): each report goes to the "
        "first that answers, starting with the one that last did; a connection error or a "
        "5xx moves on to the next, a 4xx is final. Empty: server_url is the one server.",
    ),
    cfg.StrOpt(
        "api_ca_file",
        help="(agent) PEM bundle of the CA(s) that signed the servers' API certificate "
        "([api] cert_file), for https:// server URLs. Unset: the system's trust store. "
        "Agents always verify the certificate.",
    ),
    cfg.MultiStrOpt(
        "watch_service",
        default=["nova-compute=nova-compute", "libvirtd=(^|/)(libvirtd|virtqemud)( |$)"],
        help="(agent) A service of this host to watch, as NAME=REGEX: it runs while a "
        "process's command line matches REGEX (like pgrep -f). Repeat the option for each. "
        "While one is down, vigil-server disables the host's compute service for scheduling "
        "and does not fence the host; it enables it again when all run.",
    ),
    cfg.FloatOpt(
        "service_check_interval",
        default=1.0,
        min=0.1,
        help="(agent) Seconds between two looks at the watched services.",
    ),
    cfg.IntOpt(
        "service_down_after",
        default=2,
        min=1,
        help="(agent) Checks in a row that must find no process before a service is down "
        "(a restart by systemd in between is not a failure).",
    ),
    cfg.BoolOpt(
        "app_checks",
        default=True,
        help="(agent) Run the application checks vigil-server plans for this host's guests "
        "(the vigil:check:* declarations of their owners) through each guest's QEMU guest "
        "agent, and report them. Needs libvirt_uri and server_url (or server_urls).",
    ),
    cfg.IntOpt(
        "app_check_workers",
        default=16,
        min=1,
        help="(agent) Application checks run at the same time, at most; a guest has one "
        "check or command at a time, so a hung guest holds one of them for at most its "
        "check's timeout.",
    ),
    cfg.FloatOpt(
        "app_report_interval",
        default=30.0,
        min=1.0,
        help="(agent) Seconds between two reports of the application checks' states when "
        "nothing changes (a change is reported at once; while a check is failing or a guest "
        "command is under way, every second).",
    ),
    cfg.BoolOpt(
        "self_fencing",
        default=False,
        help="(agent) Hold a lease from the server and pet the hardware watchdog only while "
        "it is valid — or, once it ran out, while a strict majority of this host's segment "
        "(asked over the peer port) has lost vigil-server too — so that this host resets "
        "itself when *it* is cut off, never because vigil is down. A host alone in its "
        "segment never resets itself this way, and is never confirmed self-fenced.",
    ),
    cfg.ListOpt(
        "peers",
        default=[],
        help="(agent, self-fencing) The other agents of this host's segment, as "
        "HOST=ADDR:PORT or ADDR:PORT (PORT: their peer_port). Asked when the lease ran out. "
        "The segment size comes from the server, so listing too few peers only makes this "
        "host reset more readily.",
    ),
    cfg.HostAddressOpt(
        "peer_host",
        default="0.0.0.0",
        help="(agent, self-fencing) Address this agent answers its peers on.",
    ),
    cfg.PortOpt(
        "peer_port",
        default=8789,
        help="(agent, self-fencing) UDP port this agent answers its peers on.",
    ),
    cfg.StrOpt(
        "state_file",
        default="/var/lib/vigil/agent-state.json",
        help="(agent, self-fencing) Where the agent keeps the segment its last lease named, "
        "so that after its host reboots it can tell its peers it has not heard vigil-server "
        "since (while vigil is down, a rebooted host still counts toward its segment's "
        "majority). Written only when the segment changes.",
    ),
    cfg.StrOpt(
        "watchdog_device", default="/dev/watchdog", help="(agent) The watchdog device to pet."
    ),
    cfg.FloatOpt(
        "watchdog_timeout",
        default=8.0,
        min=0.1,
        help="(agent) Seconds the watchdog device waits before it resets the host; must be "
        "what the device is configured to (e.g. softdog soft_margin).",
    ),
    cfg.HostAddressOpt(
        "server_host", default="127.0.0.1", help="(agent) Address of vigil-server's heartbeats."
    ),
    cfg.PortOpt("server_port", default=8788, help="(agent) UDP port of vigil-server."),
    cfg.ListOpt(
        "servers",
        default=[],
        help="(agent) Every vigil-server's heartbeat address, as HOST:PORT, when several "
        "share the hosts (e.g. ctl1:8788,ctl2:8788,ctl3:8788): every heartbeat goes to each "
        "of them, so that whichever takes this host's segment over has heard it all along; "
        "lease grants are accepted from any. HOST may be one name that resolves to every "
        "server (an address per server, in DNS or /etc/hosts): heartbeats go to each of its "
        "addresses. Empty: server_host:server_port is the one server.",
    ),
    cfg.FloatOpt(
        "resolve_interval",
        default=30.0,
        min=1.0,
        help="(agent) Seconds between two resolutions of the server names in servers (or "
        "server_host), off the heartbeat thread: servers added to or removed from a name are "
        "followed within this time; a name that cannot be resolved keeps its last addresses.",
    ),
]


def agent_servers(conf: cfg.ConfigOpts) -> list[tuple[str, int]]:
    """Where an agent sends its heartbeats: ``agent.servers`` (HOST:PORT entries), or
    ``agent.server_host``:``agent.server_port`` when it is empty. ConfigError names the
    bad entry."""
    if not conf.agent.servers:
        return [(conf.agent.server_host, conf.agent.server_port)]
    out: list[tuple[str, int]] = []
    for item in conf.agent.servers:
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or ":" in host or not port.isdigit():
            raise ConfigError(f"agent.servers: {item!r} is not HOST:PORT (IPv4 or a name)")
        if not 0 < int(port) < 65536:
            raise ConfigError(f"agent.servers: {item!r}: port {port} is not in 1..65535")
        if (host, int(port)) in out:
            raise ConfigError(f"agent.servers: {item!r} is given twice")
        out.append((host, int(port)))
    return out


def agent_server_urls(conf: cfg.ConfigOpts) -> list[str]:
    """Where an agent posts its reports: ``agent.server_urls``, or ``agent.server_url``
    when it is empty; an empty list when neither is set. ConfigError names a bad entry."""
    if not conf.agent.server_urls:
        return [conf.agent.server_url] if conf.agent.server_url else []
    out: list[str] = []
    for item in conf.agent.server_urls:
        url = item.strip().rstrip("/")
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError for a bad port
        except ValueError as exc:
            raise ConfigError(f"agent.server_urls: {item!r}: {exc}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"agent.server_urls: {item!r} is not an http(s)://HOST URL")
        if url in out:
            raise ConfigError(f"agent.server_urls: {item!r} is given twice")
        out.append(url)
    return out


_detection = [
    cfg.FloatOpt(
        "heartbeat_interval",
        default=0.25,
        min=0.05,
        help="Seconds between two heartbeats of an agent. The default tolerates 5 % "
        "packet loss with 200 ms jitter without a false failure (six datagrams in a row "
        "must be lost); tens of thousands of hosts may want 0.5 with failed_after raised.",
    ),
    cfg.FloatOpt(
        "suspect_after",
        default=1.0,
        min=0.1,
        help="Seconds without a heartbeat before a host is suspect and its BMC is read.",
    ),
    cfg.FloatOpt(
        "failed_after",
        default=1.75,
        min=0.2,
        help="Seconds without a heartbeat before a host is declared failed, whatever its "
        "BMC says (a BMC reading power off declares it sooner).",
    ),
    cfg.FloatOpt(
        "probe_interval",
        default=0.25,
        min=0.05,
        help="Seconds between two BMC power reads of a suspect host.",
    ),
]

_self_fencing = [
    cfg.FloatOpt(
        "lease_ttl",
        default=3.0,
        min=0.1,
        help="Seconds a self-fencing agent may pet its watchdog after sending a heartbeat "
        "the server granted. At least six heartbeat intervals. A peer that heard a grant "
        "less than half of it ago tells an agent asking that the server is alive.",
    ),
    cfg.FloatOpt(
        "watchdog_timeout",
        default=8.0,
        min=0.1,
        help="Seconds the agents' hardware watchdogs wait before resetting their host. An "
        "agent reporting a longer one is believed (the longer wait is used).",
    ),
    cfg.FloatOpt(
        "margin",
        default=2.0,
        min=0.0,
        help="Extra seconds before a silent self-fencing host counts as reset: covers clock "
        "rate differences. At least a tenth of lease_ttl + watchdog_timeout.",
    ),
    cfg.FloatOpt(
        "peer_interval",
        default=1.0,
        min=0.05,
        help="Seconds between two checks of its peers by an agent whose lease ran out (one "
        "passing check lets it pet for peer_interval + peer_timeout). Read by the agents "
        "too; the server waits for the longer of its own and what agents report.",
    ),
    cfg.FloatOpt(
        "peer_timeout",
        default=0.5,
        min=0.01,
        help="Seconds an agent waits for its peers' answers. At most peer_interval, and "
        "with two heartbeat intervals less than watchdog_timeout: a host that survives "
        "vigil's loss must decide before its watchdog fires.",
    ),
]

_recovery = [
    cfg.FloatOpt("tick", default=0.1, min=0.01, help="Seconds between two engine cycles."),
    cfg.IntOpt(
        "max_parallel_evacuations",
        default=8,
        min=1,
        help="Default evacuations in flight at once per recovery (a segment may override).",
    ),
    cfg.FloatOpt(
        "max_failed_share",
        default=0.5,
        min=0.0,
        max=1.0,
        help="Default storm guard: more than this share of a segment's hosts failing at "
        "once pauses automatic recovery there.",
    ),
    cfg.IntOpt("step_attempts", default=5, min=1, help="Attempts of a step before it fails."),
    cfg.FloatOpt("retry_backoff", default=0.5, min=0.0, help="First retry delay, seconds."),
    cfg.FloatOpt("retry_backoff_max", default=15.0, min=0.0, help="Longest retry delay."),
    cfg.FloatOpt(
        "fence_confirm_timeout",
        default=15.0,
        min=0.1,
        help="Seconds to wait for a BMC to read power off after a power-off request.",
    ),
    cfg.FloatOpt(
        "evacuate_confirm_timeout",
        default=300.0,
        min=1.0,
        help="Seconds to wait for an evacuated instance to be ACTIVE on its new host.",
    ),
    cfg.FloatOpt(
        "evacuate_stall_timeout",
        default=60.0,
        min=1.0,
        help="Seconds an evacuated instance may stay in REBUILD on the failed host before "
        "vigil asks Nova whether anything took the request up. If Nova lost it (its API "
        "died between saving the instance and sending the request on, while a conductor "
        "is up), vigil resets the instance to error and evacuates it again. A conductor "
        "slower than this to pick a request from its queue would then rebuild it twice: "
        "keep it well above the conductor's normal delay.",
    ),
    cfg.FloatOpt(
        "max_duration",
        default=1800.0,
        min=10.0,
        help="Seconds after which a recovery still running ends FAILED, naming the steps "
        "that had not finished, so that every recovery ends and an operator is told. Each "
        "step is bounded well before this by its attempts (step_attempts) and timeouts "
        "(fence_confirm_timeout, evacuate_confirm_timeout); time spent paused counts too.",
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=0.1,
        min=0.01,
        help="Seconds before the first status poll of a step (BMC power, Nova server); each "
        "next one waits 1.5 times longer, up to poll_interval_max.",
    ),
    cfg.FloatOpt(
        "poll_interval_max",
        default=1.0,
        min=0.01,
        help="Longest wait between two status polls of a step.",
    ),
    cfg.IntOpt(
        "workers",
        default=128,
        min=1,
        help="Threads that run recovery steps. An evacuation holds one until its instance "
        "is ACTIVE (seconds on a busy Nova), so this caps the evacuations in flight across "
        "all recoveries: a rack failure's throughput is at most workers / evacuation time "
        "(the segments' max_parallel_evacuations limit each recovery). Power probes and "
        "host steps (fence, force-down, listings) run on workers / 4 more threads (at least "
        "8) of their own, never queued behind evacuations.",
    ),
    cfg.FloatOpt(
        "app_declarations_interval",
        default=60.0,
        min=1.0,
        help="Seconds between two readings from Nova of a host's instances' application "
        "checks (vigil:check:* and vigil:app_recovery in metadata, image, flavor): read when "
        "the host's agent reports, at most this often, so a changed declaration applies "
        "within this time. One server listing per host per interval.",
    ),
    cfg.FloatOpt(
        "app_command_timeout",
        default=120.0,
        min=1.0,
        help="Seconds an application's restart command (restart-command of "
        "vigil:app_recovery) may run in its guest before the attempt counts as failed.",
    ),
]

_compute = [
    cfg.StrOpt(
        "driver",
        default="sim",
        choices=["sim", "openstack"],
        help="Compute driver: openstack (Nova through openstacksdk) or sim (the simulated "
        "cloud of the demo and the tests).",
    ),
    cfg.StrOpt(
        "cloud",
        help="(openstack) Cloud name in clouds.yaml; unset: the OS_* environment variables.",
    ),
    cfg.FloatOpt(
        "api_timeout", default=60.0, min=1.0, help="(openstack) Seconds per Nova API call."
    ),
    cfg.URIOpt("sim_url", help="(sim) URL of a simulated cloud served by vigil.sim.rpc."),
]

_notifier = [
    cfg.ListOpt(
        "drivers",
        default=["log"],
        item_type=types.String(choices=["log", "memory", "messaging"]),
        help="Where every event goes besides webhook subscriptions: log (a JSON line per "
        "event), messaging (the OpenStack notification bus through oslo.messaging), memory "
        "(kept in the process: tests and the demo).",
    ),
    cfg.StrOpt(
        "transport_url",
        secret=True,
        help="oslo.messaging transport of the messaging driver, e.g. "
        "rabbit://vigil:secret@rabbit:5672/ or kafka://kafka:9092/.",
    ),
    cfg.StrOpt(
        "topic",
        default="versioned_notifications",
        help="Topic of the messaging driver (Nova's versioned notifications use the default).",
    ),
    cfg.StrOpt(
        "exchange",
        default="vigil",
        help="Exchange of the messaging driver (Nova publishes on 'nova').",
    ),
]

_coordination = [
    cfg.StrOpt(
        "backend_url",
        default="",
        secret=True,
        help="tooz URL of the coordination backend that several vigil-servers share, e.g. "
        "etcd3+http://ctl1:2379 (a three-member etcd cluster: give one member per server, "
        "or a name resolving to a local member) or redis://ctl1:6379. Empty: this server "
        "alone owns every segment (one server only).",
    ),
    cfg.StrOpt(
        "member_id",
        default="",
        help="This server's name in the group of servers; default: hostname:api.port.",
    ),
    cfg.StrOpt(
        "namespace",
        default="vigil",
        regex=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        help="Prefix of this deployment's names in the backend (the group of servers "
        "<namespace>-servers, the locks <namespace>-segment-<segment>): two vigil "
        "deployments, say two regions, may share one etcd with two namespaces. Every "
        "server of one deployment must use the same.",
    ),
    cfg.FloatOpt(
        "lease_ttl",
        default=3.0,
        min=1.0,
        help="Seconds a server's membership and segment locks outlive its last renewal: a "
        "dead server's segments are taken over after about this long. Whole seconds on "
        "etcd (its leases count in seconds).",
    ),
    cfg.FloatOpt(
        "renew_interval",
        default=0.5,
        min=0.05,
        help="Seconds between two renewals of the membership and locks. renew_interval + "
        "2 x call_timeout must not exceed lease_ttl - margin.",
    ),
    cfg.FloatOpt(
        "call_timeout",
        default=1.0,
        min=0.05,
        help="Seconds one call to the backend may take (whole seconds on etcd).",
    ),
    cfg.FloatOpt(
        "margin",
        default=0.5,
        min=0.0,
        help="A server stops acting on its segments this long before its locks could "
        "expire, counted from the start of its last successful renewal (covers clock rate "
        "differences and the actions already under way).",
    ),
    cfg.FloatOpt(
        "owner_hint_ttl",
        default=2.0,
        min=0.1,
        help="Seconds an agent sends its heartbeats mostly to the server that told it it "
        "owns the host's segment (owner hints are renewed every third of this while "
        "heartbeats come); after it, to every server again. Shorter than lease_ttl, so "
        "that a dead server's hints have lapsed when its segments are taken over.",
    ),
    cfg.FloatOpt(
        "other_servers_interval",
        default=2.0,
        min=0.05,
        help="Seconds between two heartbeats an agent with an owner sends to the other "
        "servers too (they keep knowing the host is alive). A server taking a segment "
        "over holds its hosts' silence for owner_hint_ttl + this.",
    ),
]

_clusters = [
    cfg.StrOpt(
        "vigil_url",
        default="",
        help="The address of vigil's API as the VMs of an in-guest cluster reach it, e.g. "
        "https://vigil.example.org:8675: written into each member's fence device "
        "(fence_vigil). Empty: clusters cannot be created (vigil cluster create answers "
        "409 naming this option).",
    ),
]

_GROUPS: dict[str, Sequence[cfg.Opt]] = {
    "database": _database,
    "api": _api,
    "agent": _agent,
    "detection": _detection,
    "self_fencing": _self_fencing,
    "recovery": _recovery,
    "compute": _compute,
    "notifier": _notifier,
    "coordination": _coordination,
    "clusters": _clusters,
}


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point of oslo-config-generator."""
    return [(group, list(opts)) for group, opts in _GROUPS.items()]


def make_conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    for group, opts in _GROUPS.items():
        conf.register_opts(opts, group=group)
    return conf


@dataclass(frozen=True)
class DetectionSettings:
    heartbeat_interval: float = 0.25
    suspect_after: float = 1.0
    failed_after: float = 1.75
    probe_interval: float = 0.25

    def validate(self) -> None:
        if self.suspect_after < 2 * self.heartbeat_interval:
            raise ConfigError(
                f"detection.suspect_after ({self.suspect_after}s) must be at least twice "
                f"heartbeat_interval ({self.heartbeat_interval}s): one lost or late heartbeat "
                "must never make a host suspect"
            )
        if self.failed_after < 3 * self.heartbeat_interval:
            raise ConfigError(
                f"detection.failed_after ({self.failed_after}s) must be at least three "
                f"heartbeat intervals ({3 * self.heartbeat_interval}s): with fewer, ordinary "
                "packet loss would fence healthy hosts"
            )
        if self.failed_after <= self.suspect_after:
            raise ConfigError(
                f"detection.failed_after ({self.failed_after}s) must exceed suspect_after "
                f"({self.suspect_after}s): the BMC is read between the two"
            )


@dataclass(frozen=True)
class SelfFencingSettings:
    lease_ttl: float = 3.0
    watchdog_timeout: float = 8.0
    margin: float = 2.0
    peer_interval: float = 1.0
    peer_timeout: float = 0.5

    @property
    def peer_window(self) -> float:
        """Seconds one passing peer check lets an agent pet after its lease ran out."""
        return self.peer_interval + self.peer_timeout

    @property
    def wait(self) -> float:
        """Seconds after the last grant (and after the start of its peers' runs) before a
        silent self-fencing host counts as reset."""
        return self.lease_ttl + self.peer_window + self.watchdog_timeout + self.margin

    def validate(self, detection: DetectionSettings) -> None:
        """Refuse timing that would reset healthy hosts or confirm a live one.

        What the server's deadline needs is built into ``wait`` (lease TTL + peer window
        + watchdog + margin) and the majority proof; what is checked here is what the
        agents need so that a healthy host is not reset: grants often enough to keep
        the lease (and a peer's "fresh" state, half a lease) across lost datagrams, and
        a peer check that ends before the watchdog fires."""
        if self.lease_ttl < 6 * detection.heartbeat_interval - 1e-9:  # (float rounding)
            raise ConfigError(
                f"self_fencing.lease_ttl ({self.lease_ttl}s) must be at least six heartbeat "
                f"intervals ({6 * detection.heartbeat_interval:g}s): a healthy host that misses "
                "a few grants would otherwise reset itself, and the server proves a peer "
                "connected only when each grant's acknowledgement (in the heartbeat after "
                "next) comes within half a lease, one lost datagram included"
            )
        if self.margin < 0.1 * (self.lease_ttl + self.watchdog_timeout):
            raise ConfigError(
                f"self_fencing.margin ({self.margin}s) must be at least a tenth of lease_ttl + "
                f"watchdog_timeout ({0.1 * (self.lease_ttl + self.watchdog_timeout):g}s): "
                "clocks run at slightly different rates"
            )
        if self.peer_timeout > self.peer_interval:
            raise ConfigError(
                f"self_fencing.peer_timeout ({self.peer_timeout}s) must not exceed "
                f"peer_interval ({self.peer_interval}s): an agent runs one peer check at a "
                "time, and each passing one must last until the next one ends"
            )
        if self.peer_timeout + 2 * detection.heartbeat_interval >= self.watchdog_timeout:
            raise ConfigError(
                f"self_fencing.peer_timeout ({self.peer_timeout}s) plus two heartbeat "
                f"intervals must be less than watchdog_timeout ({self.watchdog_timeout}s): "
                "when vigil-server is down, a host stops petting from its lease's end until "
                "its peers have answered, and its watchdog would fire meanwhile"
            )


@dataclass(frozen=True)
class CoordinationSettings:
    backend_url: str = field(default="", repr=False)
    member_id: str = ""
    namespace: str = "vigil"
    lease_ttl: float = 3.0
    renew_interval: float = 0.5
    call_timeout: float = 1.0
    margin: float = 0.5
    owner_hint_ttl: float = 2.0
    other_servers_interval: float = 2.0

    @property
    def takeover_hold(self) -> float:
        """Seconds a server taking a segment over does not count its hosts' silence: the
        previous owner's hints lapse, and each agent sends to every server again."""
        return self.owner_hint_ttl + self.other_servers_interval

    @property
    def acting_window(self) -> float:
        """Seconds after the start of a successful renewal during which the owner acts."""
        return self.lease_ttl - self.margin

    def validate(self) -> None:
        """Refuse timing that lets an owner act after its lock could have expired, or lose
        its locks while healthy (Patroni's rule: loop + 2 x retry <= TTL): a renewal
        starts every ``renew_interval`` and may take two call timeouts; until the next
        success the owner acts only until ``lease_ttl - margin`` after the last one
        started, before the backend can free its locks."""
        if self.renew_interval + 2 * self.call_timeout > self.acting_window + 1e-9:
            raise ConfigError(
                f"coordination: renew_interval ({self.renew_interval:g}s) + 2 x call_timeout "
                f"({self.call_timeout:g}s) must not exceed lease_ttl - margin "
                f"({self.acting_window:g}s): a healthy server would stop acting between two "
                "renewals, or act after its locks could have expired"
            )
        if self.backend_url.startswith("etcd") and (
            self.lease_ttl != round(self.lease_ttl) or self.lease_ttl < 2
        ):
            raise ConfigError(
                f"coordination.lease_ttl ({self.lease_ttl:g}s) must be whole seconds, at least "
                "2, on etcd: its leases count in whole seconds"
            )


@dataclass(frozen=True)
class RecoverySettings:
    tick: float = 0.1
    max_parallel_evacuations: int = 8
    max_failed_share: float = 0.5
    step_attempts: int = 5
    retry_backoff: float = 0.5
    retry_backoff_max: float = 15.0
    fence_confirm_timeout: float = 15.0
    evacuate_confirm_timeout: float = 300.0
    evacuate_stall_timeout: float = 60.0
    max_duration: float = 1800.0
    poll_interval: float = 0.1
    poll_interval_max: float = 1.0
    workers: int = 128


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///vigil.db"
    auto_migrate: bool = True
    idle_transaction_timeout: float = 5.0
    max_pool_size: int = 10
    max_overflow: int = 40
    pool_timeout: float = 30.0
    event_retention: float = 30 * 86400.0  # seconds; 0: for ever
    api_host: str = "127.0.0.1"
    api_port: int = 8787
    api_token: str = field(default="", repr=False)
    auth_strategy: str = "token"
    api_cert_file: str | None = None  # both set: the API serves HTTPS (vigil.wire.tls)
    api_key_file: str | None = None
    # The loaded options, for what reads its own groups from them: keystonemiddleware
    # ([keystone_authtoken]) and oslo.policy ([oslo_policy]). None: built in code.
    conf: cfg.ConfigOpts | None = field(default=None, repr=False, compare=False)
    agent_key: str = field(default="", repr=False)  # the current master key
    # The previous master keys, still accepted (rotation under way).
    agent_previous_keys: tuple[str, ...] = field(default=(), repr=False)
    agent_key_file: str | None = None  # where they were read: re-read when it changes
    accept_master_key: bool = False
    heartbeat_host: str = "127.0.0.1"
    heartbeat_port: int = 8788
    heartbeat_process: bool = True
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    self_fencing: SelfFencingSettings = field(default_factory=SelfFencingSettings)
    compute_driver: str = "sim"
    compute_cloud: str | None = None
    clusters_vigil_url: str = ""  # [clusters] vigil_url: where members' fence agents call
    compute_api_timeout: float = 60.0
    sim_url: str | None = None
    notifiers: tuple[str, ...] = ("log",)
    transport_url: str = field(default="", repr=False)
    topic: str = "versioned_notifications"
    exchange: str = "vigil"
    coordination: CoordinationSettings = field(default_factory=CoordinationSettings)
    app_declarations_interval: float = 60.0
    app_command_timeout: float = 120.0

    def validate(self) -> None:
        self.detection.validate()
        self.coordination.validate()
        self.self_fencing.validate(self.detection)
        if self.auth_strategy == "token" and not self.api_token:
            raise ConfigError("api.auth_token (or api.auth_token_file) must be set")
        if self.auth_strategy == "keystone" and self.conf is None:
            raise ConfigError("api.auth_strategy keystone: [keystone_authtoken] is read from files")
        if not self.agent_key:
            raise ConfigError("agent.key (or agent.key_file) must be set: agents are authenticated")


def read_secret(value: str | None, path: str | None, *, what: str) -> str:
    if path:
        try:
            return Path(path).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"{what}: cannot read the first line of {path}: {exc}") from exc
    return value or ""


def read_secrets(value: str | None, path: str | None, *, what: str) -> tuple[str, ...]:
    """The keys of ``path``, one per non-empty line, in order (else ``value``, if set)."""
    if not path:
        return (value,) if value else ()
    try:
        keys = tuple(line.strip() for line in Path(path).read_text().splitlines())
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc}") from exc
    keys = tuple(k for k in keys if k)
    if not keys:
        raise ConfigError(f"{what}: {path} holds no key")
    return keys


def settings_from_conf(conf: cfg.ConfigOpts) -> Settings:
    """Typed settings from loaded options, validated (ConfigError says what is wrong)."""
    d, r = conf.detection, conf.recovery
    masters = read_secrets(conf.agent.key, conf.agent.key_file, what="agent master key")
    settings = Settings(
        database_url=conf.database.connection,
        auto_migrate=conf.database.auto_migrate,
        idle_transaction_timeout=conf.database.idle_transaction_timeout,
        max_pool_size=conf.database.max_pool_size,
        max_overflow=conf.database.max_overflow,
        pool_timeout=conf.database.pool_timeout,
        event_retention=conf.database.event_retention_days * 86400.0,
        api_host=conf.api.host,
        api_port=conf.api.port,
        api_token=read_secret(conf.api.auth_token, conf.api.auth_token_file, what="api token"),
        auth_strategy=conf.api.auth_strategy,
        api_cert_file=conf.api.cert_file,
        api_key_file=conf.api.key_file,
        conf=conf,
        agent_key=masters[0] if masters else "",
        agent_previous_keys=masters[1:],
        agent_key_file=conf.agent.key_file,
        accept_master_key=conf.agent.accept_master_key,
        heartbeat_host=conf.agent.listen_host,
        heartbeat_port=conf.agent.listen_port,
        heartbeat_process=conf.agent.receiver_process,
        detection=DetectionSettings(
            heartbeat_interval=d.heartbeat_interval,
            suspect_after=d.suspect_after,
            failed_after=d.failed_after,
            probe_interval=d.probe_interval,
        ),
        recovery=RecoverySettings(
            tick=r.tick,
            max_parallel_evacuations=r.max_parallel_evacuations,
            max_failed_share=r.max_failed_share,
            step_attempts=r.step_attempts,
            retry_backoff=r.retry_backoff,
            retry_backoff_max=r.retry_backoff_max,
            fence_confirm_timeout=r.fence_confirm_timeout,
            evacuate_confirm_timeout=r.evacuate_confirm_timeout,
            evacuate_stall_timeout=r.evacuate_stall_timeout,
            max_duration=r.max_duration,
            poll_interval=r.poll_interval,
            poll_interval_max=r.poll_interval_max,
            workers=r.workers,
        ),
        self_fencing=SelfFencingSettings(
            lease_ttl=conf.self_fencing.lease_ttl,
            watchdog_timeout=conf.self_fencing.watchdog_timeout,
            margin=conf.self_fencing.margin,
            peer_interval=conf.self_fencing.peer_interval,
            peer_timeout=conf.self_fencing.peer_timeout,
        ),
        app_declarations_interval=r.app_declarations_interval,
        app_command_timeout=r.app_command_timeout,
        compute_driver=conf.compute.driver,
        compute_cloud=conf.compute.cloud,
        clusters_vigil_url=conf.clusters.vigil_url,
        compute_api_timeout=conf.compute.api_timeout,
        sim_url=conf.compute.sim_url,
        notifiers=tuple(conf.notifier.drivers),
        transport_url=conf.notifier.transport_url or "",
        topic=conf.notifier.topic,
        exchange=conf.notifier.exchange,
        coordination=CoordinationSettings(
            backend_url=conf.coordination.backend_url,
            member_id=conf.coordination.member_id or f"{socket.gethostname()}:{conf.api.port}",
            namespace=conf.coordination.namespace,
            lease_ttl=conf.coordination.lease_ttl,
            renew_interval=conf.coordination.renew_interval,
            call_timeout=conf.coordination.call_timeout,
            margin=conf.coordination.margin,
            owner_hint_ttl=conf.coordination.owner_hint_ttl,
            other_servers_interval=conf.coordination.other_servers_interval,
        ),
    )
    settings.validate()
    return settings


def apply_overrides(conf: cfg.ConfigOpts, overrides: Iterable[str]) -> None:
    """Apply ``group.option=value`` strings (the demo's and tests' way to set any option)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        group, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r}: expected group.option=value")
        try:
            opt = conf[group]._group._opts[name]["opt"]  # the registered Opt, for its type
        except (KeyError, cfg.NoSuchOptError) as exc:
            raise ConfigError(f"override {item!r}: no option {group}.{name}") from exc
        try:
            parsed = opt.type(value)
        except ValueError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from exc
        conf.set_override(name, parsed, group=group)


def load(
    argv: Sequence[str] | None = None,
    *,
    config_files: Sequence[str] | None = None,
    overrides: Iterable[str] = (),
    prog: str = "vigil-server",
) -> cfg.ConfigOpts:
    conf = make_conf()
    conf(
        args=list(argv or []),
        project="vigil",
        prog=prog,
        default_config_files=list(config_files) if config_files is not None else None,
    )
    apply_overrides(conf, overrides)
    return conf


def random_secret() -> str:
    """A URL-safe secret that never starts with "-", so that `--token SECRET`
    on a command line is not taken for an option (argparse rejects it)."""
    while True:
        secret = secrets.token_urlsafe(24)
        if not secret.startswith("-"):
            return secret
