"""Where heartbeats go: every address of every configured server, kept up to date.

An agent is configured with each vigil-server (``agent.servers = a:7000, b:7000, c:7000``)
or with one name that resolves to all of them (``agent.servers = vigil-servers:7000``,
a DNS name, or an /etc/hosts name, with one address per server). Every heartbeat goes
to every address (each server keeps hearing every host, so that a new owner knows at
once which hosts are alive), so a name counts for each of its addresses, not for one.

Names are resolved again every ``interval`` seconds on a thread of this class's own: a
slow or dead DNS server never delays a heartbeat (the sender only reads the last list),
and servers added to or removed from the name are followed without restarting the
agent. A name that cannot be resolved keeps the addresses it had. Changes and failures
are logged when they happen, not at every resolution.

(The stdlib resolver, ``socket.getaddrinfo``, is the system's: /etc/hosts, DNS, NSS.
No library does this periodic refresh for a UDP sender; the loop is short.)
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

LOG = logging.getLogger(__name__)

Address = tuple[str, int]
Lookup = Callable[..., list[Any]]


def is_literal(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def expand(
    entries: Sequence[Address], lookup: Lookup, last: dict[Address, list[Address]]
) -> tuple[dict[Address, list[Address]], dict[Address, str]]:
    """Each entry's addresses (an IPv4 literal is its own), and why a name could not be
    resolved (it keeps ``last``'s addresses then)."""
    found: dict[Address, list[Address]] = {}
    errors: dict[Address, str] = {}
    for entry in entries:
        host, port = entry
        if is_literal(host):
            found[entry] = [entry]
            continue
        try:
            infos = lookup(host, port, socket.AF_INET, socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            errors[entry] = str(exc) or type(exc).__name__
            found[entry] = list(last.get(entry, []))
            continue
        addresses = sorted({(str(info[4][0]), port) for info in infos})
        if not addresses:
            errors[entry] = "no IPv4 address"
            found[entry] = list(last.get(entry, []))
            continue
        found[entry] = addresses
    return found, errors


def flatten(found: dict[Address, list[Address]]) -> list[Address]:
    """Every address once, in the order of the entries."""
    out: list[Address] = []
    for addresses in found.values():
        out.extend(a for a in addresses if a not in out)
    return out


class ServerAddresses:
    """The addresses of ``entries`` (HOST:PORT, HOST a name or an IPv4 address), resolved
    now and then every ``interval`` seconds (only if some entry is a name)."""

    def __init__(
        self,
        entries: Sequence[Address],
        *,
        interval: float = 30.0,
        lookup: Lookup = socket.getaddrinfo,
    ) -> None:
        if not entries:
            raise ValueError("servers is empty: heartbeats need at least one server")
        self.entries = list(entries)
        self._interval = interval
        self._lookup = lookup
        self._found: dict[Address, list[Address]] = {}
        self._errors: dict[Address, str] = {}
        self._current: list[Address] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    @property
    def names(self) -> list[Address]:
        return [e for e in self.entries if not is_literal(e[0])]

    def current(self) -> list[Address]:
        """The addresses to send to now (a list that is replaced, never changed)."""
        return self._current

    def refresh(self) -> None:
        found, errors = expand(self.entries, self._lookup, self._found)
        for entry in self.names:
            host, port = entry
            error, before = errors.get(entry), self._errors.get(entry)
            if error and error != before:
                kept = ", ".join(f"{h}:{p}" for h, p in found[entry]) or "nothing"
                LOG.error(
                    "servers %s:%s: cannot resolve (%s); still sending to %s",
                    host,
                    port,
                    error,
                    kept,
                )
            elif not error and before:
                LOG.warning("servers %s:%s: resolved again", host, port)
            if found[entry] != self._found.get(entry) and found[entry]:
                first = entry not in self._found
                LOG.log(
                    logging.INFO if first else logging.WARNING,
                    "servers %s:%s resolve to %s%s",
                    host,
                    port,
                    ", ".join(h for h, _ in found[entry]),
                    "" if first else " from now",
                )
        self._found, self._errors = found, errors
        self._current = flatten(found)

    def start(self) -> None:
        if self.names and self._interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="resolve-servers", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except Exception:  # the resolver thread must outlive one bad round
                LOG.exception("resolving the servers failed")
