"""Segment ownership: which vigil-server acts on which segment, under which epoch.

Each segment is owned by one live server through a lease-backed lock of the
coordination backend (``vigil.drivers.coordination``); the segments are spread over the
live servers by a pure rule (``assign``: rendezvous hashing, capped so that no server
holds more than its share) and move when one joins or leaves.

Taking a segment: the lock first, then the store's epoch of the segment goes up by one
(``take_segment``); the reactions act on the segment only with the resulting token
(``OwnerToken``), and the store refuses any write under an older one. So a server that
lost its lock and has not noticed yet cannot record, hence cannot start, anything.

Timing (checked at start-up, ``CoordinationSettings.validate``): a renewal starts every
``renew_interval``; when it succeeds, and every lock is still held, the server may act
until ``lease_ttl - margin`` after that renewal *started*. The backend cannot free a
lock before ``lease_ttl`` after its last renewal arrived, which is later: so the old
owner has stopped acting before anyone else can take its segment. A server cut off
from the backend stops acting at that deadline, whatever else it can still reach.

Giving a segment up (another server joined): the server stops acting on it at once, waits
until none of its work on it is in flight (``busy``), then releases the lock.

The keeper runs on two threads of its own — the coordination edge, like the heartbeat
receiver is the agents' — and decides with the pure ``plan``; the reactions only read
``token`` (a dictionary lookup and a clock read). One thread renews (``renew``: only
calls to the coordination backend); the other rebalances (``rebalance``: reads the
store, then takes and gives), so that a store slow to answer (a database server busy
with a rack failure's writes, its connection pool taken by the workers) never delays a
renewal and the acting window never lapses for it. If the window does lapse (a renewal
late), the server stops acting until the next renewal; when that one finds every lock
still held, it acts again under the same epochs: work a reaction could not do meanwhile
waits for it (``held``), it is not its segment's next owner's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from vigil.clock import Clock
from vigil.config import CoordinationSettings
from vigil.drivers.coordination import CoordinationError, Coordinator, LocalCoordinator
from vigil.engine.workers import Cancelled
from vigil.model import OwnerToken
from vigil.store import Store, StoreError, acting_as, current_token

LOG = logging.getLogger("vigil.ownership")

LOCK_PREFIX = "segment-"  # after the coordinator's namespace: vigil-segment-<name>


def assign(
    segments: Iterable[str], members: Iterable[str], current: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Each segment's owner among ``members``, at most ceil(segments / members) each.

    Sticky: a segment stays with its ``current`` owner while that one is a live member
    with room (segments in name order), so a server coming back does not take segments
    back from servers that kept them going — each move costs a takeover. The others go
    by rendezvous: every server ranks the members for a segment by a hash of (segment,
    member) and the first one with room takes it. Every server computes the same answer
    from the same membership and owners; a join or leave moves only what the balance
    needs."""
    names = sorted(set(members))
    if not names:
        return {}
    ordered = sorted(set(segments))
    room = math.ceil(len(ordered) / len(names))
    load: Counter[str] = Counter()
    owners: dict[str, str] = {}
    for segment in ordered:
        keeper = (current or {}).get(segment)
        if keeper in names and load[keeper] < room:
            owners[segment] = keeper
            load[keeper] += 1
    for segment in ordered:
        if segment in owners:
            continue
        for member in sorted(names, key=lambda m: _rank(segment, m)):
            if load[member] < room:
                owners[segment] = member
                load[member] += 1
                break
    return owners


def _rank(segment: str, member: str) -> bytes:
    return hashlib.sha256(f"{segment}\0{member}".encode()).digest()


@dataclass(frozen=True)
class Take:
    segment: str


@dataclass(frozen=True)
class Give:
    segment: str


def plan(
    me: str,
    members: Iterable[str],
    segments: Iterable[str],
    held: Iterable[str],
    current: Mapping[str, str] | None = None,
) -> list[Take | Give]:
    """What this server should take and give up, from the live members (itself always
    among them), the segments, the locks it holds, and each segment's ``current`` owner
    by the store."""
    held = set(held)
    current = {**(current or {}), **{s: me for s in held}}
    wanted = assign(segments, {*members, me}, current)
    mine = {s for s, owner in wanted.items() if owner == me}
    return [Give(s) for s in sorted(held - mine)] + [Take(s) for s in sorted(mine - held)]


