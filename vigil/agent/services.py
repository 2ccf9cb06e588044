"""The agent's service watch: do nova-compute and libvirtd run on this host?

Each watched service is a name and a regular expression searched in the command lines of
the host's processes (arguments joined by spaces), as ``pgrep -f`` does and as
masakari-monitors' process monitor does with ``ps``; psutil reads them. A service is
**down** once ``down_after`` checks in a row found no process (systemd restarting it
between two checks is not a failure), **up** at the first check that finds one.

The state of all watched services is a snapshot, posted signed to vigil-server
(``vigil.wire.reports.encode_services``) at start, at each change, and every
``resend_interval`` seconds without one (a server restarted on an empty database hears
it). The latest snapshot not yet acknowledged is retried with backoff; an older one is
never sent after a newer one. The server disables the host's compute service for
scheduling while a service is down, and does not fence the host for it
(``vigil.engine.services``). With several servers (``server_urls``) a snapshot goes to
the first that answers (``vigil.agent.servers``).

Defaults (``[agent] watched_services``): ``nova-compute`` and ``libvirtd`` (or its
modular successor ``virtqemud``).
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import psutil

from vigil.agent.servers import Failures, ServerUrls, urls_given
from vigil.model import ServiceState
from vigil.wire.reports import encode_services

LOG = logging.getLogger("vigil.agent.services")

DEFAULT_SERVICES: Mapping[str, str] = {
    "nova-compute": r"nova-compute",
    "libvirtd": r"(^|/)(libvirtd|virtqemud)( |$)",
}  # as the option's default (vigil.config)


def parse_watched(items: Iterable[str]) -> dict[str, str]:
    """``["NAME=REGEX", ...]`` (the ``watch_service`` option) → {name: regex}; ValueError
    names the bad item."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, rx = item.partition("=")
        name = name.strip()
        if not sep or not name or not rx:
            raise ValueError(f"{item!r} is not NAME=REGEX")
        try:
            re.compile(rx)
        except re.error as exc:
            raise ValueError(f"{item!r}: bad regular expression: {exc}") from exc
        if name in out:
            raise ValueError(f"{name!r} given twice")
        out[name] = rx
    return out


def command_lines() -> list[tuple[int, str]]:
    """(pid, command line) of every process of this host that can be read."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline")
        if cmdline:  # kernel threads and zombies have none
            out.append((int(proc.info["pid"]), " ".join(cmdline)))
    return out


@dataclass
class _Watched:
    name: str
    pattern: re.Pattern[str]
    state: ServiceState | None = None
    misses: int = 0


class ServiceWatch:
    """Checks the watched services every ``interval`` seconds and posts snapshots."""

    def __init__(
        self,
        *,
        host: str,
        server_url: str = "",
        server_urls: Sequence[str] | None = None,
        key: bytes,
        services: Mapping[str, str] = DEFAULT_SERVICES,
        interval: float = 1.0,
        down_after: int = 2,
        resend_interval: float = 60.0,
        processes: Callable[[], Iterable[tuple[int, str]]] = command_lines,
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls`` verifies an https:// server's certificate (None: against the system's
        trust store)."""
        if down_after < 1:
            raise ValueError("down_after must be at least 1")
        self._host = host
        self._servers = ServerUrls(urls_given(server_url, server_urls), tls)
        self._failures = Failures(LOG, f"host {host}: service reports")
        self._path = f"/v1/agents/{host}/services"
        self.key = key  # the host's agent key; replaced when its key file changes
        self._watched = [_Watched(name, re.compile(rx)) for name, rx in services.items()]
        self._interval = interval
        self._down_after = down_after
        self._resend = resend_interval
        self._processes = processes
        self._clock = clock
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="service-watch", daemon=True)
        self.acknowledged = 0  # snapshots the server accepted (tests and logs)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def states(self) -> dict[str, ServiceState]:
        return {w.name: w.state for w in self._watched if w.state is not None}

    def check(self) -> bool:
        """One look at the processes; True when a service changed state."""
        now = self._clock()
        try:
            lines = list(self._processes())
        except (psutil.Error, OSError) as exc:
            LOG.warning("host %s: reading the process table failed: %s", self._host, exc)
            return False
        changed = False
        for w in self._watched:
            pid = next((p for p, line in lines if w.pattern.search(line)), None)
            if pid is not None:
                w.misses = 0
                if w.state is None or not w.state.up:
                    w.state = ServiceState(True, now, f"pid {pid}")
                    changed = True
                    LOG.info("host %s: %s runs (pid %d)", self._host, w.name, pid)
                continue
            w.misses += 1
            if w.misses < self._down_after:
                continue  # one miss is not a failure (nor, at start, a verdict)
            if w.state is None or w.state.up:
                w.state = ServiceState(
                    False, now, f"no process matches {w.pattern.pattern!r} for {w.misses} checks"
                )
                changed = True
                LOG.warning("host %s: %s is DOWN: %s", self._host, w.name, w.state.detail)
        return changed

    def _run(self) -> None:
        pending: bytes | None = None
        last_sent = float("-inf")
        delay = 0.0
        next_try = 0.0
        with self._servers.client(self._timeout) as client:
            while not self._stop.is_set():
                changed = self.check()
                now = time.monotonic()
                complete = all(w.state is not None for w in self._watched)
                if complete and (changed or now - last_sent >= self._resend):
                    pending = encode_services(self._host, self._clock(), self.states())
                    last_sent, next_try, delay = now, now, 0.0
                if pending is not None and now >= next_try:
                    error = self._servers.post(client, self._path, pending, self.key)
                    if error is None:
                        pending = None
                        self.acknowledged += 1
                        self._failures.succeeded()
                    else:
                        delay = min(10.0, max(0.5, delay * 2))
                        next_try = now + delay
                        self._failures.failed(error)
                self._stop.wait(self._interval)
