"""Self-fencing: leases granted to agents, and the fence that waits for them to run out.

A self-fencing agent pets its host's hardware watchdog only while it holds a lease, or
while its peers vouch that vigil-server is gone for a majority of its segment (see
``vigil.agent.peers`` for the agent's rule and why it is safe). The server renews the
lease with every heartbeat it accepts, from hosts it monitors normally only
(``may_grant``: not a failed or recovered host, whatever this process remembers).

When the server stops granting (the host is being fenced, or it cannot hear the host),
the agent's lease expires at the latest ``ttl`` after the server's last grant — the agent
counts from when it *sent* the heartbeat, which is before the grant. After that, the
agent pets only while a check of its peers passes, each pass for at most one peer window
(``peer_interval + peer_timeout``). A check passes only if no peer heard a grant less
than ``ttl / 2`` ago and a strict majority of the segment answered "lost".

So the server confirms host X as fenced only when, in addition to the wait, it can prove
that X's checks all failed: at least ``N - floor(N_X / 2)`` of the other hosts of X's
segment (N: its size now; N_X: the size last told to X) have each held an unbroken *run*
— every moment of it, the host provably held a grant less than ``ttl / 2`` old — since a
time T0 and still now. The proof of a run uses only grants the host *acknowledged* (each
heartbeat names the last grant its agent received): the agent received grant j at or
after the server sent it (G_j) and before the server heard the acknowledgement (h_j), so
between two acknowledged grants its grant age stays below ``h_{j+1} - G_j``; a run goes
on while each acknowledgement arrives less than ``ttl / 2`` after the previous
acknowledged grant, and holds until ``G_last + ttl / 2`` (the server uses 0.45 TTL
rather than 0.5, for the agents' clocks). A lost grant datagram therefore breaks a run
(the server cannot know the host heard it); it never counts as heard. Those hosts answer
X "fresh" or not at all, so at most ``floor(N_X / 2) - 1`` others can answer "lost" and
no check of X answered after T0 passes; a check answered before T0 lets X pet until
T0 + peer window at the latest. Every pet of X therefore ends by
``max(S + ttl, T0 + peer window)``, S being the later of X's last grant and this
process's start, and its watchdog has reset it ``watchdog`` later. So once

    max(S, T0) + lease TTL + peer window + watchdog timeout + margin

has passed on the server's clock the fence is confirmed without a BMC (S1), which is
what makes a total power loss — BMC dead too — recoverable. A host alone in its segment,
or whose segment has no provably connected majority, is never confirmed this way (its
recovery fails rather than risk a second copy).

Limits: a host moved out of X's segment keeps naming that segment in its answers until
its next grant, and after a restart the server takes N_X to be the segment's size now;
changing a segment's membership while some of its hosts are cut off is not covered.

The deadline counts from this process's start for hosts it never granted to, because an
earlier server process may have granted just before it stopped — and, with several
servers, from when this one took the host's segment (``since``): its previous owner may
have granted until it stopped acting. Only the segment's owner grants (``may_grant``).
The watchdog timeout and peer window are the larger of the configured ones and what the
agent reports, so an agent slower than configured cannot make the server evacuate too
early. ``margin`` covers clock-rate differences between the machines.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vigil.clock import Clock
from vigil.config import SelfFencingSettings
from vigil.drivers.errors import PermanentError
from vigil.drivers.fencing import FenceDevice, PowerState

LOG = logging.getLogger(__name__)
# Grant times kept per host to match acknowledgements to; an older one breaks the run.
_GRANTS_KEPT = 64
# A run proves a host "fresh" for 0.45 TTL after each acknowledged grant, not the 0.5 its
# agent uses: the agent measures on its own clock, which may run a little fast.
_FRESH_SHARE = 0.45


@dataclass
class _Run:
    """An unbroken run of acknowledged grants of one agent process (``boot``)."""

    boot: str
    start: float  # when the run's first acknowledgement arrived
    last_grant: float  # when the latest acknowledged grant was sent
    last_seq: int


class LeaseKeeper:
    """Grants, revocations, runs, and the self-fence deadline.

    ``members()`` lists every host with its segment (the server reads it from its store;
    at most once every ``refresh`` seconds). Without it no host has peers, and no host is
    ever confirmed self-fenced: it could be surviving on its own vote.
    """

    def __init__(
        self,
        clock: Clock,
        settings: SelfFencingSettings,
        *,
        may_grant: Callable[[str], bool] = lambda _h: True,
        members: Callable[[], Iterable[tuple[str, str]]] | None = None,
        refresh: float = 2.0,
        agent_known: Callable[[str], bool] = lambda _h: True,
        since: Callable[[str], float | None] = lambda _segment: None,
    ) -> None:
        self._agent_known = agent_known
        self._since = since
        self._clock = clock
        self._settings = settings
        self._may_grant = may_grant
        self._members = members
        self._refresh = refresh
        self._lock = threading.Lock()
        self._started = clock.monotonic()
        self._granted: dict[str, float] = {}
        self._watchdog: dict[str, float] = {}
        self._window: dict[str, float] = {}
        self._revoked: set[str] = set()
        self._armed: dict[str, bool] = {}  # host -> its last heartbeat acknowledged a lease
        self._grants: dict[str, dict[tuple[str, int], float]] = {}
        self._runs: dict[str, _Run] = {}
        self._told_n: dict[str, int] = {}
        self._segment_of: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        self._loaded_at: float | None = None

    @property
    def ttl(self) -> float:
        return self._settings.lease_ttl

    @property
    def _fresh(self) -> float:
        return _FRESH_SHARE * self._settings.lease_ttl

    # --- segments -------------------------------------------------------------------------

    def _load_members(self) -> None:
        if self._members is None:
            return
        now = self._clock.monotonic()
        if self._loaded_at is not None and now - self._loaded_at < self._refresh:
            return
        self._loaded_at = now  # also on failure: a store that is away is not hammered
        try:
            segment_of = dict(self._members())
        except Exception as exc:  # the last known membership serves meanwhile
            LOG.warning("segment membership not refreshed: %s", exc)
            return
        sizes: dict[str, int] = {}
        for seg in segment_of.values():
            sizes[seg] = sizes.get(seg, 0) + 1
        with self._lock:
            self._segment_of, self._sizes = segment_of, sizes

    def segment(self, host: str) -> tuple[str, int]:
        """The host's segment and how many hosts it has ("", 0 when unknown)."""
        self._load_members()
        with self._lock:
            seg = self._segment_of.get(host)
            if seg is None:
                return "", 0
            return seg, self._sizes.get(seg, 0)

    # --- grants ---------------------------------------------------------------------------

    def grant(
        self,
        host: str,
        watchdog: float,
        *,
        boot_id: str = "",
        seq: int = 0,
        ack: int = 0,
        peer_window: float = 0.0,
    ) -> float | None:
        """Record a grant to ``host`` (for its heartbeat ``boot_id``/``seq``, which
        acknowledges grant ``ack``) and return its TTL, or None when it gets none.

        The grant time is recorded before the grant is sent, so the fence deadline always
        covers every lease the host may hold."""
        _, n = self.segment(host)  # the segment itself goes out with the grant
        with self._lock:
            now = self._clock.monotonic()
            # What the host's latest heartbeat says: its agent holds a lease (received
            # one, from any server process, since it started), hence armed its watchdog.
            # Frozen once the host is being fenced: what counts is whether it was armed
            # when it failed, not that the agent of its next boot holds none yet.
            if host not in self._revoked:
                self._armed[host] = ack > 0
            if ack:
                self._acknowledged(host, boot_id, ack, now)
            if host in self._revoked or not self._may_grant(host):
                return None
            self._granted[host] = now
            self._watchdog[host] = max(watchdog, self._watchdog.get(host, 0.0))
            self._window[host] = max(peer_window, self._window.get(host, 0.0))
            self._told_n[host] = n
            sent = self._grants.setdefault(host, {})
            sent[(boot_id, seq)] = now
            if len(sent) > _GRANTS_KEPT:
                for k in sorted(sent, key=sent.__getitem__)[: len(sent) - _GRANTS_KEPT]:
                    del sent[k]
            return self._settings.lease_ttl

    def _acknowledged(self, host: str, boot: str, ack: int, now: float) -> None:
        granted = self._grants.get(host, {}).get((boot, ack))
        if granted is None:
            return  # not a grant this process remembers sending
        run = self._runs.get(host)
        if run is not None and run.boot == boot and ack <= run.last_seq:
            return  # already counted
        if run is not None and run.boot == boot and now < run.last_grant + self._fresh:
            run.last_grant, run.last_seq = granted, ack
        else:
            self._runs[host] = _Run(boot, now, granted, ack)

    def run_since(self, host: str) -> float | None:
        """Start of the host's current unbroken run of acknowledged grants, or None."""
        with self._lock:
            run = self._runs.get(host)
            if run is None or self._clock.monotonic() >= run.last_grant + self._fresh:
                return None
            return run.start

    def revoke(self, host: str) -> None:
        """Grant nothing more to the host (it is being fenced)."""
        with self._lock:
            self._revoked.add(host)

    def reinstate(self, host: str) -> None:
        with self._lock:
            self._revoked.discard(host)

    # --- the fence ------------------------------------------------------------------------

    def wait_after_last_grant(self, host: str) -> float:
        s = self._settings
        with self._lock:
            watchdog = max(s.watchdog_timeout, self._watchdog.get(host, 0.0))
            window = max(s.peer_window, self._window.get(host, 0.0))
        return s.lease_ttl + window + watchdog + s.margin

    def deadline(self, host: str) -> float | None:
        """Monotonic time after which the host has provably reset itself; None while no
        majority of its segment is provably connected (see the module docstring)."""
        seg, n = self.segment(host)
        if not seg:
            return None
        now = self._clock.monotonic()
        with self._lock:
            n_x = self._told_n.get(host) or n
            need = max(1, n - n_x // 2)
            starts = sorted(
                run.start
                for peer, run in self._runs.items()
                if peer != host
                and self._segment_of.get(peer) == seg
                and now < run.last_grant + self._fresh
            )
            start = max(self._started, self._since(seg) or -math.inf)
            last = max(self._granted.get(host, start), start)
        if len(starts) < need:
            return None
        return max(last, starts[need - 1]) + self.wait_after_last_grant(host)

    def agent_known(self, host: str) -> bool:
        """Whether a vigil agent was ever heard from the host (see ``Engine.agent_known``)."""
        return self._agent_known(host)

    def armed(self, host: str) -> bool:
        """False when the last heartbeat heard from the host said its agent holds no lease:
        its watchdog is armed at the first lease (``vigil.agent.selffence``), so a host
        whose agent never received one -- just started, or the grants lost on the way
        back -- would not reset itself, and waiting for it proves nothing. True when it
        said it holds one, and for a host not heard since this process started (an earlier
        process may have granted it: the wait counts from this one's start)."""
        with self._lock:
            return self._armed.get(host, True)

    def self_fenced(self, host: str) -> bool:
        """True once the host is revoked and its deadline has passed. Revoked first, so a
        host that comes back after its reset cannot be granted a new lease meanwhile. Never
        for a host no vigil agent was ever heard from, nor one whose agent did not hold a
        lease (``armed``)."""
        with self._lock:
            if host not in self._revoked or not self._armed.get(host, True):
                return False
        if not self._agent_known(host):
            return False
        deadline = self.deadline(host)
        return deadline is not None and self._clock.monotonic() >= deadline


class SelfFenceDevice(FenceDevice):
    """The fencing level ``self-fence``: power off = stop granting; OFF once the deadline passed."""

    resets = True

    def __init__(self, keeper: LeaseKeeper, host: str) -> None:
        self._keeper = keeper
        self._host = host
        wait = keeper.wait_after_last_grant(host)
        self.description = f"self-fencing watchdog of {host} (waits {wait:g}s after the last lease)"
        # Counted from the power-off request, which comes after the last grant; a second
        # more for the polling.
        self.confirm_within = wait + 1.0

    def power_off(self) -> None:
        if not self._keeper.agent_known(self._host):
            # A host no vigil agent was ever heard from has no watchdog petted by one:
            # waiting would "confirm" a fence that never happened (S1).
            raise PermanentError(
                f"host {self._host}: no vigil agent has ever been heard from it, so it has "
                "no self-fencing watchdog: it cannot be self-fenced"
            )
        if not self._keeper.armed(self._host):
            raise PermanentError(
                f"host {self._host}: its agent held no lease when last heard (just "
                "started, or the server's grants do not reach it), so its watchdog is not "
                "armed: it cannot be self-fenced"
            )
        self._keeper.revoke(self._host)

    def power_on(self) -> None:
        self._keeper.reinstate(self._host)

    def power_status(self) -> PowerState:
        return PowerState.OFF if self._keeper.self_fenced(self._host) else PowerState.ON
