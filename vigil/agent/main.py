"""``vigil-agent``: the process on each compute host.

Its key (``[agent] key_file``) is its host's own (``vigil.wire.keys``), and the peer key
of self-fencing agents is in ``peer_key_file``: both files are re-read every few seconds
and a new key is used at once, so a rotation needs no restart.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from vigil import config
from vigil.agent.app_checks import AppChecks, LibvirtConnection
from vigil.agent.guest_agent import GuestAgent
from vigil.agent.heartbeat import HeartbeatSender, read_kernel_boot_id
from vigil.agent.libvirt_monitor import LibvirtMonitor, ReportSender
from vigil.agent.peers import AgentState, PeerGuard, PeerLink, parse_peers
from vigil.agent.selffence import DeviceWatchdog, SelfFencer
from vigil.agent.services import ServiceWatch, parse_watched
from vigil.wire.keys import CHECK_EVERY, KeyFile
from vigil.wire.tls import client_context

LOG = logging.getLogger("vigil.agent")


class _Signer(Protocol):
    key: bytes


def follow_key_files(
    stop: threading.Event,
    host_file: KeyFile | None,
    signers: Sequence[_Signer],
    peer_file: KeyFile | None,
    link: PeerLink | None,
) -> None:
    """Every CHECK_EVERY seconds, re-read the key files: a new host key signs from the
    next message on; new peer keys (the first signs) from the next peer check."""
    while not stop.wait(CHECK_EVERY):
        if host_file is not None and (keys := host_file.changed()) is not None:
            for signer in signers:
                signer.key = keys[0].encode()
            LOG.warning("agent key file %s changed: signing with its new key", host_file.path)
        if peer_file is not None and link is not None and (keys := peer_file.changed()):
            link.keys = tuple(k.encode() for k in keys)
            LOG.warning("peer key file %s changed: %d key(s) accepted", peer_file.path, len(keys))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        conf = config.load(sys.argv[1:] if argv is None else argv, prog="vigil-agent")
        key = config.read_secret(conf.agent.key, conf.agent.key_file, what="agent key")
        if not key:
            raise config.ConfigError(
                "agent.key (or agent.key_file) must be set: this host's key "
                "(vigil-server agent-key HOST prints it)"
            )
        peer_keys = config.read_secrets(
            conf.agent.peer_key, conf.agent.peer_key_file, what="peer key"
        )
        if conf.agent.self_fencing and not peer_keys:
            raise config.ConfigError(
                "agent.self_fencing needs agent.peer_key (or agent.peer_key_file): "
                "vigil-server agent-key --peers prints it"
            )
        host = conf.agent.host or socket.gethostname()
        interval = conf.detection.heartbeat_interval
        servers = config.agent_servers(conf)
        server_urls = config.agent_server_urls(conf)
        tls = client_context(conf.agent.api_ca_file)  # always verified: no opt-out
    except config.ConfigError as exc:
        LOG.error("configuration refused: %s", exc)
        return 2
    except ValueError as exc:
        LOG.error("configuration refused: agent.api_ca_file: %s", exc)
        return 2
    fencer: SelfFencer | None = None
    guard: PeerGuard | None = None
    link: PeerLink | None = None
    if conf.agent.self_fencing:
        if conf.agent.watchdog_timeout < 2 * interval:
            LOG.error(
                "configuration refused: agent.watchdog_timeout (%ss) must be at least two "
                "heartbeat intervals (%ss): the watchdog would fire between two pets",
                conf.agent.watchdog_timeout,
                2 * interval,
            )
            return 2
        sf = conf.self_fencing
        try:
            config.SelfFencingSettings(
                lease_ttl=sf.lease_ttl,
                watchdog_timeout=conf.agent.watchdog_timeout,
                margin=sf.margin,
                peer_interval=sf.peer_interval,
                peer_timeout=sf.peer_timeout,
            ).validate(config.DetectionSettings(heartbeat_interval=interval))
            peers = parse_peers(conf.agent.peers, conf.agent.peer_port)
        except (config.ConfigError, ValueError) as exc:
            LOG.error("configuration refused: %s", exc)
            return 2
        state = AgentState(Path(conf.agent.state_file))
        guard = PeerGuard(
            host,
            list(peers),
            peer_interval=sf.peer_interval,
            peer_timeout=sf.peer_timeout,
            send=lambda nonce: link.ask(nonce) if link is not None else None,
            remembered=state.load(),
            on_segment=state.save,
        )
        try:
            link = PeerLink(
                guard,
                key=peer_keys[0].encode(),
                bind=(conf.agent.peer_host, conf.agent.peer_port),
                peers=peers,
            )
            link.keys = tuple(k.encode() for k in peer_keys)
        except OSError as exc:
            LOG.error(
                "configuration refused: peer port %s:%s: %s",
                conf.agent.peer_host,
                conf.agent.peer_port,
                exc,
            )
            return 2
        fencer = SelfFencer(
            host,
            DeviceWatchdog(conf.agent.watchdog_device),
            interval=interval,
            watchdog_timeout=conf.agent.watchdog_timeout,
            peers=guard,
        )
    sender = HeartbeatSender(
        [host],
        servers=servers,
        key=key.encode(),
        interval=interval,
        watchdog=conf.agent.watchdog_timeout if fencer else 0.0,
        on_lease=fencer.on_lease if fencer else None,
        on_grant=guard.on_grant if guard else None,
        kernel_boot_id=read_kernel_boot_id,
        peer_window=guard.window if guard else 0.0,
        resolve_interval=conf.agent.resolve_interval,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    LOG.info(
        "host %s: sending heartbeats to %s every %ss",
        host,
        ", ".join(f"{h}:{p}" for h, p in sender.servers),
        interval,
    )
    monitor: LibvirtMonitor | None = None
    reports: ReportSender | None = None
    if conf.agent.libvirt_uri:
        if not server_urls:
            LOG.error(
                "configuration refused: agent.libvirt_uri needs agent.server_url "
                "(or agent.server_urls)"
            )
            return 2
        reports = ReportSender(host=host, server_urls=server_urls, key=key.encode(), tls=tls)
        monitor = LibvirtMonitor(host=host, uri=conf.agent.libvirt_uri, report=reports.put)
        reports.start()
        monitor.start()
        LOG.info("host %s: watching guests on %s", host, conf.agent.libvirt_uri)
    app_checks: AppChecks | None = None
    connection: LibvirtConnection | None = None
    if conf.agent.libvirt_uri and server_urls and conf.agent.app_checks:
        connection = LibvirtConnection(conf.agent.libvirt_uri)
        app_checks = AppChecks(
            host=host,
            connection=connection,
            guest_agent=GuestAgent(connection),
            server_urls=server_urls,
            key=key.encode(),
            workers=conf.agent.app_check_workers,
            report_interval=conf.agent.app_report_interval,
            tls=tls,
        )
        app_checks.start()
        LOG.info(
            "host %s: running the application checks of its guests (%d workers)",
            host,
            conf.agent.app_check_workers,
        )
    services: ServiceWatch | None = None
    if server_urls and conf.agent.watch_service:
        try:
            watched = parse_watched(conf.agent.watch_service)
        except ValueError as exc:
            LOG.error("configuration refused: agent.watch_service: %s", exc)
            return 2
        services = ServiceWatch(
            host=host,
            server_urls=server_urls,
            key=key.encode(),
            services=watched,
            interval=conf.agent.service_check_interval,
            down_after=conf.agent.service_down_after,
            tls=tls,
        )
        services.start()
        LOG.info("host %s: watching services %s", host, ", ".join(watched))
    signers: list[_Signer] = [c for c in (sender, reports, app_checks, services) if c is not None]
    host_file = KeyFile(conf.agent.key_file, [key]) if conf.agent.key_file else None
    peer_file = KeyFile(conf.agent.peer_key_file, peer_keys) if conf.agent.peer_key_file else None
    if host_file is not None or peer_file is not None:
        threading.Thread(
            target=follow_key_files,
            args=(stop, host_file, signers, peer_file, link),
            name="key-files",
            daemon=True,
        ).start()
    sender.start()
    if fencer is not None:
        LOG.info(
            "host %s: self-fencing with %s (%ss); armed at the first lease",
            host,
            conf.agent.watchdog_device,
            conf.agent.watchdog_timeout,
        )
        fencer.start()
    if link is not None:
        link.start()
        LOG.info(
            "host %s: answering peers on %s:%s; %d peers configured",
            host,
            *link.address,
            len(conf.agent.peers),
        )
    stop.wait()
    if link is not None:
        link.stop()
    if services is not None:
        services.stop()
    if app_checks is not None and connection is not None:
        app_checks.stop()
        connection.close()
    if monitor is not None and reports is not None:
        monitor.stop()
        reports.stop()
    sender.stop()
    if fencer is not None:
        fencer.stop(disarm=True)  # a clean stop must not reset the host
    return 0
