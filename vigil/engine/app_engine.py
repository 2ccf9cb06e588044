"""Application failures: the agents' check states and the applications' own heartbeats
in, the recovery ladder out (issue 17).

Three ways in, each persisted with its events before it is answered (S2):

- ``exchange(report)`` — the agent's signed report (``POST /v1/agents/{host}/app``):
  the state of every check it runs, the outcome of the guest commands it ran. The
  answer is the host's plan (the checks each instance declared; ``heartbeat`` checks are
  the server's) and the guest commands waiting (an application restart). The host's
  declarations are read from Nova (``list_servers``: metadata, image, flavor) when the
  agent asks and they are older than ``plan_ttl`` — on the API's thread, never the
  loop's; Nova away keeps the declarations read before.
- ``beat(instance, credential, reset=)`` — the application's own call
  (``POST /v1/instances/{id}/app/heartbeat``): a per-instance credential
  (``credential(instance)``, an HMAC of the instance id under the agent key), a beat or
  "recover me now".
- ``close(instance, by=)`` — an operator or the owner closes the failure.

The cycle (a reaction on ``vigil.engine.reconciler``'s skeleton, run by the guest
engine's loop): ``observe`` reads the instances with checks this server owns and their
hosts' states, the pure ``decide_apps`` judges heartbeats and climbs each ladder, one
handler per action. An application restart is a guest command handed to the agent with
its next answer (the agent runs each command id once); a reboot or rebuild is a Nova
call on a worker (one per instance at a time), recorded RUNNING before Nova is called.
A rung's outcome does not end the failure: the checks do, after the rung's ``settle``.

Limits: the cycle reads every instance with checks (not every instance: only those with
a declaration have a row); the plan is refreshed per host on the agent's report.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from vigil.clock import Clock
from vigil.drivers.compute import ComputeDriver
from vigil.drivers.errors import DriverError
from vigil.engine.app_health import (
    MASAKARI_CHECK,
    REPORTED_CHECKS,
    RESET_CHECK,
    AppAction,
    AppSnapshot,
    AppView,
    EscalateEpisode,
    JudgeBeats,
    Mode,
    OpenEpisode,
    ResolveEpisode,
    StartRung,
    decide_apps,
)
from vigil.engine.ownership import SOLE_OWNER, HostOwner
from vigil.engine.reconciler import Reaction
from vigil.engine.workers import Cancelled, KeyedWorkers
from vigil.events import make_event
from vigil.model import (
    AppEpisode,
    AppEpisodeStatus,
    AppInstance,
    CheckState,
    Event,
    HaPolicy,
    Health,
    HostState,
    StepStatus,
)
from vigil.store import NotFoundError, Store
from vigil.wire.app_checks import (
    AppAnswer,
    AppDeclaration,
    AppReport,
    CheckSpec,
    CheckType,
    GuestCommand,
    Rung,
    SpecError,
    declaration_from,
)

LOG = logging.getLogger("vigil.engine.app")
_CREDENTIAL_LABEL = b"vigil-app-heartbeat:"
_IN_FLIGHT = (StepStatus.PENDING, StepStatus.RUNNING)


class BadCredential(Exception):
    """An application heartbeat with a wrong or missing credential."""


def _check_event(inst: AppInstance, spec: CheckSpec | None, name: str, new: CheckState) -> str:
    """The event a check's new health is news for ("" when none)."""
    readiness = spec is not None and spec.readiness
    if new.health == Health.FAILING:
        return "vigil.app.not_ready" if readiness else "vigil.app.check.failing"
    old = inst.checks.get(name)
    if new.health == Health.HEALTHY and old is not None and old.health == Health.FAILING:
        return "vigil.app.ready" if readiness else "vigil.app.check.healthy"
    return ""


def _cleared(inst: AppInstance, now: float, why: str) -> dict[str, CheckState]:
    """The failures reported from outside, cleared (after an action, or by hand)."""
    return {
        name: CheckState(Health.HEALTHY, 0, now, why[:500], now)
        for name in REPORTED_CHECKS
        if (state := inst.checks.get(name)) is not None and state.health == Health.FAILING
    }


