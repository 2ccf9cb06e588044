"""``vigil-server``: wires the store, drivers, heartbeat receiver, engine and API.

``VigilServer`` is also what the demo and the tests start in-process; ``main`` is the
process entry point (oslo.config command line: ``--config-file /etc/vigil/vigil.conf``).
``vigil-server agent-key HOST`` prints the key to install on HOST's agent, derived from
the server's current master key (``--peers``: the self-fencing agents' peer key).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence

import uvicorn

from vigil import config
from vigil.api.app import create_app
from vigil.api.auth import Authority
from vigil.api.masakari import masakari_app
from vigil.clock import Clock, SystemClock
from vigil.config import Settings
from vigil.drivers.compute import ComputeDriver, noting_projects
from vigil.drivers.coordination import build_coordinator
from vigil.drivers.errors import PermanentError
from vigil.drivers.fence_factory import ExtraBuilder, fence_device_factory
from vigil.drivers.fencing import FenceDevice
from vigil.drivers.network import NetworkDriver
from vigil.drivers.neutron import build_openstack_network
from vigil.drivers.notifier import LogNotifier, MemoryNotifier
from vigil.drivers.openstack import build_openstack_compute
from vigil.drivers.webhook import WebhookNotifier
from vigil.engine.app_engine import AppHealth
from vigil.engine.clusters import Clusters
from vigil.engine.engine import Engine
from vigil.engine.guest_engine import GuestEngine
from vigil.engine.heartbeat import HeartbeatReceiver, HeartbeatTable
from vigil.engine.known_hosts import KnownHosts
from vigil.engine.lease import LeaseKeeper, SelfFenceDevice
from vigil.engine.masakari_rules import SegmentTargets, replay_reports
from vigil.engine.outbox import OutboxDispatcher, Sink, webhook_sink
from vigil.engine.ownership import HostOwner, SegmentOwnership
from vigil.engine.service_keeper import ServiceKeeper
from vigil.metrics import ServerMetrics
from vigil.model import Host
from vigil.sim.api import CloudApi
from vigil.sim.drivers import SimCompute, sim_fence_builder
from vigil.sim.network import SimNetwork
from vigil.sim.rpc import RemoteCloud
from vigil.store.masakari import MasakariRecords
from vigil.store.sql import SqlStore, upgrade
from vigil.wire.keys import AgentKeys, host_key, peer_key
from vigil.wire.tls import Certificate, server_certificate

LOG = logging.getLogger("vigil.server")


def fence_factory(
    cloud: CloudApi | None, leases: LeaseKeeper | None = None
) -> Callable[[Host], list[FenceDevice]]:
    """Every fencing driver: sim, redfish, ipmi, fence-agent, and self-fence (the lease)."""
    extra: dict[str, ExtraBuilder] = {}
    if cloud is not None:
        extra["sim"] = sim_fence_builder(cloud)
    if leases is not None:
        extra["self-fence"] = lambda host, _options: SelfFenceDevice(leases, host)
    return fence_device_factory(extra_builders=extra)


class VigilServer:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        cloud: CloudApi | None = None,
        compute: ComputeDriver | None = None,
        fence_devices: Callable[[Host], list[FenceDevice]] | None = None,
        network: NetworkDriver | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        # HTTPS when a certificate is configured; checked before anything else starts.
        self.certificate: Certificate | None = None
        if settings.api_cert_file or settings.api_key_file:
            self.certificate = server_certificate(settings.api_cert_file, settings.api_key_file)
        if settings.auto_migrate:
            upgrade(settings.database_url)
        self.store = SqlStore(
            settings.database_url,
            idle_transaction_timeout=settings.idle_transaction_timeout,
            pool=(settings.max_pool_size, settings.max_overflow, settings.pool_timeout),
        )
        if compute is None and settings.compute_driver == "openstack":
            try:
                compute = build_openstack_compute(
                    settings.compute_cloud, timeout=settings.compute_api_timeout
                )
            except PermanentError as exc:  # bad credentials: refuse to start, no crash loop
                raise config.ConfigError(f"compute: {exc}") from exc
        if cloud is None and settings.sim_url:
            cloud = RemoteCloud(settings.sim_url)
        if compute is None:
            if cloud is None:
                raise config.ConfigError("compute.driver is sim: set compute.sim_url")
            compute = SimCompute(cloud)
        # Neutron, for in-guest clusters: through the same cloud as Nova, connected on
        # first use (a cloud whose Neutron vigil cannot use loses clusters, nothing else).
        if network is None and settings.compute_driver == "openstack":
            try:
                network = build_openstack_network(
                    settings.compute_cloud, timeout=settings.compute_api_timeout, check=False
                )
            except PermanentError as exc:
                LOG.warning("in-guest clusters unavailable: Neutron: %s", exc)
        if isinstance(compute, SimCompute) and isinstance(network, SimNetwork):
            sim_network = network
            compute.on_boot = lambda sid, port: sim_network.plug(port, sid)
        self.network = network
        # Every server Nova reports tells the store its project (tenancy, issue 18).
        self.compute = noting_projects(compute, self.store.note_instance_projects)
        # Heartbeats and reports are verified with the key derived for their host; the
        # key file is re-read by the heartbeat receiver (vigil.wire.keys).
        self.agent_keys = AgentKeys(
            (settings.agent_key, *settings.agent_previous_keys) if settings.agent_key else (),
            path=settings.agent_key_file,
            accept_masters=settings.accept_master_key,
        )
        self.heartbeats = HeartbeatTable(self.clock)
        # What the engine's snapshots say of the hosts, for the lease keeper to read: made
        # first, so that neither asks the other.
        self.known = KnownHosts(self.heartbeats, self.store.list_hosts())
        # Which segments this server acts on (vigil.engine.ownership): through the
        # coordination backend shared with the other servers, or alone.
        c = settings.coordination
        member = c.member_id or f"{socket.gethostname()}:{settings.api_port}"
        self.ownership = SegmentOwnership(
            store=self.store,
            coordinator=build_coordinator(
                c.backend_url,
                member,
                lease_ttl=c.lease_ttl,
                call_timeout=c.call_timeout,
                namespace=c.namespace,
            ),
            clock=self.clock,
            settings=c,
            on_change=lambda: self.engine.wake(),
        )
        self.leases = LeaseKeeper(
            self.clock,
            settings.self_fencing,
            may_grant=self._may_grant,
            members=lambda: [(h.name, h.segment) for h in self.known.all().values()],
            agent_known=self.known.agent_known,
            since=self.ownership.taken_at,
        )
        fence = fence_devices or fence_factory(cloud, self.leases)
        # Kept in memory when configured: the demo and the tests read what was published.
        self.memory = MemoryNotifier()
        self._bus_sinks = [self._bus_sink(name) for name in settings.notifiers]
        self._webhook_sinks: dict[tuple[str, str, str, tuple[str, ...]], Sink] = {}
        self.outbox = OutboxDispatcher(
            self.store,
            clock=self.clock,
            sinks=self._sinks,
            retention=settings.event_retention,
        )
        self.engine = Engine(
            store=self.store,
            compute=self.compute,
            fence_devices=fence,
            on_events=self.outbox.wake,
            settings=settings,
            clock=self.clock,
            heartbeats=self.heartbeats,
            leases=self.leases,
            known=self.known,
            ownership=self.ownership,
        )
        # In-guest clusters (issue 19): built by the engine's request workers.
        self.clusters = Clusters(
            store=self.store,
            compute=self.compute,
            network=self.network,
            requests=self.engine.requests,
            clock=self.clock,
            key=settings.agent_key.encode(),
            vigil_url=settings.clusters_vigil_url,
            wait=2 * settings.compute_api_timeout,
        )
        self.engine.use_cluster_peers(self.clusters.peers)
        # The reactions about one host at a time act as its segment's owner, under its
        # token: guest failures, host services, operator requests.
        self.host_owner = HostOwner(self.ownership, self._segment_of)
        self.ownership.set_busy(lambda s: self.engine.busy_in(s) or self.host_owner.busy_in(s))
        self.engine.requests.owner = self.host_owner
        # Guest-OS failures reported by the agents' libvirt monitors.
        # ...and the agents' service watch (nova-compute, libvirtd down: disable, not fence).
        self.guest = GuestEngine(
            store=self.store,
            compute=self.compute,
            clock=self.clock,
            on_events=self.outbox.wake,
            services=ServiceKeeper(
                store=self.store,
                compute=self.compute,
                clock=self.clock,
                on_events=self.outbox.wake,
            ),
            apps=AppHealth(
                store=self.store,
                compute=self.compute,
                clock=self.clock,
                key=settings.agent_key.encode(),
                on_events=self.outbox.wake,
                plan_ttl=settings.app_declarations_interval,
                command_timeout=settings.app_command_timeout,
            ),
        )
        self.guest.owner = self.host_owner
        if self.guest.services is not None:
            self.guest.services.owner = self.host_owner
        if self.guest.apps is not None:
            self.guest.apps.owner = self.host_owner
            self.guest.apps.set_wake(self.guest.wake)
        self.receiver = HeartbeatReceiver(
            self.heartbeats,
            keys=self.agent_keys,
            known_host=self.known.is_known,
            bind=(settings.heartbeat_host, settings.heartbeat_port),
            clock=self.clock,
            leases=self.leases,
            process=settings.heartbeat_process,
            owner_hint=(c.owner_hint_ttl, c.other_servers_interval),
        )
        self.engine.on_hearing = self.receiver.verify_only
        self.metrics = ServerMetrics(
            heartbeats=lambda: (
                self.receiver.received,
                self.receiver.refused,
                self.receiver.dropped,
                self.receiver.unverified,
            ),
            hosts=self.known.all,
            cycles=lambda: {
                (loop.name, reaction): spent
                for loop in (self.engine.loop, self.guest.loop)
                for reaction, spent in loop.spent.items()
            },
            outbox_lags=self.outbox.lags,
        )
        # Who may call what, on both APIs (vigil.api.auth): the static token, or Keystone.
        self.authority = Authority.from_conf(
            settings.auth_strategy, settings.api_token, settings.conf
        )
        self.app = create_app(
            store=self.store,
            engine=self.engine,
            compute=self.compute,
            token=settings.api_token,
            clock=self.clock,
            heartbeat_age=self.heartbeats.age,
            defaults=settings.recovery,
            guest=self.guest,
            agent_key=self.agent_keys,
            ownership=self.ownership,
            metrics=self.metrics.render,
            authority=self.authority,
            clusters=self.clusters,
        )
        # Masakari's instance-ha v1 API, for clients and monitors written for Masakari.
        self.masakari_records = MasakariRecords(settings.database_url)
        self.app.mount(
            "/instance-ha",
            masakari_app(
                store=self.store,
                engine=self.engine,
                compute=self.compute,
                token=settings.api_token,
                clock=self.clock,
                records=self.masakari_records,
                defaults=settings.recovery,
                apps=self.guest.apps,
                authority=self.authority,
            ),
        )
        # Masakari's recovery methods choose evacuation destinations; its reports that
        # were not acted on before a restart are handed to the engine again.
        self.engine.use_evacuation_targets(SegmentTargets(self.store, self.masakari_records))
        replay_reports(
            store=self.store, engine=self.engine, records=self.masakari_records, clock=self.clock
        )
        self._stop = threading.Event()
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=settings.api_host,
                port=settings.api_port,
                log_level="warning",
                # Leave logging to the process: uvicorn's dictConfig closes our handlers.
                log_config=None,
                lifespan="off",
                timeout_graceful_shutdown=3,
                ssl_certfile=settings.api_cert_file if self.certificate else None,
                ssl_keyfile=settings.api_key_file if self.certificate else None,
            )
        )
        self._threads: list[threading.Thread] = []

    @property
    def heartbeat_address(self) -> tuple[str, int]:
        return self.receiver.address

    @property
    def api_url(self) -> str:
        sock = self._uvicorn.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        scheme = "https" if self.certificate else "http"
        return f"{scheme}://{host}:{port}"

    def _segment_of(self, name: str | None) -> str | None:
        """``name``'s segment (a request about no host: the first segment by name)."""
        if name is None:
            return min((h.segment for h in self.known.all().values()), default=None)
        host = self.known.get(name)
        return host.segment if host is not None else None

    def _may_grant(self, name: str) -> bool:
        """A self-fencing lease goes only from the owner of the host's segment."""
        return self.known.may_grant(name) and self.host_owner.owns(name)

    def _bus_sink(self, name: str) -> Sink:
        if name == "memory":
            return Sink("memory", self.memory)
        if name == "log":
            return Sink("log", LogNotifier())
        if name == "messaging":
            from vigil.drivers.messaging import OsloMessagingNotifier

            if not self.settings.transport_url:
                raise config.ConfigError("notifier.drivers has messaging: set transport_url")
            return Sink(
                "messaging",
                OsloMessagingNotifier(
                    self.settings.transport_url,
                    topic=self.settings.topic,
                    exchange=self.settings.exchange,
                ),
            )
        raise config.ConfigError(f"notifier driver {name} unknown")

    def _sinks(self) -> list[Sink]:
        """The configured notifiers, and one sink per webhook subscription (built once per
        subscription: each keeps its HTTP connections open)."""
        sinks = list(self._bus_sinks)
        current = {}
        for sub in self.store.list_subscriptions():
            key = (sub.name, sub.url, sub.secret, sub.event_types)
            sink = self._webhook_sinks.get(key)
            if sink is None:
                sink = Sink(webhook_sink(sub.name), WebhookNotifier(sub.url, sub.secret), sub.wants)
            current[key] = sink
            sinks.append(sink)
        self._webhook_sinks = current
        return sinks

    def start(self) -> None:
        self.ownership.start()
        self.outbox.start()
        self.guest.start()
        self.receiver.start()
        engine = threading.Thread(
            target=self.engine.run, args=(self._stop,), name="engine", daemon=True
        )
        api = threading.Thread(target=self._uvicorn.run, name="api", daemon=True)
        self._threads = [engine, api]
        engine.start()
        api.start()
        deadline = time.monotonic() + 10
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not api.is_alive():
                raise RuntimeError(
                    f"API did not start on {self.settings.api_host}:{self.settings.api_port}"
                )
            time.sleep(0.01)
        LOG.info(
            "vigil-server: API on %s, heartbeats on %s:%s", self.api_url, *self.heartbeat_address
        )
        if self.certificate is not None:
            LOG.info("vigil-server: the API serves TLS with the certificate %s", self.certificate)

    def stop(self) -> None:
        self.app.state.closing.set()
        self._stop.set()
        self.engine.wake()
        self._uvicorn.should_exit = True
        for t in self._threads:
            t.join(timeout=10)
        self.receiver.stop()
        self.engine.close()
        self.ownership.stop()
        self.guest.stop()
        self.outbox.stop()
        self.store.close()
        self.masakari_records.close()


