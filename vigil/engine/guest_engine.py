"""The guest failure loop: record agents' reports, decide (``vigil.engine.guest``), act.

``GuestEngine.receive`` persists reports — each with its ``vigil.instance.guest.failure``
event, in the same transaction — before the API acknowledges them (S2), then wakes the
loop. Each cycle reads the unresolved failures, looks up the policy of those with new
reports, calls the pure ``decide_guest`` and performs its actions, logging one sentence
each with host and instance.

The restart is a persisted step on the failure row: PENDING (with its not-before time)
→ RUNNING (written before Nova is called) → SUCCEEDED, or back to PENDING after a
temporary error, or FAILED (escalated) when its attempts run out. It runs on a worker
thread so a slow Nova never stalls the loop. It is idempotent enough to run again after
a crash: it reads the instance first and starts a SHUTOFF one, hard-reboots any other
(a crashed guest that Nova still believes ACTIVE) — at worst a guest that already came
back is rebooted once more. Confirmation: Nova reads ACTIVE within
``restart_confirm_timeout``.

A reaction on the skeleton of ``vigil.engine.reconciler``: ``observe`` (failures, their
policies once a worker has read them from Nova), ``decide_guest``, one handler per
action. Its loop also runs the host service keeper's cycle.

Limits: runs beside the host engine with its own tick rather than inside its cycle; the
cloud-wide operator pause (S4) holds restarts, segment pauses do not (guest failures are
not storms of hosts).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from vigil.clock import Clock
from vigil.drivers import compute as nova
from vigil.drivers.compute import WATCHDOG_ACTION_KEY, ComputeDriver
from vigil.drivers.errors import DriverError
from vigil.engine.app_engine import AppHealth
from vigil.engine.guest import (
    Acknowledge,
    Escalate,
    GuestAction,
    GuestPolicy,
    GuestSettings,
    GuestView,
    NotifyOwner,
    PlanRestart,
    Resolve,
    RunRestart,
    decide_guest,
    guest_policy_from_metadata,
    needs_policy,
)
from vigil.engine.ownership import SOLE_OWNER, HostOwner
from vigil.engine.reconciler import Loop, Reaction, RetryPolicy
from vigil.engine.service_keeper import ServiceKeeper
from vigil.engine.workers import Cancelled, KeyedWorkers
from vigil.events import make_event
from vigil.model import (
    GuestFailureStatus,
    GuestReport,
    HaPolicy,
    InstanceFailure,
    StepStatus,
)
from vigil.store import NotFoundError, Store

LOG = logging.getLogger("vigil.engine.guest")
UNRESOLVED = (
    GuestFailureStatus.OPEN,
    GuestFailureStatus.RECOVERING,
    GuestFailureStatus.NOTIFIED,
    GuestFailureStatus.ESCALATED,
)
REASONS = {
    "watchdog": "guest watchdog fired",
    "crashed": "guest crashed",
    "stopped-failed": "guest stopped unexpectedly (QEMU failed)",
    "io-error": "guest I/O error",
}


def describe(report: GuestReport) -> str:
    what = REASONS.get(report.kind.value, report.kind.value)
    extra = report.detail.get("action") or report.detail.get("reason")
    return f"{what}: {extra}" if extra else what


class ComputePolicies:
    """The default policy lookup: an operator override, else what the compute driver says
    of the instance (metadata, image, flavor: the HA policy and ``vigil:watchdog_action``,
    each from the first that sets it), else the segment default of its host."""

    def __init__(self, store: Store, compute: ComputeDriver) -> None:
        self._store = store
        self._compute = compute

    def __call__(self, failure: InstanceFailure) -> GuestPolicy:
        override = self._store.get_instance_policy(failure.instance_id)
        ha: HaPolicy | None = override.policy if override is not None else None
        watchdog: dict[str, str] = {}
        try:
            server = self._compute.get_server(failure.instance_id)
            if ha is None:
                ha = server.policy
            if server.watchdog_action is not None:
                watchdog[WATCHDOG_ACTION_KEY] = server.watchdog_action
        except DriverError as exc:
            LOG.warning(
                "host %s: instance %s: policy unreadable (%s); using the %s",
                failure.host,
                failure.instance_id,
                exc,
                "operator's override" if ha is not None else "segment default",
            )
        if ha is None:
            try:
                segment = self._store.get_segment(self._store.get_host(failure.host).segment)
                ha = segment.default_policy
            except NotFoundError:
                ha = HaPolicy.OFF
        return guest_policy_from_metadata(ha, watchdog)


class GuestEngine(Reaction[list[GuestView], GuestAction]):
    """Guest failures: a reaction (``vigil.engine.reconciler``) that also drives the host
    service keeper's cycle on its loop."""

    name = "guest failures"

    def __init__(
        self,
        *,
        store: Store,
        compute: ComputeDriver,
        clock: Clock,
        settings: GuestSettings | None = None,
        policies: Callable[[InstanceFailure], GuestPolicy] | None = None,
        on_events: Callable[[], None] | None = None,
        tick: float = 0.5,
        wait: Callable[[float], None] = time.sleep,
        poll_interval: float = 0.5,
        services: ServiceKeeper | None = None,
        apps: AppHealth | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        self.services = services
        self.apps = apps
        # With several servers, only the owner of a host's segment acts on its guests,
        # under its token (``vigil.engine.ownership.HostOwner``).
        self.owner: HostOwner = SOLE_OWNER
        self._compute = compute
        self._clock = clock
        self.settings = settings or GuestSettings()
        self.settings.validate()
        self._policies = policies or ComputePolicies(store, compute)
        self._on_events = on_events
        self._wait = wait
        self._poll_interval = poll_interval
        # restarts and policy lookups, by failure id
        self._workers = KeyedWorkers(4, "vigil-guest")
        self._lock = threading.Lock()
        # failure id -> (its report count when looked up, its policy), used by one decision
        self._looked_up: dict[int, tuple[int, GuestPolicy]] = {}
        self._lookup_failing: set[int] = set()  # logged once, not at every tick
        self._held = False  # the operator's pause, as the latest snapshot read it
        self._due: list[float] = []  # when pending restarts are due (wall clock)
        for kind, handler in (
            (Acknowledge, self._acknowledge),
            (NotifyOwner, self._notify),
            (PlanRestart, self._plan),
            (Escalate, self._escalate),
            (Resolve, self._resolve),
            (RunRestart, self._run_restart),
        ):
            self.handle(kind, handler)
        # The agents' service snapshots (nova-compute, libvirtd) are acted on in this loop.
        # ...and the application checks' failures (issue 17).
        extra: list[Reaction[Any, Any]] = [r for r in (services, apps) if r is not None]
        self._loop = Loop("vigil-guest-engine", [self, *extra], tick)

    # --- reports (the API calls this) -------------------------------------------------

    def receive(self, reports: Sequence[GuestReport]) -> list[InstanceFailure]:
        """Persist ``reports`` (duplicates ignored) with their events; wake the loop."""
        out: list[InstanceFailure] = []
        now = self._clock.wall()
        for report in reports:
            reason = describe(report)

            def events(
                f: InstanceFailure, new: bool, reason: str = reason, report: GuestReport = report
            ) -> list[Any]:
                return [
                    make_event(
                        "vigil.instance.guest.failure",
                        at=now,
                        host=f.host,
                        instance_id=f.instance_id,
                        failure_id=f.id,
                        kind=report.kind.value,
                        reason=reason,
                        status=f.status.value,
                        count=f.count,
                        detail=dict(report.detail),
                        observed_at=report.at,
                    )
                ]

            failure, new, duplicate = self._store.record_guest_report(
                report, reason=reason, received_at=now, events=events
            )
            if duplicate:
                LOG.info(
                    "host %s: instance %s: report %s already recorded",
                    report.host,
                    report.instance_id,
                    report.id,
                )
            else:
                LOG.warning(
                    "host %s: instance %s: %s (failure %d, %s, count %d)",
                    report.host,
                    report.instance_id,
                    reason,
                    failure.id,
                    "new" if new else "folded",
                    failure.count,
                )
            out.append(failure)
        self._events_written()
        self.wake()
        return out

    # --- the loop -----------------------------------------------------------------------

    @property
    def loop(self) -> Loop:
        """The loop this reaction's cycles run on (its counts feed the metrics)."""
        return self._loop

    def wake(self) -> None:
        self._loop.wake()

    def start(self) -> None:
        # With segment ownership, the engine requeues them segment by segment as it takes
        # each (never those its owner, another server, is in the middle of).
        if not self.owner.ownership.shared:
            count = self._store.requeue_running_guest_actions(at=self._clock.wall())
            if count:
                LOG.warning("resuming: %d instance restarts were running when vigil stopped", count)
        self._loop.start()

    def stop(self) -> None:
        self._loop.close()
        self._workers.stop()
        if self.services is not None:
            self.services.stop()
        if self.apps is not None:
            self.apps.stop()

    def drain(self, timeout: float = 10.0) -> bool:
        return self._workers.drain(timeout)

    def observe(self) -> list[GuestView]:
        failures = [
            f
            for f in self._store.list_guest_failures(statuses=UNRESOLVED)
            if self.owner.owns(f.host)
        ]
        in_flight = self._workers.busy()
        views = []
        for f in failures:
            policy: GuestPolicy | None = None
            busy = f.id in in_flight
            if needs_policy(f) and not busy:
                # The policy is read from Nova on a worker, never on this thread: a slow
                # Nova must not delay the other failures' decisions nor the services'.
                with self._lock:
                    looked = self._looked_up.get(f.id)
                if looked is not None and looked[0] == f.count:
                    policy = looked[1]
                else:
                    # Not decided on until its policy is known (not submitted when
                    # shutting down: looked up at the next start).
                    self._workers.submit(f.id, self._look_up, f, then=self.wake)
                    busy = True
            views.append(GuestView(f, policy, in_flight=busy))
        with self._lock:
            for view in views:
                if view.policy is not None:
                    self._looked_up.pop(view.failure.id, None)  # used by this decision
        self._held = self._store.get_control().paused
        # A restart due sooner than the next tick runs when it is due, not a tick late.
        self._due = [
            v.failure.next_restart_at
            for v in views
            if v.failure.action_status == StepStatus.PENDING and not needs_policy(v.failure)
        ]
        return views

    def decide(self, snapshot: list[GuestView]) -> list[GuestAction]:
        return decide_guest(snapshot, self._clock.wall(), self.settings)

    def admit(self, action: GuestAction) -> bool:
        # The operator's pause (S4) holds restarts; reports are still recorded.
        if not self.owner.owns(action.failure.host):  # lost since the snapshot
            return False
        return not (self._held and isinstance(action, RunRestart))

    def acting(self, action: GuestAction) -> AbstractContextManager[None]:
        return self.owner.acting(action.failure.host)

    def recorded(self) -> None:
        self._events_written()

    def next_wait(self, tick: float) -> float:
        now = self._clock.wall()
        return max(0.0, min([tick, *(at - now for at in self._due)]))

    def policies_ready(self) -> bool:
        """Whether policies looked up since the last cycle wait to be decided on."""
        with self._lock:
            return bool(self._looked_up)

    def _look_up(self, f: InstanceFailure) -> None:
        try:
            policy = self._policies(f)
        except Exception as exc:
            with self._lock:
                first = f.id not in self._lookup_failing
                self._lookup_failing.add(f.id)
            if first:
                LOG.warning(
                    "host %s: instance %s: cannot read its HA policy (%s); trying again "
                    "at every tick until Nova answers",
                    f.host,
                    f.instance_id,
                    exc,
                )
            return
        with self._lock:
            if f.id in self._lookup_failing:
                self._lookup_failing.discard(f.id)
                LOG.info("host %s: instance %s: HA policy read", f.host, f.instance_id)
            self._looked_up[f.id] = (f.count, policy)

    # --- actions (each on the loop's thread: store writes; the restart on a worker) -----

    def _event(self, event_type: str, f: InstanceFailure, reason: str, **extra: Any) -> Any:
        return make_event(
            event_type,
            at=self._clock.wall(),
            host=f.host,
            instance_id=f.instance_id,
            failure_id=f.id,
            kind=f.kind.value,
            reason=reason,
            count=f.count,
            restarts=f.restarts,
            **extra,
        )

    def _where(self, f: InstanceFailure) -> str:
        return f"host {f.host}: instance {f.instance_id}"

    def _acknowledge(self, action: Acknowledge) -> None:
        f = action.failure
        self._store.update_guest_failure(f.id, at=self._clock.wall(), seen_count=f.count)
        LOG.info("%s: failure %d: %s", self._where(f), f.id, action.reason)

    def _notify(self, action: NotifyOwner) -> None:
        f = action.failure
        event = self._event(
            "vigil.instance.guest.notify",
            f,
            action.reason,
            policy="notify",
            detail=dict(f.detail),
        )
        status = GuestFailureStatus.NOTIFIED if f.status == GuestFailureStatus.OPEN else f.status
        self._store.update_guest_failure(
            f.id, at=self._clock.wall(), seen_count=f.count, status=status, events=[event]
        )
        LOG.warning("%s: owner notified, guest left as it is: %s", self._where(f), action.reason)

    def _plan(self, action: PlanRestart) -> None:
        f = action.failure
        self._store.update_guest_failure(
            f.id,
            at=self._clock.wall(),
            seen_count=f.count,
            status=GuestFailureStatus.RECOVERING,
            action_status=StepStatus.PENDING,
            action_attempts=0,
            next_restart_at=action.at,
            action_detail="",
        )
        self._due.append(action.at)
        LOG.warning("%s: restart planned: %s", self._where(f), action.reason)

    def _escalate(self, action: Escalate) -> None:
        f = action.failure
        event = self._event(
            "vigil.instance.guest.escalated", f, action.reason, policy="keep-running"
        )
        self._store.update_guest_failure(
            f.id,
            at=self._clock.wall(),
            seen_count=f.count,
            status=GuestFailureStatus.ESCALATED,
            action_status=None,
            events=[event],
        )
        LOG.error("%s: ESCALATED: %s", self._where(f), action.reason)

    def _resolve(self, action: Resolve) -> None:
        f = action.failure
        self._store.update_guest_failure(
            f.id, at=self._clock.wall(), status=GuestFailureStatus.RESOLVED, action_status=None
        )
        LOG.info("%s: failure %d resolved: %s", self._where(f), f.id, action.reason)

    def _run_restart(self, action: RunRestart) -> None:
        f = action.failure
        attempt = f.action_attempts + 1
        event = self._event(
            "vigil.instance.guest.restart.start",
            f,
            f.reason,
            policy="keep-running",
            attempt=attempt,
        )
        started = self._store.update_guest_failure(
            f.id,
            at=self._clock.wall(),
            action_status=StepStatus.RUNNING,
            action_attempts=attempt,
            restarts=f.restarts + (1 if attempt == 1 else 0),
            events=[event],
        )
        # Not submitted when shutting down: requeued at the next start.
        # The loop is woken once the failure is no longer busy.
        restart = self.owner.job(
            f.host,
            f"restart of instance {f.instance_id}",
            self._restart,
            refused=lambda: self._redo(started, "not started: acting stopped"),
        )
        self._workers.submit(f.id, restart, started, then=self.wake)

    def _restart(self, f: InstanceFailure) -> None:
        where = f"host {f.host}: instance {f.instance_id}"
        try:
            try:
                detail = self._restart_through_nova(f)
            except Cancelled as exc:  # its segment's new owner re-checks it
                LOG.warning("%s: restart stopped: %s", where, exc)
                if self.owner.to_redo(exc):  # or this server, once renewed
                    self._redo(f, str(exc))
                return
            except Exception as exc:
                if not isinstance(exc, DriverError):
                    LOG.exception("%s: restart crashed", where)
                self._restart_failed(f, exc)
                return
            now = self._clock.wall()
            event = self._event(
                "vigil.instance.guest.restart.end",
                f,
                detail,
                policy="keep-running",
                attempt=f.action_attempts,
            )
            # Back to OPEN: the episode stays open (and its budget counted) until it has
            # been quiet for quiet_after; a crash meanwhile folds into it.
            self._store.update_guest_failure(
                f.id,
                at=now,
                status=GuestFailureStatus.OPEN,
                action_status=StepStatus.SUCCEEDED,
                action_detail=detail,
                events=[event],
            )
            LOG.info(
                "%s: restarted (%d of budget %d): %s",
                where,
                f.restarts,
                self.settings.restart_budget,
                detail,
            )
        except Exception:
            LOG.exception("%s: recording the restart failed", where)
        finally:
            self._events_written()

    def _restart_through_nova(self, f: InstanceFailure) -> str:
        server = self._compute.get_server(f.instance_id)
        self.owner.may_act()
        if server.status == nova.SHUTOFF:
            self._compute.start(f.instance_id)
            how = "started through Nova (it was SHUTOFF)"
        else:
            self._compute.reboot(f.instance_id, hard=True)
            how = f"hard reboot through Nova (it was {server.status})"
        deadline = self._clock.monotonic() + self.settings.restart_confirm_timeout
        while True:
            server = self._compute.get_server(f.instance_id)
            if server.status == nova.ACTIVE:
                return f"{how}: ACTIVE"
            if self._clock.monotonic() >= deadline:
                raise DriverError(
                    f"{how}, but it is {server.status} after "
                    f"{self.settings.restart_confirm_timeout:g}s"
                )
            self._wait(self._poll_interval)

    def _redo(self, f: InstanceFailure, why: str) -> None:
        """A restart stopped, or not started, before Nova was asked, while the acting
        window had lapsed: due again, done once this server may act (its attempt counted,
        the restart budget not again)."""
        now = self._clock.wall()
        self._store.update_guest_failure(
            f.id,
            at=now,
            action_status=StepStatus.PENDING,
            next_restart_at=now,
            action_detail=why,
        )

    def _restart_failed(self, f: InstanceFailure, exc: Exception) -> None:
        now = self._clock.wall()
        where = f"host {f.host}: instance {f.instance_id}"
        event = self._event(
            "vigil.instance.guest.restart.error",
            f,
            str(exc),
            policy="keep-running",
            attempt=f.action_attempts,
        )
        delay = RetryPolicy(
            self.settings.restart_attempts, self.settings.backoff_base, self.settings.backoff_max
        ).after_failure(f.action_attempts, exc)
        if delay is None:  # a PermanentError, or its attempts are spent
            escalate = self._event(
                "vigil.instance.guest.escalated",
                f,
                f"restart failed after {f.action_attempts} attempt(s): {exc}",
                policy="keep-running",
            )
            self._store.update_guest_failure(
                f.id,
                at=now,
                status=GuestFailureStatus.ESCALATED,
                action_status=StepStatus.FAILED,
                action_detail=str(exc),
                events=[event, escalate],
            )
            LOG.error("%s: restart FAILED, escalated: %s", where, exc)
            return
        self._store.update_guest_failure(
            f.id,
            at=now,
            action_status=StepStatus.PENDING,
            next_restart_at=now + delay,
            action_detail=str(exc),
            events=[event],
        )
        LOG.warning(
            "%s: restart attempt %d failed, retrying in %.1fs: %s",
            where,
            f.action_attempts,
            delay,
            exc,
        )

    def _events_written(self) -> None:
        if self._on_events is not None:
            self._on_events()
