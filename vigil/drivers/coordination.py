"""Coordination between vigil-servers: group membership and one lease-backed lock per
owned segment, through tooz (etcd, Redis, …), or alone (``LocalCoordinator``).

``Coordinator`` is what the ownership keeper (``vigil.engine.ownership``) needs: join
the group, renew (``heartbeat``: the membership and every held lock's lease), list the
live members, take a lock without waiting, tell whether each held lock is still held,
release one. Every call is bounded by the backend's ``timeout`` and raises
``CoordinationError`` when the backend cannot be reached.

tooz serves membership and locks; it has no leader election on etcd, and a lock per
segment is the ownership token anyway. Where it falls short, this module says so:
tooz's etcd lock renews its lease without looking at the answer, so a lock whose lease
expired while this process was stopped would still be taken as held; ``still_held``
asks etcd (the lease's TTL) or Redis (the key's token) instead.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
import urllib.parse
import warnings
from collections.abc import Iterator
from typing import Any

from vigil.drivers.errors import DriverError

LOG = logging.getLogger(__name__)


class CoordinationError(DriverError):
    """The coordination backend did not answer (or refused)."""


class Coordinator(abc.ABC):
    """One server's handle on the coordination backend."""

    member: str

    @abc.abstractmethod
    def start(self) -> None:
        """Connect and join the group of servers."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release every lock, leave the group, disconnect (best effort)."""

    @abc.abstractmethod
    def heartbeat(self) -> None:
        """Renew the membership and every held lock's lease."""

    @abc.abstractmethod
    def members(self) -> frozenset[str]:
        """The live members of the group (this one included once joined)."""

    @abc.abstractmethod
    def try_lock(self, name: str) -> bool:
        """Take lock ``name`` if free; never waits. True if held now."""

    @abc.abstractmethod
    def still_held(self, name: str) -> bool:
        """Whether the backend still holds lock ``name`` for this member."""

    @abc.abstractmethod
    def release(self, name: str) -> None:
        """Give lock ``name`` up (nothing if not held)."""

    @property
    @abc.abstractmethod
    def backend(self) -> str:
        """The backend's URL without credentials, for ``vigil status``."""


class LocalCoordinator(Coordinator):
    """No backend: one server alone owns every segment (the embedded default). Two
    servers sharing one database this way would each believe they own everything — the
    epoch check of the store still refuses the writes of the one that took a segment
    first, but use a real backend to run several."""

    def __init__(self, member: str) -> None:
        self.member = member
        self._held: set[str] = set()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._held.clear()

    def heartbeat(self) -> None:
        pass

    def members(self) -> frozenset[str]:
        return frozenset({self.member})

    def try_lock(self, name: str) -> bool:
        self._held.add(name)
        return True

    def still_held(self, name: str) -> bool:
        return name in self._held

    def release(self, name: str) -> None:
        self._held.discard(name)

    @property
    def backend(self) -> str:
        return "local (this server alone)"