def agent_key(argv: Sequence[str]) -> int:
    """``vigil-server agent-key HOST [--config-file ...]``: print HOST's agent key (or,
    ``--peers``, the peer key), derived from the first master key of the server's
    configuration: what to install in that agent's ``[agent] key_file``."""
    parser = argparse.ArgumentParser(
        prog="vigil-server agent-key",
        description="Print the agent key of HOST, derived from the server's current master "
        "key ([agent] key_file): install it in that host's agent key_file.",
    )
    parser.add_argument("host", nargs="?", help="the compute host, as Nova names it")
    parser.add_argument(
        "--peers", action="store_true", help="print the peer key of self-fencing agents instead"
    )
    for option in ("--config-file", "--config-dir"):  # oslo.config's, passed on
        parser.add_argument(option, action="append", default=[], help="as vigil-server's")
    opts = parser.parse_args(argv)
    if (opts.host is None) != opts.peers:
        parser.error("give HOST, or --peers")
    oslo = [f"--config-file={f}" for f in opts.config_file]
    oslo += [f"--config-dir={d}" for d in opts.config_dir]
    try:
        conf = config.load(oslo)
        masters = config.read_secrets(conf.agent.key, conf.agent.key_file, what="agent key")
    except config.ConfigError as exc:
        LOG.error("configuration refused: %s", exc)
        return 2
    if not masters:
        LOG.error("configuration refused: agent.key (or agent.key_file) must be set")
        return 2
    print(peer_key(masters[0]) if opts.peers else host_key(masters[0], opts.host))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["agent-key"]:
        return agent_key(args[1:])
    try:
        conf = config.load(args)
        settings = config.settings_from_conf(conf)
    except config.ConfigError as exc:
        LOG.error("configuration refused: %s", exc)
        return 2
    try:
        server = VigilServer(settings)
    except config.ConfigError as exc:
        LOG.error("configuration refused: %s", exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
