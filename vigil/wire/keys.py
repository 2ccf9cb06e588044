"""Agent keys: one per host, derived from the servers' master keys, rotated without a restart.

Each agent holds the key of its own host only:
``host_key(master, host) = hex(HMAC-SHA256(master, b"vigil-agent-host-key:" + host))``.
It signs that host's heartbeats and reports; the servers keep only the master keys and
verify a message with the key of the host it says it comes from, so a host's key signs
nothing of another host's (a compromised host cannot hide a dead one, nor fake another's
life or reports). ``vigil-server agent-key HOST`` prints the key to install on HOST.

Self-fencing agents check with each other (``vigil.agent.peers``), which no host key can
do: those messages are signed with the peer key, the same on every agent
(``peer_key(master)``, ``vigil-server agent-key --peers``). A host holding it can forge
peer answers, as any host could forge anything with the single shared key before.

Rotation, with no restart and no missed heartbeat (the key files are re-read every
``CHECK_EVERY`` seconds when their content changed): the servers' key file holds one
master key per line, the first current and the others still accepted.

1. Put the new master first in every server's key file ("new", then "old").
2. On each host, install the key ``vigil-server agent-key HOST`` now prints (and, with
   self-fencing peers, the new peer key as the first line of the peer key file, the old
   one second); each agent signs with it from its next heartbeat. The servers log each
   host heard with an old key, once: the hosts left to do.
3. Remove the old master from the servers' key files (and the old peer key from the
   agents'): an agent still holding a key derived from it is refused from then on.

What a server sends back to an agent (owner hints, lease grants, the answer to its
application check report) is signed with the key the agent's message was verified
with: the key that agent holds, whichever master it came from.

The demo's and the benchmark's simulated agents sign every host's heartbeats in one
process with one key: ``accept_masters`` lets a server also take a master key itself as
any host's key. Never for real agents: a host holding a master signs for all.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from vigil.config import ConfigError, read_secrets

LOG = logging.getLogger(__name__)
HOST_LABEL = b"vigil-agent-host-key:"
PEER_LABEL = b"vigil-agent-peer-key"
CHECK_EVERY = 2.0  # seconds between two reads of a key file
CACHE_HOSTS = 100_000  # derived keys kept; beyond, the cache starts again (forged names)
T = TypeVar("T")


class BadSignature(Exception):
    """A message whose signature does not match the key tried (base of the wire
    modules' signature errors, so that the next key can be tried)."""


def host_key(master: str, host: str) -> str:
    """The key of ``host``'s agent, derived from ``master`` (hex)."""
    return hmac.new(master.encode(), HOST_LABEL + host.encode(), "sha256").hexdigest()


def peer_key(master: str) -> str:
    """The key self-fencing agents sign their peer checks with, derived from ``master``."""
    return hmac.new(master.encode(), PEER_LABEL, "sha256").hexdigest()


class KeyFile:
    """A key file, re-read by ``changed`` (what the caller calls every ``CHECK_EVERY``
    seconds): a file that cannot be read, or holds no key, keeps the keys read last."""

    def __init__(self, path: str, keys: Sequence[str]) -> None:
        self.path = path
        self.keys = tuple(keys)
        self._failing = ""

    def changed(self) -> tuple[str, ...] | None:
        """The file's keys when they differ from the last read (None: unchanged). A
        few hundred bytes read: the content itself is compared, whatever the mtime."""
        try:
            keys = read_secrets(None, self.path, what="key file")
        except ConfigError as exc:
            if str(exc) != self._failing:  # said once per cause
                self._failing = str(exc)
                LOG.error("%s: keeping the keys read before", exc)
            return None
        self._failing = ""
        if keys == self.keys:
            return None
        self.keys = keys
        return keys


class AgentKeys:
    """The servers' side: master keys (current first) and each host's keys derived from
    them, cached (verifying a heartbeat is on the hot path: a dict lookup, not two
    HMACs). ``refresh`` re-reads the key file. Thread-safe: a refresh replaces the
    masters and the cache at once. Picklable (the receiving child gets its copy)."""

    def __init__(
        self, masters: Sequence[str], *, path: str | None = None, accept_masters: bool = False
    ) -> None:
        self._file = KeyFile(path, masters) if path else None
        self._accept = accept_masters
        self._set(tuple(masters))

    @classmethod
    def of(cls, keys: AgentKeys | str) -> AgentKeys:
        """``keys``, or the one master key ``keys`` ("": none, every message refused)."""
        return keys if isinstance(keys, AgentKeys) else cls((keys,) if keys else ())

    def _set(self, masters: tuple[str, ...]) -> None:
        self.masters = masters
        # host -> for_host(host); read directly where a method call counts (the receiver)
        self.cache: dict[str, tuple[bytes, ...]] = {}

    def for_host(self, host: str) -> tuple[bytes, ...]:
        """The keys a message of ``host`` may be signed with, the current first: the
        key derived from each master (each followed by the master itself, with
        ``accept_masters``); none without a master."""
        cache = self.cache
        keys = cache.get(host)
        if keys is None:
            derived = []
            for master in self.masters:
                derived.append(host_key(master, host).encode())
                if self._accept:
                    derived.append(master.encode())
            keys = tuple(derived)
            if len(cache) >= CACHE_HOSTS:
                cache.clear()
            cache[host] = keys
        return keys

    def is_previous(self, index: int) -> bool:
        """Whether ``for_host(...)[index]`` comes from a previous master (not the
        current one): its agent has a key to replace."""
        return index >= (2 if self._accept else 1)

    def refresh(self) -> bool:
        """Re-read the key file (if any); True when its keys changed (and are now used)."""
        if self._file is None:
            return False
        masters = self._file.changed()
        if masters is None:
            return False
        self._set(masters)
        return True

    def first_valid(self, host: str, attempt: Callable[[bytes], T]) -> tuple[T, bytes]:
        """``attempt(key)`` with each of ``host``'s keys, the current first, until one
        raises no ``BadSignature``: its result and that key (the last ``BadSignature``
        when none does)."""
        error: BadSignature = BadSignature("no agent key")
        for key in self.for_host(host):
            try:
                return attempt(key), key
            except BadSignature as exc:
                error = exc
        raise error
