"""Self-fencing on the host: pet the hardware watchdog only while the lease is valid.

The watchdog is armed (its device opened) at the first lease, not at start-up, so an
agent that starts while vigil-server is away does not reset its host. From then on,
when the lease runs out — the server stopped granting, or cannot be reached — petting
stops and the watchdog resets the host ``watchdog_timeout`` later. The server counts on
exactly that before it treats the host as fenced (see ``vigil.engine.lease``).

With peers (``vigil.agent.peers``), an expired lease is not yet the end: the agent asks
the other agents of its segment, and keeps petting only while a strict majority of the
segment has lost vigil-server too — so losing vigil resets nobody, while a host cut off
alone still resets.

An agent that stops cleanly disarms the watchdog with the magic close character; one
that crashes leaves it armed, and the host resets: a host whose HA agent died cannot
be trusted to stop its VMs when cut off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from vigil.agent.peers import PeerGuard

LOG = logging.getLogger("vigil.agent.selffence")


class Watchdog(Protocol):
    def pet(self) -> None: ...

    def close(self, *, disarm: bool) -> None: ...


class DeviceWatchdog:
    """A Linux watchdog device (/dev/watchdog: a hardware watchdog, or softdog).

    Opening the device arms it; every write pets it; writing ``V`` just before closing
    disarms it (the kernel's "magic close"). Its timeout is set where the device is
    configured (e.g. ``modprobe softdog soft_margin=8``) and must match
    ``[agent] watchdog_timeout``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def pet(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY)
            LOG.warning("watchdog %s armed", self.path)
        os.write(self._fd, b"\0")

    def close(self, *, disarm: bool) -> None:
        if self._fd is None:
            return
        if disarm:
            os.write(self._fd, b"V")
        os.close(self._fd)
        self._fd = None


class SelfFencer:
    """Pets ``watchdog`` every ``interval`` while the lease is valid, or, with ``peers``,
    while the peers vouch that vigil-server is gone for a majority of the segment."""

    def __init__(
        self,
        host: str,
        watchdog: Watchdog,
        *,
        interval: float,
        watchdog_timeout: float,
        monotonic: Callable[[], float] = time.monotonic,
        peers: PeerGuard | None = None,
    ) -> None:
        self._host = host
        self._peers = peers
        self._watchdog = watchdog
        self._interval = interval
        self._timeout = watchdog_timeout
        self._monotonic = monotonic
        self._expires = 0.0
        self._lock = threading.Lock()
        self._lost_logged = True  # nothing to report before the first lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="self-fencer", daemon=True)

    def on_lease(self, host: str, expires: float) -> None:
        if host != self._host:
            return
        with self._lock:
            if expires > self._expires:
                self._expires = expires

    def lease_valid(self) -> bool:
        with self._lock:
            return self._monotonic() < self._expires

    def armed(self) -> bool:
        with self._lock:
            return self._expires > 0.0

    def tick(self) -> bool:
        """One round: pet if the lease is valid (or the peers vouch). Returns whether it
        petted."""
        if self.lease_valid():
            self._watchdog.pet()
            self._lost_logged = False
            return True
        if self._peers is not None and self.armed():
            # The peer guard logs its verdicts itself, each on a change only.
            if self._peers.vouched(self._monotonic()):
                self._watchdog.pet()
                return True
            return False
        if not self._lost_logged:
            self._lost_logged = True
            LOG.critical(
                "host %s: lease from vigil-server lost; no longer petting the watchdog: "
                "this host resets within %.1fs unless the lease returns",
                self._host,
                self._timeout,
            )
        return False

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, disarm: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._watchdog.close(disarm=disarm)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except OSError as exc:
                LOG.error("host %s: cannot pet watchdog: %s", self._host, exc)
            self._stop.wait(self._interval)
