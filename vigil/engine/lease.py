"""Self-fencing: leases granted to agents, and the fence that waits for them to run out.

A self-fencing agent pets its host's hardware watchdog only while it holds a lease; the
server renews the lease with every heartbeat it accepts. When the server stops granting
(the host is being fenced, or it cannot hear the host), the agent's lease expires at the
latest ``ttl`` after the server's last grant — the agent counts from when it *sent* the
heartbeat, which is before the grant — and its watchdog resets the host at the latest
``watchdog`` seconds after that. So once

    last grant + lease TTL + watchdog timeout + margin

has passed on the server's clock, the host has provably reset: the fence is confirmed
without a BMC (S1), which is what makes a total power loss — BMC dead too — recoverable.

The deadline counts from this process's start for hosts it never granted to, because an
earlier server process may have granted just before it stopped. The watchdog timeout is
the larger of the configured one and what the agent reports, so an agent with a slower
watchdog than configured cannot make the server evacuate too early. ``margin`` covers
clock-rate differences between the two machines.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from vigil.clock import Clock
from vigil.config import SelfFencingSettings
from vigil.drivers.fencing import FenceDevice, PowerState


class LeaseKeeper:
    def __init__(
        self,
        clock: Clock,
        settings: SelfFencingSettings,
        *,
        may_grant: Callable[[str], bool] = lambda _h: True,
    ) -> None:
        self._clock = clock
        self._settings = settings
        self._may_grant = may_grant
        self._lock = threading.Lock()
        self._started = clock.monotonic()
        self._granted: dict[str, float] = {}
        self._watchdog: dict[str, float] = {}
        self._revoked: set[str] = set()

    @property
    def ttl(self) -> float:
        return self._settings.lease_ttl

    def grant(self, host: str, watchdog: float) -> float | None:
        """Record a grant to ``host`` and return its TTL, or None when it gets none.

        The grant time is recorded before the grant is sent, so the fence deadline always
        covers every lease the host may hold."""
        with self._lock:
            if host in self._revoked or not self._may_grant(host):
                return None
            self._granted[host] = self._clock.monotonic()
            self._watchdog[host] = max(watchdog, self._watchdog.get(host, 0.0))
            return self._settings.lease_ttl

    def revoke(self, host: str) -> None:
        """Grant nothing more to the host (it is being fenced)."""
        with self._lock:
            self._revoked.add(host)

    def reinstate(self, host: str) -> None:
        with self._lock:
            self._revoked.discard(host)

    def wait_after_last_grant(self, host: str) -> float:
        s = self._settings
        with self._lock:
            watchdog = max(s.watchdog_timeout, self._watchdog.get(host, 0.0))
        return s.lease_ttl + watchdog + s.margin

    def deadline(self, host: str) -> float:
        """Monotonic time after which the host has provably reset itself."""
        with self._lock:
            last = max(self._granted.get(host, self._started), self._started)
        return last + self.wait_after_last_grant(host)

    def self_fenced(self, host: str) -> bool:
        """True once the host is revoked and its deadline has passed. Revoked first, so a
        host that comes back after its reset cannot be granted a new lease meanwhile."""
        with self._lock:
            if host not in self._revoked:
                return False
        return self._clock.monotonic() >= self.deadline(host)


class SelfFenceDevice(FenceDevice):
    """The fencing level ``self-fence``: power off = stop granting; OFF once the deadline passed."""

    def __init__(self, keeper: LeaseKeeper, host: str) -> None:
        self._keeper = keeper
        self._host = host
        wait = keeper.wait_after_last_grant(host)
        self.description = f"self-fencing watchdog of {host} (waits {wait:g}s after the last lease)"
        # Counted from the power-off request, which comes after the last grant; a second
        # more for the polling.
        self.confirm_within = wait + 1.0

    def power_off(self) -> None:
        self._keeper.revoke(self._host)

    def power_on(self) -> None:
        self._keeper.reinstate(self._host)

    def power_status(self) -> PowerState:
        return PowerState.OFF if self._keeper.self_fenced(self._host) else PowerState.ON
