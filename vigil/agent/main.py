"""``vigil-agent``: the process on each compute host."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence

from vigil import config
from vigil.agent.heartbeat import HeartbeatSender

LOG = logging.getLogger("vigil.agent")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        conf = config.load(sys.argv[1:] if argv is None else argv, prog="vigil-agent")
        key = config.read_secret(conf.agent.key, conf.agent.key_file, what="agent key")
        if not key:
            raise config.ConfigError("agent.key (or agent.key_file) must be set")
        host = conf.agent.host or socket.gethostname()
        interval = conf.detection.heartbeat_interval
    except config.ConfigError as exc:
        LOG.error("configuration refused: %s", exc)
        return 2
    sender = HeartbeatSender(
        [host],
        server=(conf.agent.server_host, conf.agent.server_port),
        key=key.encode(),
        interval=interval,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    LOG.info(
        "host %s: sending heartbeats to %s:%s every %ss",
        host,
        conf.agent.server_host,
        conf.agent.server_port,
        interval,
    )
    sender.start()
    stop.wait()
    sender.stop()
    return 0