def redacted(url: str) -> str:
    """``url`` without its password (Redis URLs may carry one)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class ToozCoordinator(Coordinator):
    """Membership and locks through a tooz backend URL, e.g.
    ``etcd3+http://10.0.0.1:2379?timeout=3`` or ``redis://10.0.0.1:6379?timeout=3``.

    ``lease_ttl`` (whole seconds: etcd leases count in seconds) is given to the backend
    as the lifetime of the membership and of each lock: a member that stops renewing
    is gone, and its locks free, that long after its last renewal."""

    def __init__(
        self,
        url: str,
        member: str,
        *,
        lease_ttl: int,
        call_timeout: float,
        namespace: str = "vigil",
    ) -> None:
        coordination = _tooz()

        self.member = member
        self._url = url
        self._group = f"{namespace}-servers".encode()
        self._prefix = f"{namespace}-"  # of every lock's name
        params = {
            "timeout": str(max(1, round(call_timeout))),
            "lock_timeout": str(lease_ttl),
            "membership_timeout": str(lease_ttl),
        }
        if url.startswith("redis"):
            params["socket_timeout"] = str(call_timeout)
        self._coordinator = coordination.get_coordinator(_with_params(url, params), member.encode())
        self._locks: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        return redacted(self._url)

    def start(self) -> None:
        from tooz import coordination

        with _errors("start"):
            self._coordinator.start(start_heart=False)
            _no_client_retries(self._coordinator)
            with contextlib.suppress(coordination.GroupAlreadyExist):
                self._coordinator.create_group(self._group).get()
            with contextlib.suppress(coordination.MemberAlreadyExist):
                self._coordinator.join_group(self._group).get()

    def stop(self) -> None:
        for name in list(self._locks):
            try:
                self.release(name)
            except CoordinationError as exc:
                LOG.warning("lock %s not released: %s", name, exc)
        try:
            self._coordinator.leave_group(self._group).get()
        except Exception as exc:  # leaving is a courtesy: the lease ends it anyway
            LOG.info("did not leave the group of servers: %s", exc)
        try:
            self._coordinator.stop()
        except Exception as exc:
            LOG.info("coordination backend not closed cleanly: %s", exc)

    def heartbeat(self) -> None:
        from tooz import coordination

        with _errors("heartbeat"):
            self._coordinator.heartbeat()
            # after an expiry the member must join again
            with contextlib.suppress(coordination.MemberAlreadyExist):
                self._coordinator.join_group(self._group).get()

    def members(self) -> frozenset[str]:
        with _errors("members"):
            found = self._coordinator.get_members(self._group).get()
        return frozenset(m.decode() if isinstance(m, bytes) else str(m) for m in found)

    def try_lock(self, name: str) -> bool:
        with self._lock:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._coordinator.get_lock((self._prefix + name).encode())
                self._locks[name] = lock
        with _errors(f"lock {name}"):
            return bool(lock.acquire(blocking=False))

    def still_held(self, name: str) -> bool:
        lock = self._locks.get(name)
        if lock is None or not lock.acquired:
            return False
        with _errors(f"lock {name}"):
            lease = getattr(lock, "_lease", None)  # etcd: tooz ignores an expired lease
            if lease is not None:
                return bool(lease.refresh() > 0)
            try:  # Redis: the key still holds this lock's token
                return bool(lock.is_still_owner())
            except NotImplementedError:  # tooz.NotImplemented: a driver that cannot tell
                return True

    def release(self, name: str) -> None:
        lock = self._locks.pop(name, None)
        if lock is None:
            return
        with _errors(f"release {name}"):
            if lock.acquired:
                lock.release()


def _no_client_retries(coordinator: Any) -> None:
    """Redis: the client library's own retries off. tooz already tries a refused call 15
    times, and redis-py retries each of those with backoff: a heartbeat to a dead Redis
    took about a minute, during which the keeper could neither notice the backend back
    nor give segments up. Without them a dead backend answers at once and a silent one
    within the call timeout (``socket_timeout``). tooz has no option for it, hence its
    client, reached here."""
    client = getattr(coordinator, "_client", None)
    if client is None or not hasattr(client, "set_retry"):
        return  # not Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client.set_retry(Retry(NoBackoff(), 0))


def _with_params(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added where it does not set them itself."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    for key, value in params.items():
        query.setdefault(key, value)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _tooz() -> Any:
    """``tooz.coordination``, imported without the noise of the libraries under it:
    futurist imports eventlet, which imports dnspython, which warns of cryptography's DSA
    deprecation at import time -- four lines in every server log, not ours to fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
        warnings.filterwarnings("ignore", message=r"DSA is deprecated")
        import futurist  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
        from tooz import coordination
    return coordination


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turns the backend's exceptions into ``CoordinationError`` naming the call."""
    try:
        yield
    except CoordinationError:
        raise
    except Exception as exc:
        # Some say nothing of themselves (a tooz timeout's text is empty): name the kind.
        raise CoordinationError(f"coordination {what}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    cause = exc.__cause__ or exc.__context__
    if not text and cause is not None:
        return f"{type(exc).__name__} ({_describe(cause)})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def build_coordinator(
    url: str, member: str, *, lease_ttl: float, call_timeout: float, namespace: str = "vigil"
) -> Coordinator:
    """The coordinator for ``url``: empty means this server alone."""
    if not url:
        return LocalCoordinator(member)
    return ToozCoordinator(
        url, member, lease_ttl=round(lease_ttl), call_timeout=call_timeout, namespace=namespace
    )
