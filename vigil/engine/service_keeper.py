"""Host services: record the agents' snapshots, decide (``vigil.engine.services``), act.

``receive`` persists a snapshot with its ``vigil.host.service.down``/``.up`` events in one
transaction before the API acknowledges it (S2). ``run_cycle`` — called by the guest
engine's loop, which serves the agents' reports — reads the snapshots that may need an
action, calls the pure ``decide_services`` and performs its answer against Nova:

- disable: read the compute service first. Disabled with a reason that is not vigil's →
  hold LEFT (someone else's); else disable it with vigil's reason → hold DISABLED. The
  hold and its event are written after Nova answered: a crash in between disables again,
  which Nova takes as a no-op.
- release: enable only a service Nova still shows disabled with vigil's reason.

A reaction on the skeleton of ``vigil.engine.reconciler``; its Nova actions run on two
worker threads, one at a time per host. A Nova error leaves the hold as it was; the
action is tried again after ``retry_after`` seconds (logged each time, with the host).
The failed attempts and the time of the next are stored with the snapshot, so a
restarted vigil resumes the retry where it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from vigil.clock import Clock
from vigil.drivers.compute import ComputeDriver
from vigil.drivers.errors import DriverError
from vigil.engine.ownership import SOLE_OWNER, HostOwner
from vigil.engine.reconciler import Reaction, RetryPolicy
from vigil.engine.services import (
    DisableCompute,
    ForgetHold,
    ReleaseCompute,
    ServiceAction,
    decide_services,
    may_act,
)
from vigil.engine.workers import Cancelled, KeyedWorkers
from vigil.events import make_event
from vigil.model import (
    SERVICE_HOLD_PREFIX,
    ComputeHold,
    Event,
    Host,
    HostServices,
    ServiceState,
)
from vigil.store import NotFoundError, Store

LOG = logging.getLogger("vigil.engine.services")


def _services_json(services: HostServices) -> dict[str, dict[str, Any]]:
    return {
        name: {"up": s.up, "since": s.since, "detail": s.detail}
        for name, s in sorted(services.services.items())
    }


@dataclass(frozen=True)
class ServiceSnapshot:
    candidates: Sequence[HostServices]  # snapshots that may need an action, not busy
    hosts: Mapping[str, Host]


class ServiceKeeper(Reaction[ServiceSnapshot, ServiceAction]):
    name = "host services"

    def __init__(
        self,
        *,
        store: Store,
        compute: ComputeDriver,
        clock: Clock,
        on_events: Callable[[], None] | None = None,
        retry_after: float = 5.0,
    ) -> None:
        super().__init__()
        self._store = store
        self._compute = compute
        self._clock = clock
        self._on_events = on_events
        # retried for as long as it takes, every retry_after seconds
        self._retry = RetryPolicy(attempts=0, base=retry_after, cap=retry_after)
        self._workers = KeyedWorkers(2, "vigil-services")  # one action per host at a time
        # With several servers, only the owner of a host's segment acts on its services,
        # under its token (``vigil.engine.ownership.HostOwner``).
        self.owner: HostOwner = SOLE_OWNER
        self.handle(ForgetHold, self._forget)
        self.handle(DisableCompute, self._submit)
        self.handle(ReleaseCompute, self._submit)
        self._by_host: dict[str, HostServices] = {}

    # --- reports (the API calls this) -------------------------------------------------

    def receive(
        self, host: str, services: Mapping[str, ServiceState], *, reported_at: float
    ) -> tuple[HostServices, bool]:
        """Persist ``host``'s snapshot (an older one than stored changes nothing)."""
        now = self._clock.wall()

        def events(old: HostServices | None, new: HostServices) -> list[Event]:
            was_up = {n: st.up for n, st in old.services.items()} if old is not None else {}
            # A service seen for the first time is news only when it is down.
            went_down = sorted(
                n for n, st in new.services.items() if not st.up and was_up.get(n, True)
            )
            came_up = sorted(
                n for n, st in new.services.items() if st.up and not was_up.get(n, True)
            )
            out = []
            for event_type, changed in (
                ("vigil.host.service.down", went_down),
                ("vigil.host.service.up", came_up),
            ):
                if changed:
                    out.append(
                        make_event(
                            event_type,
                            at=now,
                            host=host,
                            services_down=list(new.down),
                            services=_services_json(new),
                            changed=changed,
                        )
                    )
                    for name in changed:
                        state = new.services[name]
                        LOG.log(
                            logging.WARNING if not state.up else logging.INFO,
                            "host %s: %s %s (%s)%s",
                            host,
                            name,
                            "up again" if state.up else "DOWN",
                            state.detail or "no detail",
                            "" if state.up else "; its instances are left running, not fenced",
                        )
            return out

        result = self._store.record_host_services(
            host, services, reported_at=reported_at, at=now, events=events
        )
        self._events_written()
        return result

    # --- the cycle ----------------------------------------------------------------------

    def observe(self) -> ServiceSnapshot:
        now = self._clock.wall()
        busy = self._workers.busy()
        candidates = [
            s
            for s in self._store.list_host_services()
            if may_act(s)
            and s.host not in busy
            and s.next_attempt_at <= now
            and self.owner.owns(s.host)
        ]
        hosts = {}
        for s in candidates:
            try:
                hosts[s.host] = self._store.get_host(s.host)
            except NotFoundError:
                continue  # deleted meanwhile
        self._by_host = {s.host: s for s in candidates}
        return ServiceSnapshot(candidates, hosts)

    def decide(self, snapshot: ServiceSnapshot) -> Sequence[ServiceAction]:
        if not snapshot.candidates:
            return []
        return decide_services(list(snapshot.candidates), dict(snapshot.hosts))

    def admit(self, action: ServiceAction) -> bool:
        return self.owner.owns(action.host)  # not lost since the snapshot

    def acting(self, action: ServiceAction) -> AbstractContextManager[None]:
        return self.owner.acting(action.host)

    def recorded(self) -> None:
        pass  # the workers and ``_forget`` tell the outbox themselves

    def _submit(self, action: DisableCompute | ReleaseCompute) -> None:
        """Nova may hold a disable call for its rpc_response_timeout (it asks the compute,
        dead or not, to update its placement trait): on a worker, never on the loop."""
        run = self.owner.job(action.host, f"{type(action).__name__} of {action.host}", self._run)
        self._workers.submit(action.host, run, action, self._by_host[action.host])

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no action runs (tests, and a clean stop)."""
        return self._workers.drain(timeout)

    def stop(self) -> None:
        self._workers.stop()

    def _run(self, action: DisableCompute | ReleaseCompute, services: HostServices) -> None:
        try:
            if isinstance(action, DisableCompute):
                self._disable(action)
            else:
                self._release(action, services)
        except Cancelled as exc:  # its segment's new owner decides again
            LOG.warning("host %s: service action stopped: %s", action.host, exc)
        except Exception as exc:
            attempt = services.action_attempts + 1
            delay = self._retry.after_failure(attempt, exc)
            delay = self._retry.base if delay is None else delay  # never given up
            try:
                self._store.set_service_retry(
                    action.host, attempts=attempt, next_attempt_at=self._clock.wall() + delay
                )
            except Exception:
                LOG.exception("host %s: recording the retry failed", action.host)
            what = (
                "disabling its compute service"
                if isinstance(action, DisableCompute)
                else "enabling its compute service"
            )
            if isinstance(exc, DriverError):
                LOG.warning(
                    "host %s: %s failed, retrying in %gs: %s", action.host, what, delay, exc
                )
            else:
                LOG.exception("host %s: %s crashed, retrying in %gs", action.host, what, delay)

    def _forget(self, action: ForgetHold) -> None:
        self._store.set_compute_hold(action.host, ComputeHold.NONE, "", at=self._clock.wall())
        LOG.info("host %s: service hold forgotten: %s", action.host, action.why)

    def _disable(self, action: DisableCompute) -> None:
        host = action.host
        service = self._compute.get_service(host)
        if service.disabled and not service.disabled_reason.startswith(SERVICE_HOLD_PREFIX):
            hold, reason, what = ComputeHold.LEFT, service.disabled_reason, "left-disabled"
            LOG.warning(
                "host %s: %s down; its compute service was already disabled (%r): "
                "left as it is, and vigil will not enable it",
                host,
                ", ".join(action.down),
                service.disabled_reason,
            )
        else:
            self.owner.may_act()
            self._compute.disable(host, action.reason)
            hold, reason, what = ComputeHold.DISABLED, action.reason, "disabled"
            LOG.warning(
                "host %s: compute service disabled for scheduling while %s down "
                "(instances left running, host not fenced)",
                host,
                ", ".join(action.down),
            )
        now = self._clock.wall()  # after Nova's answer
        event = make_event(
            "vigil.host.compute.disabled",
            at=now,
            host=host,
            services_down=list(action.down),
            action=what,
            reason=reason,
        )
        self._store.set_compute_hold(host, hold, reason, at=now, events=[event])
        self._events_written()

    def _release(self, action: ReleaseCompute, services: HostServices) -> None:
        host = action.host
        what, reason = "released", ""
        if action.hold is ComputeHold.DISABLED:
            service = self._compute.get_service(host)
            if service.disabled and service.disabled_reason.startswith(SERVICE_HOLD_PREFIX):
                self.owner.may_act()
                self._compute.enable(host)
                what = "enabled"
                reason = f"services up again; was disabled with {service.disabled_reason!r}"
                LOG.info("host %s: compute service enabled again: %s", host, reason)
            else:
                reason = (
                    "services up again; the compute service was changed by someone else "
                    f"meanwhile (disabled: {service.disabled}, reason "
                    f"{service.disabled_reason!r}): left as it is"
                )
                LOG.warning("host %s: %s", host, reason)
        else:
            LOG.info(
                "host %s: services up again; its compute service stays as its owner left it (%r)",
                host,
                services.hold_reason,
            )
        now = self._clock.wall()
        events = []
        if action.hold is ComputeHold.DISABLED:
            events.append(
                make_event(
                    "vigil.host.compute.enabled",
                    at=now,
                    host=host,
                    services_down=[],
                    action=what,
                    reason=reason,
                )
            )
        self._store.set_compute_hold(host, ComputeHold.NONE, "", at=now, events=events)
        self._events_written()

    def _events_written(self) -> None:
        if self._on_events is not None:
            self._on_events()