@dataclass
class _Held:
    token: OwnerToken
    taken_at: float  # monotonic
    giving: bool = False  # stopped acting; released once nothing of it is in flight


@dataclass(frozen=True)
class OwnershipStatus:
    member: str
    backend: str
    healthy: bool
    members: tuple[str, ...]
    owned: Mapping[str, int]  # segment -> epoch, while acting on it
    acting_for: float  # seconds left before this server must stop acting without renewal
    error: str = ""
    giving: tuple[str, ...] = field(default_factory=tuple)


class SegmentOwnership:
    """The keeper: renews, takes and gives segments; answers ``token(segment)``."""

    def __init__(
        self,
        *,
        store: Store,
        coordinator: Coordinator,
        clock: Clock,
        settings: CoordinationSettings,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._coordinator = coordinator
        self._clock = clock
        self._settings = settings
        self._on_change = on_change
        self._busy: Callable[[str], bool] = lambda _segment: False
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._valid_until = -math.inf
        self._members: tuple[str, ...] = ()
        self._error = ""
        self._problems: dict[str, str] = {}  # segment ("" for all) -> what is wrong now
        self._calls = threading.Lock()  # one call to the backend at a time
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def member(self) -> str:
        return self._coordinator.member

    @property
    def shared(self) -> bool:
        """Whether other servers may own segments (a coordination backend is set)."""
        return not isinstance(self._coordinator, LocalCoordinator)

    def set_busy(self, busy: Callable[[str], bool]) -> None:
        """``busy(segment)``: whether work on the segment is still in flight."""
        self._busy = busy

    # --- what the reactions read -----------------------------------------------------

    def token(self, segment: str) -> OwnerToken | None:
        """The token to act on ``segment`` under, or None: not owned, being given up, or
        the acting window ran out without a renewal."""
        held = self._held.get(segment)
        if held is None or held.giving or self._clock.monotonic() >= self._valid_until:
            return None
        return held.token

    def owns(self, segment: str) -> bool:
        return self.token(segment) is not None

    def valid(self, token: OwnerToken | None) -> bool:
        """Whether ``token`` is still the one to act under (None: no ownership, valid)."""
        return token is None or self.token(token.segment) == token

    def held(self, segment: str) -> OwnerToken | None:
        """The token of ``segment`` while this server holds it and is not giving it up,
        even while the acting window has lapsed (a renewal late): work that could not be
        done under it meanwhile is done here once renewed, not by a next owner."""
        held = self._held.get(segment)
        return None if held is None or held.giving else held.token

    def taken_at(self, segment: str) -> float | None:
        """When (monotonic) this server took ``segment``, if it holds it."""
        held = self._held.get(segment)
        return held.taken_at if held is not None else None

    def tokens(self) -> dict[str, OwnerToken]:
        """Every segment this server acts on now, with its token."""
        return {s: t for s in list(self._held) if (t := self.token(s)) is not None}

    def status(self) -> OwnershipStatus:
        with self._lock:
            held = dict(self._held)
        return OwnershipStatus(
            member=self.member,
            backend=self._coordinator.backend,
            healthy=not self._error,
            members=self._members,
            owned={s: h.token.epoch for s, h in held.items() if self.token(s) is not None},
            acting_for=max(0.0, self._valid_until - self._clock.monotonic()),
            error=self._error,
            giving=tuple(sorted(s for s, h in held.items() if h.giving)),
        )

    # --- the keeper ------------------------------------------------------------------

    def start(self, *, background: bool = True) -> None:
        """Join the group (retried by the rounds if the backend is away), run a first
        round, then renew and rebalance on threads of their own (``background``; tests
        run the rounds)."""
        try:
            with self._calls:
                self._coordinator.start()
            self.run_round()  # alone, every segment is owned before the first cycle
        except CoordinationError as exc:
            self._note_error(str(exc))
        if background:
            for name, job in (("vigil-ownership", self.renew), ("vigil-rebalance", self.rebalance)):
                thread = threading.Thread(target=self._every, args=(job,), name=name, daemon=True)
                self._threads.append(thread)
                thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        with self._lock:
            self._held.clear()
        with self._calls:
            self._coordinator.stop()

    def _every(self, job: Callable[[], object]) -> None:
        while not self._stop.is_set():
            started = self._clock.monotonic()
            try:
                job()
            except Exception:  # the keeper must outlive one bad round
                LOG.exception("ownership: %s failed", job.__name__)
            spent = self._clock.monotonic() - started
            self._stop.wait(max(0.0, self._settings.renew_interval - spent))

    def run_round(self) -> None:
        """One renewal, then one rebalancing if it succeeded (the two threads' work, in
        turn: what tests and the first round at start-up run)."""
        if self.renew():
            self.rebalance()

    def renew(self) -> bool:
        """Heartbeat and check the locks: the acting window runs from the start of the
        last renewal that succeeded. True if this one did."""
        started = self._clock.monotonic()
        try:
            with self._calls:
                self._coordinator.heartbeat()
                members = self._coordinator.members()
                lost = [s for s in list(self._held) if not self._coordinator.still_held(_lock(s))]
        except CoordinationError as exc:
            self._note_error(str(exc))  # acting stops at the deadline of the last success
            return False
        for segment in lost:
            self._drop(segment, "its lock was lost (expired while this server was away?)")
        lapsed = self._clock.monotonic() - self._valid_until
        if lapsed > 0 and self._held and not self._error:
            # The backend answered throughout, yet a renewal came late (this process
            # starved or paused): said, since nothing was started meanwhile.
            LOG.error(
                "ownership: renewal late, %s stopped acting on %s for %.2fs; acting again "
                "under the same epochs (every lock still held)",
                self.member,
                ", ".join(sorted(self._held)),
                lapsed,
            )
        self._valid_until = started + self._settings.acting_window
        self._members = tuple(sorted(members))
        self._note_error("")
        return True

    def rebalance(self) -> None:
        """Check the store's owners, then take and give what ``plan`` says (nothing while
        the backend is unreachable)."""
        if self._error or not self._members:
            return
        members = self._members
        try:
            segments = [s.name for s in self._store.list_segments()]
            owners = {o.segment: o for o in self._store.list_segment_owners()}
        except StoreError as exc:
            self._note_problem("", f"store not read, segments not rebalanced: {exc}")
            return
        self._note_problem("", "")
        for segment, held in list(self._held.items()):
            row = owners.get(segment)
            if row is None or (row.owner, row.epoch) != (held.token.owner, held.token.epoch):
                self._drop(segment, f"the store names {row} its owner")
        current = {s: o.owner for s, o in owners.items()}
        for action in plan(self.member, members, segments, list(self._held), current):
            if isinstance(action, Take):
                self._take(action.segment)
            else:
                self._give(action.segment)

    def _take(self, segment: str) -> None:
        try:
            with self._calls:
                locked = self._coordinator.try_lock(_lock(segment))
            if not locked:
                return  # still held by its previous owner: tried again next round
            owner = self._store.take_segment(segment, self.member, at=self._clock.wall())
        except (CoordinationError, StoreError) as exc:
            # e.g. the previous owner froze in the middle of a write: tried again next
            # round, by when the database has ended its transaction
            self._note_problem(segment, f"not taken yet: {exc}")
            self._release(segment)
            return
        self._note_problem(segment, "")
        token = OwnerToken(segment, self.member, owner.epoch)
        with self._lock:
            self._held[segment] = _Held(token, self._clock.monotonic())
        LOG.warning("segment %s: owned by %s from now, epoch %d", segment, self.member, token.epoch)
        self._on_change()

    def _give(self, segment: str) -> None:
        held = self._held.get(segment)
        if held is None:
            return
        if not held.giving:
            held.giving = True
            LOG.warning(
                "segment %s: given up by %s (rebalanced); finishing work in flight",
                segment,
                self.member,
            )
            self._on_change()
        if not self._busy(segment):
            with self._lock:
                self._held.pop(segment, None)
            self._release(segment)

    def _drop(self, segment: str, why: str) -> None:
        with self._lock:
            held = self._held.pop(segment, None)
        if held is not None:
            LOG.error("segment %s: %s stops acting on it: %s", segment, self.member, why)
            self._release(segment)
            self._on_change()

    def _release(self, segment: str) -> None:
        try:
            with self._calls:
                self._coordinator.release(_lock(segment))
        except CoordinationError as exc:
            LOG.warning("segment %s: lock not released (it expires): %s", segment, exc)

    def _note_problem(self, segment: str, problem: str) -> None:
        """A problem of the store's for ``segment`` ("" for the rebalancing), logged when
        it starts and when it ends, not at every round."""
        before = self._problems.get(segment, "")
        if problem == before:
            return
        if problem:
            LOG.warning("%s: %s", f"segment {segment}" if segment else "ownership", problem)
            self._problems[segment] = problem
            return
        del self._problems[segment]
        if not segment:  # a segment's end is its "owned by ... from now"
            LOG.warning("ownership: store read again, segments rebalanced")

    def _note_error(self, error: str) -> None:
        if error != self._error:  # logged when it changes, not at every round
            if error:
                LOG.error(
                    "coordination backend %s unreachable: %s; acting stops %.1fs after "
                    "the last renewal",
                    self._coordinator.backend,
                    error,
                    self._settings.acting_window,
                )
            else:
                LOG.warning("coordination backend %s reachable again", self._coordinator.backend)
        self._error = error


def _lock(segment: str) -> str:
    return LOCK_PREFIX + segment


class Ownership(Protocol):
    """What the reactions ask of ownership (``SegmentOwnership`` or ``SoleOwnership``)."""

    @property
    def member(self) -> str: ...

    @property
    def shared(self) -> bool:
        """Whether other servers may own segments: what one was running when it stopped
        is then its segment's next owner's to requeue, not any server's that starts."""

    def token(self, segment: str) -> OwnerToken | None: ...

    def owns(self, segment: str) -> bool: ...

    def valid(self, token: OwnerToken | None) -> bool: ...

    def held(self, segment: str) -> OwnerToken | None: ...

    def taken_at(self, segment: str) -> float | None: ...

    def tokens(self) -> dict[str, OwnerToken]: ...


def still_held(ownership: Ownership, token: OwnerToken | None) -> bool:
    """Whether work under ``token`` stays this server's, to do once it may act again
    (the acting window lapsed, not the segment lost): else it is the segment's next
    owner's."""
    return token is None or ownership.held(token.segment) == token


class SoleOwnership:
    """Every segment, no token: one server acting alone with no epoch check (the
    reactions' default when built without a keeper, as in-process tests do)."""

    member = "sole"
    shared = False

    def token(self, segment: str) -> OwnerToken | None:
        return None

    def owns(self, segment: str) -> bool:
        return True

    def valid(self, token: OwnerToken | None) -> bool:
        return True

    def held(self, segment: str) -> OwnerToken | None:
        return None

    def taken_at(self, segment: str) -> float | None:
        return None

    def tokens(self) -> dict[str, OwnerToken]:
        return {}


class NotActing(Cancelled):
    """The token a job acts under is not (or no longer) one this server may act under:
    its segment lost, given up, or its acting window lapsed (``still_held`` tells)."""


def may_act(ownership: Ownership) -> None:
    """Raises ``NotActing`` when the token this thread acts under
    (``vigil.store.acting_as``) is not this server's to act under now: called right
    before each call that changes the cloud (the store would refuse the record of it;
    the cloud cannot refuse the call)."""
    token = current_token()
    if not ownership.valid(token):
        assert token is not None
        if still_held(ownership, token):
            raise NotActing(
                f"segment {token.segment}: acting window lapsed (renewal late), epoch "
                f"{token.epoch} still held"
            )
        raise NotActing(f"segment {token.segment}: epoch {token.epoch} is no longer this server's")


def run_as(
    ownership: Ownership,
    token: OwnerToken | None,
    what: str,
    job: Callable[..., None],
    refused: Callable[[], None] = lambda: None,
) -> Callable[..., None]:
    """``job`` for a worker, under ``token`` (taken when it is submitted): it does not
    start while that token is not this server's to act under (``refused`` is called
    instead), and it writes under it."""

    def owned(*args: Any, **kwargs: Any) -> None:
        if not ownership.valid(token):
            assert token is not None
            lapsed = still_held(ownership, token)
            LOG.warning(
                "segment %s: %s not started: %s",
                token.segment,
                what,
                "acting window lapsed (renewal late)" if lapsed else "no longer owned here",
            )
            refused()
            return
        with acting_as(token):
            job(*args, **kwargs)

    return owned


class HostOwner:
    """How the reactions about one host at a time (guest failures, host services,
    operator requests) act as the owner of that host's segment: whether this server
    does (``owns``), and under which token (``acting``, ``job``) -- the epoch that the
    store checks each of their writes against and that ``may_act`` checks right before
    each call that changes the cloud. ``segment_of(host)`` is the host's segment (None:
    not known; a request about no host is ``segment_of(None)``'s)."""

    def __init__(
        self, ownership: Ownership, segment_of: Callable[[str | None], str | None]
    ) -> None:
        self.ownership = ownership
        self._segment_of = segment_of
        self._lock = threading.Lock()
        self._running: Counter[str | None] = Counter()  # jobs running, by segment

    def token(self, host: str | None) -> OwnerToken | None:
        """The token to act on ``host`` under: None acting alone; with shared ownership
        and the segment not (or no longer) owned here, an epoch-0 token that the store
        refuses and ``may_act`` stops (no epoch is ever 0)."""
        segment = self._segment_of(host)
        token = None if segment is None else self.ownership.token(segment)
        if token is None and self.ownership.shared:
            return OwnerToken(segment or "", self.ownership.member, 0)
        return token

    def owns(self, host: str | None) -> bool:
        segment = self._segment_of(host)
        if segment is None:  # not (yet) known here: a sole server acts, several do not
            return isinstance(self.ownership, SoleOwnership)
        return self.ownership.owns(segment)

    def acting(self, host: str | None) -> AbstractContextManager[None]:
        return acting_as(self.token(host))

    def job(
        self,
        host: str | None,
        what: str,
        job: Callable[..., None],
        refused: Callable[[], None] = lambda: None,
    ) -> Callable[..., None]:
        """``job`` for a worker, under ``host``'s token (``run_as``: ``refused`` is
        called instead while that token is not this server's to act under), counted in
        ``busy_in`` while it runs."""
        segment = self._segment_of(host)
        token = self.token(host)

        def not_started() -> None:
            if still_held(self.ownership, token):  # the window lapsed: done once renewed
                with acting_as(token):
                    refused()

        owned = run_as(self.ownership, token, what, job, refused=not_started)

        def counted(*args: Any, **kwargs: Any) -> None:
            with self._lock:
                self._running[segment] += 1
            try:
                owned(*args, **kwargs)
            finally:
                with self._lock:
                    self._running[segment] -= 1

        return counted

    def busy_in(self, segment: str) -> bool:
        """Whether a job of ``segment`` is running (its owner gives it up only once none
        is: a restart or a request in the middle of a Nova call is not done twice)."""
        with self._lock:
            return self._running[segment] > 0

    def may_act(self) -> None:
        may_act(self.ownership)

    def to_redo(self, stopped: Cancelled) -> bool:
        """Whether work ``stopped`` (inside ``job``) stays this server's to do again once
        it may act (its acting window lapsed), rather than its segment's next owner's."""
        token = current_token()
        return (
            isinstance(stopped, NotActing)
            and token is not None
            and still_held(self.ownership, token)
        )


SOLE_OWNER = HostOwner(SoleOwnership(), lambda _host: None)
