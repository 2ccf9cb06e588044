"""Guest OS failures: the rule, a pure function of the open failures, their policies and
the time (``decide_guest``), and its settings.

What the host agents report (``vigil.model.GuestReport``) is folded by the store into
failure episodes (``InstanceFailure``); each cycle the engine hands the unresolved ones
here with the policy of their instance, and performs what comes back.

The policies:

- watchdog, libvirt action ``reset`` (Nova's ``hw:watchdog_action=reset``): Nova's (and
  QEMU's) job. Each firing is recorded and published; ``reset_loop_count`` firings within
  ``reset_loop_window`` are a reset loop and escalate (an event; vigil does nothing else).
- watchdog with ``notify`` (vigil's key ``vigil:watchdog_action=notify`` beside Nova's
  ``none`` or ``pause``, or HA policy ``notify``): every firing is published as
  ``vigil.instance.guest.notify``; the guest is left as it is.
- watchdog with any other action (``poweroff`` and ``shutdown`` are followed by a stop
  that the agent reports as its own failure): recorded only.
- crashed or stopped-failed, HA policy ``keep-running``: restart through Nova with
  exponential backoff, at most ``restart_budget`` restarts in one episode; then
  escalation. Policy ``notify``: published, left as it is. ``off``: recorded only.
- I/O error: published (notify) unless the policy is ``off``; a restart does not mend a
  disk.
- An episode with no report for ``quiet_after`` seconds, and no restart pending, is
  resolved: the next failure starts a new budget. An escalated one stays escalated (later
  reports fold into it, vigil does not act) until someone resolves it.

Intentional stops (a clean shutdown from inside, a stop through Nova) never reach here:
the agent does not report them (``vigil.agent.libvirt_monitor``).
An operator or the owner closes an escalated failure with ``POST
/v1/guest-failures/{id}/handled`` (``vigil guest-failure handled``); the next failure
starts a new episode with a fresh budget.
Limits: escalation only publishes an event; rebuilding or migrating the instance is left
to whoever receives it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vigil.drivers import compute
from vigil.engine.reconciler import backoff
from vigil.model import (
    GuestFailureKind,
    GuestFailureStatus,
    HaPolicy,
    InstanceFailure,
    StepStatus,
)

# vigil's own watchdog key (Nova validates hw:watchdog_action and refuses unknown values).
WATCHDOG_ACTION_KEY = compute.WATCHDOG_ACTION_KEY
CRASH_KINDS = frozenset({GuestFailureKind.CRASHED, GuestFailureKind.STOPPED_FAILED})


@dataclass(frozen=True)
class GuestSettings:
    restart_budget: int = 3  # restarts per episode before escalation
    backoff_base: float = 5.0  # seconds before the 2nd restart; doubles each time
    backoff_max: float = 300.0
    restart_attempts: int = 3  # attempts of one restart step (Nova errors) before giving up
    restart_confirm_timeout: float = 120.0  # seconds for the instance to read ACTIVE
    reset_loop_count: int = 3  # watchdog resets...
    reset_loop_window: float = 300.0  # ...within this many seconds: a reset loop
    quiet_after: float = 600.0  # an episode with no report for this long is resolved

    def backoff(self, restarts: int) -> float:
        """Delay before restart number ``restarts + 1``: none for the first."""
        return backoff(restarts, base=self.backoff_base, cap=self.backoff_max)

    def validate(self) -> None:
        if self.restart_budget < 0 or self.reset_loop_count < 1:
            raise ValueError("guest: restart_budget >= 0 and reset_loop_count >= 1 required")
        if self.quiet_after <= self.backoff_max:
            raise ValueError(
                f"guest: quiet_after ({self.quiet_after}s) must exceed backoff_max "
                f"({self.backoff_max}s), or a crash loop would be forgotten between restarts "
                "and its budget never run out"
            )


@dataclass(frozen=True)
class GuestPolicy:
    """What the owner of an instance wants for guest failures."""

    ha: HaPolicy = HaPolicy.OFF
    watchdog_notify: bool = False  # vigil:watchdog_action=notify


def guest_policy_from_metadata(ha: HaPolicy, *sources: Mapping[str, str]) -> GuestPolicy:
    """``vigil:watchdog_action`` from the first of ``sources`` that sets it — pass server
    metadata, image properties, flavor extra specs in that order (the same precedence as
    the HA policy: the owner's choice for this instance, then the image's author, then the
    operator's flavor). HA policy ``notify`` implies watchdog notify."""
    for source in sources:
        value = source.get(WATCHDOG_ACTION_KEY)
        if value is not None:
            return GuestPolicy(ha, value.strip().lower() == "notify")
    return GuestPolicy(ha, ha == HaPolicy.NOTIFY)


@dataclass(frozen=True)
class GuestView:
    failure: InstanceFailure
    policy: GuestPolicy | None  # None: not looked up (no decision needs it)
    in_flight: bool = False  # its restart step is being executed now


# --- actions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Acknowledge:
    """The new reports need nothing beyond their recording (already published)."""

    failure: InstanceFailure
    reason: str


@dataclass(frozen=True)
class NotifyOwner:
    failure: InstanceFailure
    reason: str


@dataclass(frozen=True)
class PlanRestart:
    failure: InstanceFailure
    at: float  # not before (backoff)
    reason: str


@dataclass(frozen=True)
class RunRestart:
    failure: InstanceFailure


@dataclass(frozen=True)
class Escalate:
    failure: InstanceFailure
    reason: str


@dataclass(frozen=True)
class Resolve:
    failure: InstanceFailure
    reason: str


GuestAction = Acknowledge | NotifyOwner | PlanRestart | RunRestart | Escalate | Resolve


def needs_policy(failure: InstanceFailure) -> bool:
    """Whether deciding on ``failure`` needs its policy (the engine looks it up only then)."""
    return failure.count > failure.seen_count


def decide_guest(
    views: Sequence[GuestView], now: float, settings: GuestSettings
) -> list[GuestAction]:
    actions: list[GuestAction] = []
    for view in views:
        actions.extend(_decide_one(view, now, settings))
    return actions


def _decide_one(view: GuestView, now: float, settings: GuestSettings) -> list[GuestAction]:
    f = view.failure
    if f.status == GuestFailureStatus.RESOLVED or view.in_flight:
        return []
    if f.action_status == StepStatus.RUNNING:
        return []  # found running after a crash: the engine requeues it at start
    if f.count > f.seen_count:
        assert view.policy is not None, "the engine looks the policy up for new reports"
        return _on_new_reports(f, view.policy, now, settings)
    if f.action_status == StepStatus.PENDING:
        return [RunRestart(f)] if f.next_restart_at <= now else []
    if f.status != GuestFailureStatus.ESCALATED and now - f.last_seen >= settings.quiet_after:
        return [Resolve(f, f"no report for {now - f.last_seen:.0f}s")]
    return []


def _on_new_reports(
    f: InstanceFailure, policy: GuestPolicy, now: float, settings: GuestSettings
) -> list[GuestAction]:
    if f.status == GuestFailureStatus.ESCALATED:
        return [Acknowledge(f, "already escalated: vigil no longer acts on it")]
    if f.kind == GuestFailureKind.WATCHDOG:
        action = str(f.detail.get("action", ""))
        if action == "reset":
            since = now - settings.reset_loop_window
            recent = sum(1 for t in f.occurrences if t >= since)
            if recent >= settings.reset_loop_count:
                return [
                    Escalate(
                        f,
                        f"watchdog reset loop: {recent} resets within "
                        f"{settings.reset_loop_window:g}s",
                    )
                ]
            return [Acknowledge(f, f"watchdog reset by Nova's policy ({recent} in window)")]
        if policy.watchdog_notify:
            return [NotifyOwner(f, f"guest watchdog fired (libvirt action {action or '?'})")]
        return [Acknowledge(f, f"guest watchdog fired (libvirt action {action or '?'})")]
    if policy.ha == HaPolicy.OFF:
        return [Acknowledge(f, "instance not protected (policy off)")]
    if f.kind == GuestFailureKind.IO_ERROR or policy.ha == HaPolicy.NOTIFY:
        return [NotifyOwner(f, f.reason)]
    # keep-running, crashed or stopped-failed
    if f.action_status == StepStatus.PENDING:
        return [Acknowledge(f, "restart already planned")]
    if f.restarts >= settings.restart_budget:
        return [
            Escalate(
                f,
                f"restart budget exhausted: {f.restarts} restarts and it failed again "
                f"({f.count} failures since {f.first_seen:.0f})",
            )
        ]
    delay = settings.backoff(f.restarts)
    return [PlanRestart(f, now + delay, f"{f.reason}; restart {f.restarts + 1} in {delay:g}s")]