class AppHealth(Reaction[AppSnapshot, AppAction]):
    name = "application checks"

    def __init__(
        self,
        *,
        store: Store,
        compute: ComputeDriver,
        clock: Clock,
        key: bytes,
        on_events: Callable[[], None] | None = None,
        wake: Callable[[], None] | None = None,
        plan_ttl: float = 60.0,
        command_timeout: float = 120.0,
    ) -> None:
        super().__init__()
        self.store = store
        self._store = store
        self._compute = compute
        self._clock = clock
        self._key = hashlib.sha256(_CREDENTIAL_LABEL + key).digest()
        self._on_events = on_events
        self._wake = wake
        self._plan_ttl = plan_ttl
        self._command_timeout = command_timeout
        self.owner: HostOwner = SOLE_OWNER
        self._workers = KeyedWorkers(2, "vigil-app")  # Nova's reboots, one per instance
        self._lock = threading.Lock()
        self._synced: dict[str, float] = {}  # host -> when its declarations were read
        self._sync_error: dict[str, str] = {}  # host -> the Nova error last logged
        self._parsed: dict[tuple[tuple[str, str], ...], AppDeclaration | None] = {}
        # An episode is read and written under this lock by the loop's handlers, the
        # workers' outcomes and the API's (an answer handing a command out, an outcome, a
        # close): each writes the episode it read, so none undoes another's write.
        self._episodes = threading.RLock()
        for kind, handler in (
            (JudgeBeats, self._judged),
            (OpenEpisode, self._open),
            (StartRung, self._start_rung),
            (EscalateEpisode, self._escalate),
            (ResolveEpisode, self._resolve),
        ):
            self.handle(kind, self._locked(handler))

    def _locked(self, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        def locked(action: Any) -> None:
            with self._episodes:
                handler(action)

        return locked

    def set_wake(self, wake: Callable[[], None]) -> None:
        """What wakes the loop that runs this reaction (a report made something fail)."""
        self._wake = wake

    # --- declarations -------------------------------------------------------------------

    def declaration(self, inst: AppInstance) -> AppDeclaration | None:
        """The instance's parsed declaration; None when refused (``inst.error``)."""
        key = tuple(sorted(inst.declaration.items()))
        with self._lock:
            if key in self._parsed:
                return self._parsed[key]
        try:
            parsed: AppDeclaration | None = declaration_from(inst.declaration)
        except SpecError:
            parsed = None
        with self._lock:
            if len(self._parsed) > 10_000:
                self._parsed.clear()
            self._parsed[key] = parsed
        return parsed

    def sync(self, host: str) -> list[AppInstance]:
        """Read ``host``'s instances from Nova and record their declarations."""
        now = self._clock.wall()
        servers = self._compute.list_servers(host)
        declared: dict[str, tuple[Mapping[str, str], str, str]] = {}
        for server in servers:
            if not server.app_keys:
                continue
            try:
                declaration_from(server.app_keys)
                error = ""
            except SpecError as exc:
                error = str(exc)
            mode = Mode.NOTIFY if server.policy == HaPolicy.NOTIFY else Mode.KEEP_RUNNING
            declared[server.id] = (dict(server.app_keys), mode.value, error)

        def events(old: AppInstance | None, new: AppInstance | None) -> list[Event]:
            if new is None or not new.error or (old is not None and old.error == new.error):
                return []
            LOG.warning(
                "host %s: instance %s: application checks refused: %s",
                host,
                new.instance_id,
                new.error,
            )
            return [
                make_event(
                    "vigil.app.declaration.refused",
                    at=now,
                    host=host,
                    instance_id=new.instance_id,
                    reason=new.error,
                )
            ]

        rows = self._store.sync_app_declarations(host, declared, at=now, events=events)
        with self._lock:
            self._synced[host] = now
        self._events_written()
        return rows

    # --- the agent's exchange (the API calls this) --------------------------------------

    def exchange(self, report: AppReport) -> AppAnswer:
        """Record ``report`` (states, commands done), refresh the host's declarations
        when stale, and answer with its plan and the guest commands waiting."""
        host, now = report.host, self._clock.wall()
        for done in report.done:
            self._command_done(done.instance_id, done.id, ok=done.ok, detail=done.detail)
        with self._lock:
            stale = now - self._synced.get(host, float("-inf")) >= self._plan_ttl
        rows: dict[str, AppInstance] | None = None
        if stale:  # before the states: an instance's first report is not lost
            try:
                rows = {i.instance_id: i for i in self.sync(host)}
                self._sync_error.pop(host, None)
            except DriverError as exc:
                if self._sync_error.get(host) != str(exc):
                    LOG.warning(
                        "host %s: reading its instances' application checks from Nova "
                        "failed (%s); the declarations read before stay",
                        host,
                        exc,
                    )
                self._sync_error[host] = str(exc)
        if rows is None:
            rows = {i.instance_id: i for i in self._store.list_app_instances(host=host)}
        woke = False
        for iid, states in report.instances.items():
            inst = rows.get(iid)
            if inst is not None:
                woke |= self._record_states(inst, states, reported_at=report.at)
        if woke and self._wake is not None:
            self._wake()
        return self._answer(self._store.list_app_instances(host=host))

    def _record_states(
        self, inst: AppInstance, states: Mapping[str, CheckState], *, reported_at: float | None
    ) -> bool:
        """Write the states whose health changed, with their events; True when a check
        started or stopped failing (the loop should look at once)."""
        changed = {
            name: state
            for name, state in states.items()
            if (old := inst.checks.get(name)) is None or old.health != state.health
        }
        if not changed:
            return False
        declaration = self.declaration(inst)
        specs = {s.name: s for s in declaration.checks} if declaration else {}
        now = self._clock.wall()
        events = []
        for name, state in sorted(changed.items()):
            event_type = _check_event(inst, specs.get(name), name, state)
            LOG.log(
                logging.WARNING if state.health == Health.FAILING else logging.INFO,
                "host %s: instance %s: check %s %s: %s",
                inst.host,
                inst.instance_id,
                name,
                state.health.value.upper() if state.health == Health.FAILING else state.health,
                state.detail or "no detail",
            )
            if event_type:
                events.append(
                    make_event(
                        event_type,
                        at=now,
                        host=inst.host,
                        instance_id=inst.instance_id,
                        check=name,
                        health=state.health.value,
                        detail=state.detail,
                        reason=f"{name} {state.health.value}",
                    )
                )
        self._store.update_app_checks(
            inst.instance_id,
            changed,
            at=now,
            reported_at=reported_at,
            events=lambda old: events,
        )
        self._events_written()
        return any(
            Health.FAILING in (s.health, inst.checks.get(n, CheckState()).health)
            for n, s in changed.items()
        )

    def _answer(self, rows: Sequence[AppInstance]) -> AppAnswer:
        plan: dict[str, tuple[CheckSpec, ...]] = {}
        commands: list[GuestCommand] = []
        for inst in rows:
            declaration = self.declaration(inst)
            if declaration is None:
                continue
            run = tuple(s for s in declaration.checks if s.type != CheckType.HEARTBEAT)
            if run:
                plan[inst.instance_id] = run
            episode = inst.episode
            if (
                episode is not None
                and episode.open
                and episode.action == Rung.RESTART_APP
                and episode.action_status in _IN_FLIGHT
                and declaration.ladder.restart_command
            ):
                commands.append(
                    GuestCommand(
                        episode.action_id,
                        inst.instance_id,
                        declaration.ladder.restart_command,
                        self._command_timeout,
                    )
                )
                if episode.action_status == StepStatus.PENDING:
                    self._handed_out(inst, episode.action_id)
        return AppAnswer(plan, tuple(commands))

    def _handed_out(self, inst: AppInstance, action_id: str) -> None:
        """The restart command ``action_id`` went to the agent: RUNNING (if still due)."""
        with self._episodes:
            current = self._store.get_app_instance(inst.instance_id)
            episode = current.episode if current is not None else None
            if episode is None or episode.action_id != action_id:
                return
            if episode.action_status != StepStatus.PENDING:
                return
            self._store.update_app_episode(
                inst.instance_id,
                replace(episode, action_status=StepStatus.RUNNING),
                at=self._clock.wall(),
            )
        LOG.info(
            "host %s: instance %s: application restart handed to its agent",
            inst.host,
            inst.instance_id,
        )

    def _command_done(self, instance_id: str, command_id: str, *, ok: bool, detail: str) -> None:
        self._rung_done(
            instance_id, command_id, ok=ok, detail=detail or ("exit status 0" if ok else "")
        )

    def _rung_done(self, instance_id: str, action_id: str, *, ok: bool, detail: str) -> None:
        """The outcome of attempt ``action_id`` (ignored when told twice, or when its
        episode moved on meanwhile)."""
        with self._episodes:
            inst = self._store.get_app_instance(instance_id)
            episode = inst.episode if inst is not None else None
            if inst is None or episode is None or episode.action_id != action_id:
                return
            if episode.action_status not in _IN_FLIGHT:
                return
            self._record_outcome(inst, episode, ok=ok, detail=detail)

    def _record_outcome(
        self, inst: AppInstance, episode: AppEpisode, *, ok: bool, detail: str
    ) -> None:
        now = self._clock.wall()
        status = StepStatus.SUCCEEDED if ok else StepStatus.FAILED
        event = make_event(
            "vigil.app.recovery.end" if ok else "vigil.app.recovery.error",
            at=now,
            host=inst.host,
            instance_id=inst.instance_id,
            rung=episode.action,
            attempt=episode.attempts,
            action_id=episode.action_id,
            reason=detail[:500],
        )
        LOG.log(
            logging.INFO if ok else logging.ERROR,
            "host %s: instance %s: %s (attempt %d) %s: %s",
            inst.host,
            inst.instance_id,
            episode.action,
            episode.attempts,
            "done" if ok else "FAILED",
            detail,
        )
        self._store.update_app_episode(
            inst.instance_id,
            replace(episode, action_status=status, action_detail=detail[:500]),
            at=now,
            started_at=now if ok and episode.action != Rung.RESTART_APP else None,
            events=[event],
        )
        if ok and (cleared := _cleared(inst, now, "a recovery action done")):
            self._store.update_app_checks(inst.instance_id, cleared, at=now)
        self._events_written()
        if self._wake is not None:
            self._wake()

    # --- the application's own calls (the API calls these) -----------------------------

    def credential(self, instance_id: str) -> str:
        """What the application of ``instance_id`` presents with its heartbeats."""
        return hmac.new(self._key, instance_id.encode(), hashlib.sha256).hexdigest()

    def beat(
        self, instance_id: str, credential: str | None, *, reset: bool = False, detail: str = ""
    ) -> AppInstance:
        """A heartbeat of the instance's application; ``reset``: it asks to be recovered
        now. NotFoundError: no checks declared for it; BadCredential."""
        if not credential or not hmac.compare_digest(self.credential(instance_id), credential):
            raise BadCredential("wrong or missing application credential")
        inst = self._store.get_app_instance(instance_id)
        if inst is None:
            raise NotFoundError(f"instance {instance_id} has no application checks")
        now = self._clock.wall()
        if not reset:
            return self._store.update_app_checks(instance_id, {}, at=now, last_beat_at=now)
        reason = (
            f"the application asked to be recovered: {detail}"
            if detail
            else ("the application asked to be recovered")
        )
        LOG.warning("host %s: instance %s: %s", inst.host, instance_id, reason)
        event = make_event(
            "vigil.app.reset_requested",
            at=now,
            host=inst.host,
            instance_id=instance_id,
            reason=reason[:500],
        )
        out = self._store.update_app_checks(
            instance_id,
            {RESET_CHECK: CheckState(Health.FAILING, 1, now, reason[:500], now)},
            at=now,
            last_beat_at=now,
            events=lambda old: [event],
        )
        self._events_written()
        if self._wake is not None:
            self._wake()
        return out

    def guest_agent_error(self, instance_id: str, *, host: str, detail: str) -> tuple[bool, str]:
        """A Masakari introspective monitor says the instance's guest agent stopped
        answering (a ``VM`` notification, event ``QEMU_GUEST_AGENT_ERROR``): a failing
        check of the instance if it declares checks — its ladder or its owner's notice
        follow, as for vigil's own checks. (taken, what became of it)"""
        inst = self._store.get_app_instance(instance_id)
        if inst is None:
            return False, (
                f"vigil runs no application checks for instance {instance_id} (declare "
                "vigil:check:* on it to have its application failures recovered)"
            )
        now = self._clock.wall()
        reason = f"Masakari reports its guest agent unresponsive (from {host}): {detail}"
        self._record_states(
            inst,
            {MASAKARI_CHECK: CheckState(Health.FAILING, 1, now, reason[:500], now)},
            reported_at=None,
        )
        if self._wake is not None:
            self._wake()
        return True, f"an application failure of instance {instance_id} for vigil ({inst.mode})"

    def close(self, instance_id: str, *, by: str, reason: str = "") -> AppInstance:
        """Close the instance's open failure (an escalated one, typically): vigil starts
        over should its checks still fail. NotFoundError without an open one."""
        with self._episodes:
            return self._close(instance_id, by=by, reason=reason)

    def _close(self, instance_id: str, *, by: str, reason: str) -> AppInstance:
        inst = self._store.get_app_instance(instance_id)
        if inst is None or inst.episode is None or not inst.episode.open:
            raise NotFoundError(f"instance {instance_id} has no open application failure")
        now = self._clock.wall()
        why = reason or f"closed by {by}"
        LOG.warning("host %s: instance %s: application failure %s", inst.host, instance_id, why)
        event = make_event(
            "vigil.app.closed",
            at=now,
            host=inst.host,
            instance_id=instance_id,
            reason=why[:500],
            closed_by=by,
        )
        episode = replace(inst.episode, status=AppEpisodeStatus.CLOSED, closed_at=now, closed_by=by)
        out = self._store.update_app_episode(instance_id, episode, at=now, events=[event])
        if cleared := _cleared(inst, now, why):
            out = self._store.update_app_checks(instance_id, cleared, at=now)
        self._events_written()
        return out

    # --- the cycle ----------------------------------------------------------------------

    def observe(self) -> AppSnapshot:
        now = self._clock.wall()
        busy = self._workers.busy()
        rows = [i for i in self._store.list_app_instances() if self.owner.owns(i.host)]
        hosts_up: dict[str, bool] = {}
        for host in {i.host for i in rows}:
            try:
                state = self._store.get_host(host).state
            except NotFoundError:
                state = None
            hosts_up[host] = state in (HostState.UP, HostState.NEW)
        views = [
            AppView(
                inst,
                self.declaration(inst),
                hosts_up.get(inst.host, False),
                busy=inst.instance_id in busy,
            )
            for inst in rows
        ]
        return AppSnapshot(now, views)

    def decide(self, snapshot: AppSnapshot) -> Sequence[AppAction]:
        return decide_apps(snapshot)

    def admit(self, action: AppAction) -> bool:
        return self.owner.owns(action.host)

    def acting(self, action: AppAction) -> AbstractContextManager[None]:
        return self.owner.acting(action.host)

    def _current(self, instance_id: str) -> AppInstance:
        inst = self._store.get_app_instance(instance_id)
        if inst is None:
            raise NotFoundError(f"instance {instance_id} has no application checks")
        return inst

    def _judged(self, action: JudgeBeats) -> None:
        inst = self._current(action.instance_id)
        self._record_states(inst, action.checks, reported_at=None)

    def _open(self, action: OpenEpisode) -> None:
        now = self._clock.wall()
        notify = action.mode == Mode.NOTIFY
        reason = f"failing: {', '.join(action.failing)}"
        episode = AppEpisode(
            status=AppEpisodeStatus.NOTIFIED if notify else AppEpisodeStatus.RECOVERING,
            mode=action.mode.value,
            opened_at=now,
            reason=reason,
        )
        LOG.warning(
            "host %s: instance %s: application FAILED (%s); %s",
            action.host,
            action.instance_id,
            reason,
            "owner notified, vigil does nothing (policy notify)"
            if notify
            else "its recovery ladder starts",
        )
        event = make_event(
            "vigil.app.notify" if notify else "vigil.app.failure",
            at=now,
            host=action.host,
            instance_id=action.instance_id,
            failing=list(action.failing),
            mode=action.mode.value,
            reason=reason,
        )
        self._store.update_app_episode(action.instance_id, episode, at=now, events=[event])
        self._events_written()

    def _start_rung(self, action: StartRung) -> None:
        inst = self._current(action.instance_id)
        if inst.episode is None or not inst.episode.open:
            return
        now = self._clock.wall()
        command = action.rung == Rung.RESTART_APP
        episode = replace(
            inst.episode,
            attempts=action.attempt,
            last_action_at=now,
            action=action.rung.value,
            action_status=StepStatus.PENDING if command else StepStatus.RUNNING,
            action_id=str(uuid.uuid4()),
            action_detail="",
        )
        LOG.warning(
            "host %s: instance %s: %s (attempt %d of its ladder; %s)",
            action.host,
            action.instance_id,
            action.rung,
            action.attempt,
            action.reason,
        )
        event = make_event(
            "vigil.app.recovery.start",
            at=now,
            host=action.host,
            instance_id=action.instance_id,
            rung=action.rung.value,
            attempt=action.attempt,
            action_id=episode.action_id,
            mode=episode.mode,
            reason=action.reason,
        )
        # Recorded before anything is asked of the guest or of Nova (S2).
        updated = self._store.update_app_episode(
            action.instance_id, episode, at=now, events=[event]
        )
        self._events_written()
        if not command:
            run = self.owner.job(action.host, f"{action.rung} of {action.instance_id}", self._nova)
            self._workers.submit(action.instance_id, run, updated, episode)

    def _nova(self, inst: AppInstance, episode: AppEpisode) -> None:
        """A reboot or rebuild through Nova (on a worker)."""
        try:
            self.owner.may_act()
            if episode.action == Rung.REBUILD:
                self._compute.rebuild(inst.instance_id)
                detail = "Nova accepted the rebuild"
            else:
                hard = episode.action == Rung.HARD_REBOOT
                self._compute.reboot(inst.instance_id, hard=hard)
                detail = f"Nova accepted the {'hard' if hard else 'soft'} reboot"
        except Cancelled as exc:
            LOG.warning("instance %s: %s stopped: %s", inst.instance_id, episode.action, exc)
            return
        except DriverError as exc:
            self._rung_done(inst.instance_id, episode.action_id, ok=False, detail=f"Nova: {exc}")
            return
        self._rung_done(inst.instance_id, episode.action_id, ok=True, detail=detail)

    def _escalate(self, action: EscalateEpisode) -> None:
        inst = self._current(action.instance_id)
        if inst.episode is None or not inst.episode.open:
            return
        now = self._clock.wall()
        LOG.error(
            "host %s: instance %s: application failure ESCALATED: %s; vigil acts no more "
            "until an operator or the owner closes it",
            action.host,
            action.instance_id,
            action.reason,
        )
        event = make_event(
            "vigil.app.escalated",
            at=now,
            host=action.host,
            instance_id=action.instance_id,
            mode=inst.episode.mode,
            reason=action.reason,
        )
        self._store.update_app_episode(
            action.instance_id,
            replace(inst.episode, status=AppEpisodeStatus.ESCALATED),
            at=now,
            events=[event],
        )
        self._events_written()

    def _resolve(self, action: ResolveEpisode) -> None:
        inst = self._current(action.instance_id)
        if inst.episode is None or not inst.episode.open:
            return
        now = self._clock.wall()
        LOG.info(
            "host %s: instance %s: application healthy again (%s, after %d action(s))",
            action.host,
            action.instance_id,
            action.reason,
            inst.episode.attempts,
        )
        event = make_event(
            "vigil.app.resolved",
            at=now,
            host=action.host,
            instance_id=action.instance_id,
            reason=action.reason,
        )
        self._store.update_app_episode(
            action.instance_id,
            replace(inst.episode, status=AppEpisodeStatus.RESOLVED, closed_at=now),
            at=now,
            events=[event],
        )
        self._events_written()

    def drain(self, timeout: float = 10.0) -> bool:
        return self._workers.drain(timeout)

    def stop(self) -> None:
        self._workers.stop()

    def _events_written(self) -> None:
        if self._on_events is not None:
            self._on_events()
