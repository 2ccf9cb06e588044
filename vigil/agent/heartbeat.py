"""Sending heartbeats: one sender serves one real host, or many simulated ones."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from vigil.agent.protocol import Heartbeat, encode

LOG = logging.getLogger(__name__)


class HeartbeatSender:
    """Sends a signed heartbeat for each of ``hosts`` every ``interval`` seconds.

    ``alive(host)`` decides per beat whether that host can send now (the simulated cloud
    uses it for power loss, isolation and hung hosts); ``delay(host)`` returns an extra
    delay or None to drop the datagram (simulated loss and jitter). A real agent passes
    one host and neither.
    """

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        server: tuple[str, int],
        key: bytes,
        interval: float,
        alive: Callable[[str], bool] | None = None,
        delay: Callable[[str], float | None] | None = None,
    ) -> None:
        self._hosts = list(hosts)
        self._server = server
        self._key = key
        self._interval = interval
        self._alive = alive
        self._delay = delay
        self._boot = {h: uuid.uuid4().hex for h in self._hosts}
        self._seq = dict.fromkeys(self._hosts, 0)
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._thread = threading.Thread(target=self._run, name="heartbeat-sender", daemon=True)
        self._timers: list[threading.Timer] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for t in self._timers:
            t.cancel()
        self._sock.close()

    def restart_agent(self, host: str) -> None:
        """A new agent process on ``host``: new boot id, sequence from zero."""
        self._boot[host] = uuid.uuid4().hex
        self._seq[host] = 0

    def _send(self, datagram: bytes, host: str) -> None:
        try:
            self._sock.sendto(datagram, self._server)
        except OSError as exc:  # the server being away must not stop the agent
            LOG.warning("host %s: heartbeat not sent: %s", host, exc)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            for host in self._hosts:
                if self._alive is not None and not self._alive(host):
                    continue
                self._seq[host] += 1
                datagram = encode(
                    Heartbeat(host, self._boot[host], self._seq[host], time.time()), self._key
                )
                extra = 0.0 if self._delay is None else self._delay(host)
                if extra is None:
                    continue  # lost on the way
                if extra > 0:
                    timer = threading.Timer(extra, self._send, (datagram, host))
                    timer.daemon = True
                    timer.start()
                    self._timers = [t for t in self._timers if t.is_alive()]
                    self._timers.append(timer)
                else:
                    self._send(datagram, host)
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
