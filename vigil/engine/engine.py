"""The engine loop: snapshot → decide → act → record, a cycle every ``recovery.tick``.

Only the engine acts on the cloud. The API records intents (pause, retry) and wakes it;
operator requests that must call Nova themselves (restore a host, restart an instance)
are recorded too and carried out by workers (``vigil.engine.requests``, a reaction on
this engine's loop), never on the decision thread; heartbeats only update the table the
snapshot reads. Each cycle logs
one sentence per action, naming the host (and instance), so the log reads as a timeline.

Steps and power probes run on ``KeyedWorkers`` (``vigil.engine.workers``) so a slow BMC
or Nova never stalls detection (tests/e2e/test_host_failure.py holds a Nova call for a
minute to show it); a step is marked RUNNING in the store before its driver call and its
outcome is written before anything that depends on it starts (S2). A recovery that ends
with steps still in flight (it ran past ``recovery.max_duration``) cancels them: each
stops at its next wait and is recorded FAILED, to run again if the operator retries (a
pause, by the operator or the storm guard, lets the steps in flight finish and starts no
new one). On start-up, steps left RUNNING by a crash are requeued; they are idempotent
(see ``vigil.engine.steps``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from functools import partial
from typing import Any

from vigil.clock import Clock
from vigil.config import Settings
from vigil.drivers.compute import ComputeDriver
from vigil.drivers.errors import DriverError
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.engine.book import HostBook
from vigil.engine.decide import (
    Action,
    ClearReport,
    DeclareFailure,
    DownReport,
    FinishRecovery,
    ForgetReport,
    HostRebooted,
    HostView,
    MarkSuspect,
    MarkUp,
    PauseRecovery,
    PauseSegment,
    ProbePower,
    RecordBoot,
    ResumeRecovery,
    ResumeSegment,
    RunStep,
    Snapshot,
    WithdrawDeclaration,
    decide,
)
from vigil.engine.flow import HOST_STEPS, StepInput, run_step
from vigil.engine.heartbeat import HeartbeatTable
from vigil.engine.known_hosts import KnownHosts
from vigil.engine.lease import LeaseKeeper
from vigil.engine.ownership import (
    NotActing,
    Ownership,
    SoleOwnership,
    may_act,
    run_as,
    still_held,
)
from vigil.engine.reconciler import Loop, Reaction, RetryPolicy
from vigil.engine.requests import OperatorRequests
from vigil.engine.steps import ServiceListing, StepContext
from vigil.engine.workers import Cancelled, KeyedWorkers
from vigil.events import STEP_EVENT_NAMES, make_event
from vigil.model import (
    Event,
    FailureKind,
    Host,
    HostState,
    InvalidTransition,
    NewStep,
    OperatorRequest,
    OwnerToken,
    RecoveryStatus,
    RequestKind,
    Segment,
    Step,
    StepKind,
    StepStatus,
)
from vigil.store import Store, StoreError, StoreUnavailable, acting_as, current_token
from vigil.store.base import HostChange

LOG = logging.getLogger("vigil.engine")


class Engine(Reaction[Snapshot, Action]):
    """Host failures: a reaction (``vigil.engine.reconciler``) on a loop of its own."""

    name = "engine"

    def __init__(
        self,
        *,
        store: Store,
        compute: ComputeDriver,
        fence_devices: Callable[[Host], list[FenceDevice]],
        settings: Settings,
        clock: Clock,
        heartbeats: HeartbeatTable,
        leases: LeaseKeeper | None = None,
        known: KnownHosts | None = None,
        on_events: Callable[[], None] | None = None,
        wait: Callable[[float], None] = time.sleep,
        ownership: Ownership | None = None,
    ) -> None:
        super().__init__()
        # Which segments this server acts on, under which token (vigil.engine.ownership):
        # the snapshot holds only their hosts, and every write is made under the token.
        self._ownership: Ownership = ownership or SoleOwnership()
        self._epochs: dict[str, int] = {}  # the token of each segment at the last snapshot
        # steps whose outcome could not be written: id -> (host, the token of the job)
        # step id -> (host, token, why): RUNNING with no job, to requeue
        self._unrecorded: dict[int, tuple[str, OwnerToken | None, str]] = {}
        self._lapsed: set[str] = set()  # segments held whose acting window lapsed
        self._job_segment: dict[object, str] = {}  # the segment of each job submitted
        self._on_events = on_events
        self._leases = leases
        self._store = store
        self._compute = compute
        self._fence_devices = fence_devices
        self._settings = settings
        self._clock = clock
        self._heartbeats = heartbeats
        self._ctx = StepContext(
            compute=compute,
            fence_devices=fence_devices,
            policies=store.instance_policies,
            settings=settings.recovery,
            clock=clock,
            wait=wait,
            hosts=lambda: self.known.all(),
            fenced=lambda name: name in self._fenced,
            spread=self._spread,
            booted_again=self._booted_again,
            boot_of=lambda name: self._heartbeats.kernel_boot_id(name),
            may_act=self._may_act,
            services=ServiceListing(compute, clock),
        )
        # Steps run under the key ("step", recovery id, step id), power reads under
        # ("probe", host): the snapshot sees both busy and the rule waits for them.
        # Host steps and power probes on a lane of their own: never behind evacuations.
        self._workers = KeyedWorkers(
            settings.recovery.workers,
            "vigil-step",
            urgent_threads=max(8, settings.recovery.workers // 4),
        )
        self._lock = threading.Lock()
        # The last BMC read of each suspect host (state, monotonic time), forgotten when
        # a new suspicion starts.
        self._power: dict[str, tuple[PowerState, float]] = {}
        # Reports that a host is down (source, reason, monotonic time, withdrawn): one
        # signal each for decide, dropped when the rule says (ForgetReport): consumed by
        # the declaration, or contradicted by heartbeats.
        self._reports: dict[str, tuple[str, str, float, bool]] = {}
        # The latest snapshot's hosts, for threads that must not read the store per call
        # (lease grants, heartbeats, evacuation targets); shared with the lease keeper.
        self.known = known or KnownHosts(heartbeats, store.list_hosts())
        # The hosts and their active recoveries, read again each cycle only where the
        # store says they changed (vigil.engine.book).
        self._book = HostBook(store)
        self._known_version = -1
        # Told which hosts' heartbeats to verify: those of the segments held here (None:
        # all, alone); set by the server to its receiver's ``verify_only``.
        self.on_hearing: Callable[[frozenset[str] | None], None] | None = None
        self._hearing: tuple[frozenset[str], int] | None = None
        self._fenced: frozenset[str] = frozenset()  # recovered, or fence confirmed
        self._aimed: Counter[str] = Counter()  # evacuations aimed at each host
        self._boots_unsettled: dict[str, str] = {}  # host -> a kernel boot id not stored
        # The moves every host of a segment may make at once: handled together.
        self.handle_together(MarkUp, self._on_mark_up)
        self.handle_together(RecordBoot, self._on_record_boot)
        self.handle_together(RunStep, self._on_run_steps)
        for kind, handler in (
            (MarkSuspect, self._on_mark_suspect),
            (ProbePower, self._on_probe_power),
            (DeclareFailure, self._on_declare_failure),
            (HostRebooted, self._on_host_rebooted),
            (ClearReport, self._on_clear_report),
            (ForgetReport, self._on_forget_report),
            (WithdrawDeclaration, self._on_withdraw_declaration),
            (ResumeSegment, self._on_resume_segment),
            (PauseSegment, self._on_pause_segment),
            (PauseRecovery, self._on_pause_recovery),
            (ResumeRecovery, self._on_resume_recovery),
            (FinishRecovery, self._on_finish_recovery),
        ):
            self.handle(kind, handler)
        r = settings.recovery
        self._step_retry = RetryPolicy(r.step_attempts, r.retry_backoff, r.retry_backoff_max)
        # Operator requests that wait on Nova: recorded, then carried out by workers of
        # their own, so they neither wait behind a recovery's steps nor hold this thread.
        self.requests = OperatorRequests(
            store=store,
            clock=clock,
            retry=self._step_retry,
            wake=self.wake,
            on_events=self._events_written,
        )
        self.requests.register(RequestKind.RESTORE_HOST, self._restore_host)
        self.requests.register(RequestKind.RESTART_INSTANCE, self._restart_instance)
        self._loop = Loop("vigil-engine", [self, self.requests], settings.recovery.tick)

    # --- public -------------------------------------------------------------------------

    def is_known_host(self, name: str) -> bool:
        return self.known.is_known(name)

    @property
    def loop(self) -> Loop:
        """The loop this reaction's cycles run on (its counts feed the metrics)."""
        return self._loop

    def wake(self) -> None:
        self._loop.wake()

    def use_evacuation_targets(
        self, targets: Callable[[Host, Segment], Sequence[str | None]]
    ) -> None:
        """Where evacuations go, per host and segment (Masakari's recovery methods)."""
        self._ctx = replace(self._ctx, targets=targets)

    def use_cluster_peers(self, peers: Callable[[str], Collection[str]]) -> None:
        """The other members of an instance's in-guest cluster (never on one host)."""
        self._ctx = replace(self._ctx, peers=peers)

    def report_down(self, host: str, *, source: str, reason: str) -> None:
        """Another monitor says ``host`` is down (a Masakari COMPUTE_HOST notification).
        One corroborating signal: decide still wants the BMC or the heartbeats to agree,
        and the recovery still fences first. The caller persists the report itself."""
        with self._lock:
            self._reports[host] = (source, reason, self._clock.monotonic(), False)
        LOG.warning("host %s: %s reports it down: %s", host, source, reason)
        self.wake()

    def withdraw_report(self, host: str) -> None:
        """The reporter says the host is back (a STARTED notification)."""
        with self._lock:
            said = self._reports.get(host)
            if said is not None:
                self._reports[host] = (*said[:3], True)
        self.wake()

    def resume_after_restart(self) -> None:
        if self._ownership.shared:
            # Several servers: what was left running is requeued segment by segment, by
            # whoever takes each (``_follow_ownership``), never by a server starting while
            # the owner is in the middle of it.
            return
        count = self._store.requeue_running_steps(at=self._clock.wall())
        if count:
            LOG.warning("resuming: %d recovery steps were running when vigil stopped", count)
        self.requests.resume_after_restart()

    def run(self, stop: threading.Event) -> None:
        self.resume_after_restart()
        LOG.info("engine started")
        self._loop.run(stop)
        LOG.info("engine stopping")

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no step or probe is in flight (tests and shutdown)."""
        return self._workers.drain(timeout)

    def close(self) -> None:
        self.requests.close()
        self._workers.stop()

    def restore_host(self, name: str, *, timeout: float | None = None) -> Host:
        """Operator says a recovered host may be used again: compute service back up and
        enabled; the host is monitored again from its next heartbeat. Recorded, carried
        out by a worker; the caller waits up to ``timeout`` (default: two Nova call
        timeouts) and gets the host, or the error the request ended with."""
        host = self._store.get_host(name)
        if host.state != HostState.RECOVERED:
            raise InvalidTransition(
                f"host {name} is {host.state.value}: only a recovered host can be restored"
            )
        request = self.requests.submit(RequestKind.RESTORE_HOST, name, host=name, reason="operator")
        self.requests.outcome(request.id, self._request_wait(timeout))
        return self._store.get_host(name)

    def restart_instance(
        self, instance_id: str, host: str | None, *, timeout: float | None = None
    ) -> None:
        """A consumer's hard reboot of an instance on its (healthy) host: recorded and
        carried out by a worker; the caller waits as for ``restore_host``."""
        request = self.requests.submit(
            RequestKind.RESTART_INSTANCE, instance_id, host=host, reason="requested through the API"
        )
        self.requests.outcome(request.id, self._request_wait(timeout))

    def _request_wait(self, timeout: float | None) -> float:
        return timeout if timeout is not None else 2 * self._settings.compute_api_timeout

    def _restore_host(self, request: OperatorRequest) -> tuple[str, list[Event]]:
        name = request.target
        host = self._store.get_host(name)
        if host.state in (HostState.NEW, HostState.UP):
            return "already restored", []  # run again after a restart of vigil
        if host.state != HostState.RECOVERED:
            raise InvalidTransition(
                f"host {name} is {host.state.value}: only a recovered host can be restored"
            )
        self._may_act()
        self._compute.set_forced_down(name, False)
        self._compute.enable(name)
        if self._leases is not None:
            self._leases.reinstate(name)
        now = self._clock.wall()
        event = make_event("vigil.host.restored", at=now, host=name, reason=request.reason)
        self._store.set_host_state(
            name, HostState.NEW, reason=f"restored by {request.reason}", at=now, events=[event]
        )
        return "compute service up and enabled; monitored again from its next heartbeat", []

    def _restart_instance(self, request: OperatorRequest) -> tuple[str, list[Event]]:
        self._may_act()
        self._compute.reboot(request.target, hard=True)
        event = make_event(
            "vigil.consumer.action",
            at=self._clock.wall(),
            action="restart",
            instance_id=request.target,
            host=request.host,
            reason=request.reason,
        )
        return "hard reboot asked of Nova", [event]

    # --- the cycle ----------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """What the rule decides on. Only reads: the book of hosts (the store's, read
        again only where it changed), the heartbeat table, the BMC readings and reports
        received, the work in flight.

        Only the hosts the rules can act on this cycle are in it: every host not UP,
        every UP host silent for ``suspect_after``, and any with a new boot id, a report,
        a BMC reading or an active recovery; the others (at rest, all but a few) are
        counted per segment for the storm guard. So a cycle costs the few hosts that
        matter plus one pass over the heartbeat table, not a read of every host."""
        book = self._book
        book.refresh()
        owns = self._ownership.owns
        owned = [s for s in book.members if owns(s)]
        heartbeats = self._heartbeats
        suspect_after = self._settings.detection.suspect_after
        ages: dict[str, float | None] = {}
        for segment in owned:
            ages.update(heartbeats.silent(book.members[segment], suspect_after))
        hosts = book.hosts
        with self._lock:
            watched = set(self._reports) | set(self._power)
        watched |= book.unsettled | book.recoveries.keys()
        # Hosts heard with a kernel boot id other than the stored one: looked at until
        # the two agree (RecordBoot), or the host is gone.
        self._boots_unsettled.update(heartbeats.kernel_changes())
        for name, boot in list(self._boots_unsettled.items()):
            h = hosts.get(name)
            if heartbeats.kernel_boot_id(name) != boot or (h is not None and boot == h.boot_id):
                del self._boots_unsettled[name]
            elif h is not None:
                watched.add(name)
        for name in watched - ages.keys():
            host = hosts.get(name)
            if host is not None and owns(host.segment):
                ages[name] = heartbeats.age(name)
        now_mono = self._clock.monotonic()
        busy_keys = self._workers.busy()
        probing = {key[1] for key in busy_keys if key[0] == "probe"}  # type: ignore[index]
        in_flight = frozenset(key[2] for key in busy_keys if key[0] == "step")  # type: ignore[index]
        views: dict[str, HostView] = {}
        with self._lock:
            for name, age in ages.items():
                host = hosts[name]
                said = self._reports.get(name)
                if age is None and said is None and host.state == HostState.NEW:
                    continue  # registered, never heard, nobody says it is down: nothing to do
                # A reading counts for the suspicion it was taken in (a new one forgets it).
                power = self._power.get(name) if host.state == HostState.SUSPECT else None
                views[name] = HostView(
                    host=host,
                    heartbeat_age=age,
                    power=power[0] if power else None,
                    power_read_age=now_mono - power[1] if power else None,
                    probing=name in probing,
                    report=(
                        DownReport(said[0], said[1], now_mono - said[2], said[3]) if said else None
                    ),
                    boot_id=heartbeats.kernel_boot_id(name),
                )
        recoveries = tuple(
            sorted(
                (r for rs in book.recoveries.values() for r in rs if owns(r.segment)),
                key=lambda r: (r.created_at, r.id),
                reverse=True,
            )
        )
        return Snapshot(
            now=self._clock.wall(),
            uptime=heartbeats.since_start(),
            control=book.control,
            segments={name: s for name, s in book.segments.items() if owns(name)},
            hosts=dict(sorted(views.items())),
            recoveries=recoveries,
            in_flight=in_flight,
            unfenced={h: r for h, r in book.unfenced.items() if h in views},
            monitored={s: book.monitored.get(s, 0) for s in owned},
        )

    def observe(self) -> Snapshot:
        """The snapshot, and what workers read from it instead of the store: the hosts
        (``known``) and which of them are fenced."""
        self._follow_ownership()
        self._requeue_unrecorded()
        snap = self.snapshot()
        if self._book.version != self._known_version:
            self.known.share(self._book.hosts)
            self._known_version = self._book.version
        self._follow_hearing()
        self._fenced = frozenset(
            {name for name, view in snap.hosts.items() if view.host.state == HostState.RECOVERED}
            | {
                r.host
                for r in snap.recoveries
                if (fence := r.step(StepKind.FENCE)) and fence.status == StepStatus.SUCCEEDED
            }
        )
        return snap

    def _follow_ownership(self) -> None:
        """Segments taken since the last cycle: their steps left RUNNING by the previous
        owner go back to PENDING, to be re-checked against the cloud before being done
        again (steps are idempotent: a fenced host is not fenced again, an evacuated
        instance not evacuated again). Segments lost: their work in flight is cancelled
        at its next wait (the store would refuse its writes anyway). A segment whose
        acting window lapsed (a renewal late) is still held: its work in flight goes on
        waiting, is stopped before any call that changes the cloud (``may_act``), and what
        was stopped is done again once renewed (``_requeue_unrecorded``)."""
        tokens = self._ownership.tokens()
        for segment, token in tokens.items():
            if self._epochs.get(segment) == token.epoch:
                if segment in self._lapsed:
                    self._lapsed.discard(segment)
                    LOG.warning("segment %s: acting on it again (epoch %d)", segment, token.epoch)
                continue
            now = self._clock.wall()
            with acting_as(token):  # raises with the store away: done again next cycle
                count = self._store.requeue_running_steps(at=now, segment=segment)
                others = self._store.requeue_running_guest_actions(at=now, segment=segment)
                # Requests about no host go with the first segment by name (as ``owns``).
                first = min((h.segment for h in self.known.all().values()), default=None)
                others += self._store.requeue_running_requests(
                    at=now, segment=segment, hostless=first == segment
                )
            self._epochs[segment] = token.epoch
            self._lapsed.discard(segment)
            hold = self._settings.coordination.takeover_hold if self._ownership.shared else 0.0
            if hold:
                # Agents that follow the previous owner send most heartbeats there for a
                # while (vigil.agent.fanout): their silence counts once they send here.
                # Only hosts judged on their heartbeats: a failed host's recovery owns it,
                # and a hold must not pass for its heartbeats returning.
                members = [
                    h.name
                    for h in self.known.all().values()
                    if h.segment == segment
                    and h.state in (HostState.NEW, HostState.UP, HostState.SUSPECT)
                ]
                self._heartbeats.hold(self._heartbeats.fanned(members), hold)
            LOG.warning(
                "segment %s: acting on it from now (epoch %d); %d step(s) and %d instance "
                "restart(s) or operator request(s) left running by its previous owner to "
                "re-check; the silence of its hosts that followed another owner counts in %gs",
                segment,
                token.epoch,
                count,
                others,
                hold,
            )
        for segment in set(self._epochs) - set(tokens):
            if isinstance(self._ownership, SoleOwnership):
                continue
            held = self._ownership.held(segment)
            if held is not None and held.epoch == self._epochs[segment]:
                if segment not in self._lapsed:
                    self._lapsed.add(segment)
                    LOG.warning(
                        "segment %s: acting window lapsed (renewal late): nothing started "
                        "on it until renewed, work in flight waits",
                        segment,
                    )
                continue
            del self._epochs[segment]
            self._lapsed.discard(segment)
            LOG.warning("segment %s: no longer acting on it", segment)
        lost = {s for s in self._job_segment.values() if self._ownership.held(s) is None}
        if lost and not isinstance(self._ownership, SoleOwnership):
            for key in self._workers.busy():
                of = self._job_segment.get(key)
                if of in lost:
                    self._workers.cancel(key, f"segment {of} no longer owned here")

    def _follow_hearing(self) -> None:
        """Tell the receiver the hosts whose heartbeats to verify: those of the segments
        this server holds (acting or lapsed), when they or the hosts change; all when
        no other server may own segments."""
        if self.on_hearing is None:
            return
        if not self._ownership.shared:
            if self._hearing is None:
                self._hearing = (frozenset(), -1)
                self.on_hearing(None)
            return
        book = self._book
        held = frozenset(s for s in book.members if self._ownership.held(s) is not None)
        if self._hearing == (held, book.version):
            return
        self._hearing = (held, book.version)
        self.on_hearing(frozenset(h for s in held for h in book.members[s]))

    def _requeue_unrecorded(self) -> None:
        """Steps left RUNNING with no job to finish them: their outcome could not be
        written (the database away as the job ended), or they were stopped, or not
        started, while the acting window had lapsed. Back to PENDING, to be re-checked
        against the cloud (steps are idempotent), once the store answers and this server
        may act; one that did end after all (its write committed as the connection
        dropped) is left as it is. A segment no longer held here is its new owner's to
        re-check (``_follow_ownership`` there)."""
        with self._lock:
            unrecorded, self._unrecorded = self._unrecorded, {}
        for step_id, (host, token, why) in unrecorded.items():
            if not self._ownership.valid(token):
                if still_held(self._ownership, token):
                    with self._lock:  # the window lapsed: done once renewed
                        self._unrecorded.setdefault(step_id, (host, token, why))
                continue
            try:
                with acting_as(token):
                    self._store.finish_step(
                        step_id,
                        StepStatus.PENDING,
                        at=self._clock.wall(),
                        detail=f"{why}: checked again",
                        next_attempt_at=self._clock.wall(),
                    )
            except InvalidTransition:
                continue  # it had ended: the write went through after all
            except StoreError:
                with self._lock:  # still away (or the epoch moved on: dropped below)
                    self._unrecorded.setdefault(step_id, (host, token, why))
                continue
            LOG.warning("host %s: step %d to be checked again: %s", host, step_id, why)

    def _left_running(
        self, step_id: int, host: str, token: OwnerToken | None, why: str, label: str = ""
    ) -> None:
        """A step stays RUNNING with no job: requeued here once this server may act
        under ``token`` again, or its segment's new owner's to re-check."""
        what = label or f"step {step_id}"
        if token is not None and not still_held(self._ownership, token):
            LOG.warning("host %s: %s left to the segment's new owner", host, what)
            return
        LOG.warning("host %s: %s stopped, to be done again: %s", host, what, why)
        with self._lock:
            self._unrecorded[step_id] = (host, token, why)

    def _may_act(self) -> None:
        """Raises ``Cancelled`` when the token this worker acts under is no longer this
        server's (``vigil.engine.ownership.may_act``)."""
        may_act(self._ownership)

    def busy_in(self, segment: str) -> bool:
        """Whether a step or probe of ``segment`` is in flight (its owner gives it up
        only once none is)."""
        busy = set(self._workers.busy())
        return any(key in busy for key, s in list(self._job_segment.items()) if s == segment)

    def _segment_of(self, action: Action) -> str | None:
        segment = getattr(action, "segment", None)
        if segment is None:
            host = self.known.get(getattr(action, "host", ""))
            segment = host.segment if host is not None else None
        return segment

    def batch_key(self, action: Action) -> object:
        return self._segment_of(action)

    def admit(self, action: Action) -> bool:
        segment = self._segment_of(action)
        return segment is None or self._ownership.owns(segment)

    def acting(self, action: Action) -> AbstractContextManager[None]:
        segment = self._segment_of(action)
        return acting_as(self._ownership.token(segment) if segment is not None else None)

    def _submit(
        self,
        key: object,
        segment: str,
        job: Callable[..., None],
        *args: Any,
        refused: Callable[[OwnerToken | None], None] | None = None,
        **kw: Any,
    ) -> bool:
        """Submit ``job`` on the workers, under the token its handler acts under: it
        runs only while that token is still this server's to act under (else
        ``refused(token)`` is called), and writes under it."""
        token = self._ownership.token(segment)
        busy = set(self._workers.busy())
        self._job_segment = {k: s for k, s in self._job_segment.items() if k in busy}
        self._job_segment[key] = segment
        owned_job = run_as(
            self._ownership,
            token,
            str(key),
            job,
            refused=(lambda: refused(token)) if refused is not None else (lambda: None),
        )
        return self._workers.submit(key, owned_job, *args, **kw)

    def decide(self, snapshot: Snapshot) -> list[Action]:
        return decide(
            snapshot, self._settings.detection, max_duration=self._settings.recovery.max_duration
        )

    def recorded(self) -> None:
        self._events_written()

    # --- actions: one handler per action type, on the decision thread (store writes);
    # what waits on a BMC or Nova is handed to the workers ----------------------------

    def _on_mark_up(self, actions: list[MarkUp]) -> None:
        """Hosts heard again (or for the first time), all those of a segment in one
        transaction: a server starting beside 10,000 agents hears them all at once."""
        now = self._clock.wall()
        changes = []
        for action in actions:
            host = self._book.hosts.get(action.host)
            events: tuple[Event, ...] = ()
            if host is not None and host.state == HostState.SUSPECT:
                events = (
                    make_event(
                        "vigil.host.failure.cleared",
                        at=now,
                        host=action.host,
                        reason=action.reason,
                        segment=host.segment,
                    ),
                )
            changes.append(HostChange(action.host, HostState.UP, action.reason, events=events))
        done = set(self._store.change_hosts(changes, at=now))
        for action in actions:
            if action.host in done:
                LOG.info("host %s: up (%s)", action.host, action.reason)
            else:
                LOG.warning("host %s: not marked up: it changed meanwhile", action.host)

    def _on_mark_suspect(self, action: MarkSuspect) -> None:
        now = self._clock.wall()
        store = self._store
        with self._lock:
            self._power.pop(action.host, None)  # a new suspicion reads the BMC afresh
        event = make_event(
            "vigil.host.failure.suspected", at=now, host=action.host, reason=action.reason
        )
        store.set_host_state(
            action.host, HostState.SUSPECT, reason=action.reason, at=now, events=[event]
        )
        LOG.warning("host %s: suspect: %s; reading its BMC", action.host, action.reason)

    def _on_probe_power(self, action: ProbePower) -> None:
        segment = self._segment_of(action) or ""
        self._submit(
            ("probe", action.host), segment, self._probe, action.host, then=self.wake, urgent=True
        )

    def _on_forget_report(self, action: ForgetReport) -> None:
        with self._lock:
            said = self._reports.get(action.host)
            # Only the report the rule saw (at least as old): not one that came since.
            if said is not None and self._clock.monotonic() - said[2] >= action.age:
                del self._reports[action.host]

    def _on_declare_failure(self, action: DeclareFailure) -> None:
        now = self._clock.wall()
        store = self._store
        # The recovery id is the store's to give: the event names the failure by host
        # and reason, and the recovery id follows in every step event.
        segment = store.get_host(action.host).segment
        event = make_event(
            "vigil.host.failure.confirmed",
            at=now,
            host=action.host,
            reason=action.reason,
            segment=segment,
            sources=list(action.sources),
            paused=action.paused_reason,
        )
        recovery = store.open_host_recovery(
            host=action.host,
            reason=action.reason,
            sources=action.sources,
            at=now,
            steps=[
                NewStep(k)
                for k in (
                    StepKind.RECORD_INSTANCES,
                    StepKind.FENCE,
                    StepKind.FORCE_DOWN,
                    StepKind.LIST_INSTANCES,
                )
            ],
            paused_reason=action.paused_reason,
            events=[event],
        )
        if action.paused_reason:
            LOG.error(
                "host %s: failed: %s; recovery %d PAUSED: %s",
                action.host,
                action.reason,
                recovery.id,
                action.paused_reason,
            )
        else:
            LOG.error(
                "host %s: failed: %s; recovery %d started",
                action.host,
                action.reason,
                recovery.id,
            )

    def _on_record_boot(self, actions: list[RecordBoot]) -> None:
        changes = [HostChange(a.host, boot_id=a.boot_id) for a in actions]
        self._store.change_hosts(changes, at=self._clock.wall())

    def _on_host_rebooted(self, action: HostRebooted) -> None:
        now = self._clock.wall()
        store = self._store
        host = store.get_host(action.host)
        event = make_event(
            "vigil.host.rebooted",
            at=now,
            host=action.host,
            reason=action.reason,
            segment=host.segment,
            boot_id=action.boot_id,
            previous_boot_id=host.boot_id,
        )
        recovery = store.open_host_recovery(
            host=action.host,
            reason=action.reason,
            sources=("heartbeat",),
            at=now,
            steps=[NewStep(StepKind.FIND_STOPPED)],
            events=[event],
            kind=FailureKind.HOST_REBOOTED,
            boot_id=action.boot_id,
            unfenced=action.unfenced,
        )
        LOG.error(
            "host %s: rebooted without a declared failure (boot id %s -> %s); recovery %d "
            "starts its stopped HA instances",
            action.host,
            host.boot_id,
            action.boot_id,
            recovery.id,
        )

    def _on_clear_report(self, action: ClearReport) -> None:
        now = self._clock.wall()
        store = self._store
        with self._lock:
            self._reports.pop(action.host, None)
        event = make_event(
            "vigil.host.failure.cleared", at=now, host=action.host, reason=action.reason
        )
        store.set_host_state(
            action.host, HostState.NEW, reason=action.reason, at=now, events=[event]
        )
        LOG.warning("host %s: report closed: %s", action.host, action.reason)

    def _on_withdraw_declaration(self, action: WithdrawDeclaration) -> None:
        now = self._clock.wall()
        self._withdraw(action.recovery_id, action.host, action.reason, HostState.UP, now)

    def _on_resume_segment(self, action: ResumeSegment) -> None:
        now = self._clock.wall()
        store = self._store
        event = make_event(
            "vigil.segment.resumed", at=now, segment=action.segment, reason=action.reason
        )
        store.update_segment(action.segment, paused=False, pause_reason="", events=[event])
        LOG.warning("segment %s: automatic recovery resumed: %s", action.segment, action.reason)

    def _on_pause_segment(self, action: PauseSegment) -> None:
        now = self._clock.wall()
        store = self._store
        event = make_event(
            "vigil.segment.paused", at=now, segment=action.segment, reason=action.reason
        )
        store.update_segment(
            action.segment, paused=True, pause_reason=action.reason, events=[event]
        )
        LOG.critical(
            "ALARM segment %s: automatic recovery paused: %s", action.segment, action.reason
        )

    def _on_pause_recovery(self, action: PauseRecovery) -> None:
        now = self._clock.wall()
        store = self._store
        event = make_event(
            "vigil.recovery.paused",
            at=now,
            host=action.host,
            recovery_id=action.recovery_id,
            reason=action.reason,
        )
        store.set_recovery_status(
            action.recovery_id,
            RecoveryStatus.PAUSED,
            at=now,
            reason=action.reason,
            events=[event],
        )
        LOG.warning(
            "host %s: recovery %d paused: %s", action.host, action.recovery_id, action.reason
        )

    def _on_resume_recovery(self, action: ResumeRecovery) -> None:
        now = self._clock.wall()
        store = self._store
        event = make_event(
            "vigil.recovery.resumed", at=now, host=action.host, recovery_id=action.recovery_id
        )
        store.set_recovery_status(
            action.recovery_id, RecoveryStatus.RUNNING, at=now, events=[event]
        )
        LOG.info("host %s: recovery %d resumed", action.host, action.recovery_id)

    def _on_run_steps(self, actions: list[RunStep]) -> None:
        """The steps a cycle starts in a segment, recorded RUNNING in one transaction
        (a rack failure starts hundreds at once), then handed to the workers."""
        now = self._clock.wall()
        starts = [
            (a.step.id, [self._step_event(a.step, a.recovery_id, a.host, "start", attempt=n)])
            for a in actions
            for n in (a.step.attempts + 1,)
        ]
        started = {step.id: step for step in self._store.start_steps(starts, at=now)}
        for action in actions:
            step = started.get(action.step.id)
            if step is None:
                LOG.warning(
                    "host %s: step %d of recovery %d not started: it changed meanwhile",
                    action.host,
                    action.step.id,
                    action.recovery_id,
                )
                continue
            # False when shutting down: the step stays RUNNING, requeued at the next start.
            self._submit(
                ("step", action.recovery_id, step.id),
                self._segment_of(action) or "",
                self._execute,
                action.recovery_id,
                action.host,
                step.id,
                step.attempts,
                self._input_of(action, step),
                then=self._step_done,
                urgent=step.kind in HOST_STEPS,
                refused=partial(
                    self._left_running, step.id, action.host, why="not started: acting stopped"
                ),
            )

    def _input_of(self, action: RunStep, step: Step) -> StepInput | None:
        """What the step runs on, from the book (read this cycle; the step as just
        started) rather than three reads of the store on the worker: at a rack failure's
        2,000 evacuations those reads took pooled connections from the writes (bench/
        scale.py on PostgreSQL). None if the book lacks one of them: the worker reads."""
        book = self._book
        recovery = next(
            (r for r in book.recoveries.get(action.host, ()) if r.id == action.recovery_id), None
        )
        host = book.hosts.get(action.host)
        segment = book.segments.get(host.segment) if host is not None else None
        if recovery is None or host is None or segment is None:
            return None
        return StepInput(step, recovery, host, segment)

    def _on_finish_recovery(self, action: FinishRecovery) -> None:
        now = self._clock.wall()
        store = self._store
        ok = action.status == RecoveryStatus.SUCCEEDED
        event = make_event(
            "vigil.recovery.end",
            at=now,
            host=action.host,
            priority="INFO" if ok else "ERROR",
            recovery_id=action.recovery_id,
            outcome=action.status.value,
            reason=action.reason,
        )
        store.finish_recovery(
            action.recovery_id, action.status, at=now, reason=action.reason, events=[event]
        )
        for key in self._workers.busy():  # its steps still in flight stop at their next wait
            if key[0] == "step" and key[1] == action.recovery_id:  # type: ignore[index]
                self._workers.cancel(key, f"recovery {action.recovery_id} ended: {action.reason}")
        LOG.log(
            logging.INFO if ok else logging.ERROR,
            "host %s: recovery %d %s: %s",
            action.host,
            action.recovery_id,
            action.status.value,
            action.reason,
        )

    def _withdraw(
        self, recovery_id: int, host: str, reason: str, state: HostState, now: float
    ) -> None:
        event = make_event(
            "vigil.host.failure.withdrawn",
            at=now,
            host=host,
            recovery_id=recovery_id,
            reason=reason,
        )
        self._store.withdraw_recovery(
            recovery_id, at=now, reason=reason, host_state=state, events=[event]
        )
        LOG.warning(
            "host %s: failure declaration withdrawn (recovery %d): %s", host, recovery_id, reason
        )

    def _booted_again(self, name: str) -> bool | None:
        """Whether the host has been heard with another kernel boot id than the one stored
        (a failed host's stays the one before its failure); None when none is known."""
        host = self.known.get(name)
        if host is None or host.boot_id is None:
            return None
        heard = self._heartbeats.kernel_boot_id(name)
        return heard is not None and heard != host.boot_id

    def _spread(self, candidates: Sequence[str]) -> str:
        """The candidate destination aimed at least so far (then by name)."""
        with self._lock:
            chosen = min(candidates, key=lambda h: (self._aimed[h], h))
            self._aimed[chosen] += 1
            return chosen

    def dismiss(self, recovery_id: int, reason: str) -> None:
        """An operator dismisses a paused declaration that never acted. The host waits for
        its first heartbeat again (NEW), or is UP at once if it beats."""
        recovery = self._store.get_recovery(recovery_id)
        age = self._heartbeats.age(recovery.host)
        beating = age is not None and age < self._settings.detection.suspect_after
        state = HostState.UP if beating else HostState.NEW
        self._withdraw(recovery_id, recovery.host, reason, state, self._clock.wall())
        self._events_written()
        self.wake()

    # --- work on the pool ---------------------------------------------------------------

    def _probe(self, name: str) -> None:
        state = PowerState.UNKNOWN
        try:
            devices = self._fence_devices(self._store.get_host(name))
            if devices:
                state = devices[0].power_status()
        except DriverError as exc:
            LOG.warning("host %s: BMC power read failed: %s", name, exc)
        except Exception:
            LOG.exception("host %s: BMC power read failed", name)
        with self._lock:
            before = self._power.get(name)
            self._power[name] = (state, self._clock.monotonic())
            changed = before is None or before[0] != state
        if changed:  # said when it changes, not at every read of a suspect host
            LOG.info("host %s: BMC reads power %s", name, state.value)

    def _execute(
        self,
        recovery_id: int,
        host_name: str,
        step_id: int,
        attempts: int,
        given: StepInput | None = None,
    ) -> None:
        store = self._store
        key = ("step", recovery_id, step_id)
        try:
            if given is None:
                recovery = store.get_recovery(recovery_id)
                host = store.get_host(host_name)
                given = StepInput(
                    next(s for s in recovery.steps if s.id == step_id),
                    recovery,
                    host,
                    store.get_segment(host.segment),
                )
            step, recovery = given.step, given.recovery
            label = step.kind.value + (
                f" of instance {step.instance_name} ({step.instance_id})"
                if step.instance_id
                else ""
            )
            try:
                self._workers.check(key)
                ctx = replace(self._ctx, wait=self._workers.waiter(key, self._ctx.wait))
                done = run_step(ctx, given)
            except Cancelled as why:
                token = current_token()
                if isinstance(why, NotActing) or not self._ownership.valid(token):
                    # Not this server's to act under now: the step stays RUNNING, for
                    # its new owner to re-check (the store would refuse this write), or
                    # done again here once the lapsed acting window is renewed.
                    self._left_running(step_id, host_name, token, str(why), label)
                    return
                # The recovery ended around it: FAILED with the reason, so that an
                # operator's retry runs it again (steps are idempotent).
                detail = f"cancelled: {why}"
                event = self._step_event(
                    step, recovery_id, host_name, "error", attempt=attempts, detail=detail
                )
                store.finish_step(
                    step_id, StepStatus.FAILED, at=self._clock.wall(), detail=detail, events=[event]
                )
                LOG.warning("host %s: %s %s", host_name, label, detail)
                return
            except Exception as exc:
                if not isinstance(exc, DriverError | StoreUnavailable):
                    LOG.exception("host %s: %s crashed", host_name, label)
                now = self._clock.wall()
                delay = self._step_retry.after_failure(attempts, exc)
                if delay is None:  # a PermanentError, or its attempts are spent
                    event = self._step_event(
                        step, recovery_id, host_name, "error", attempt=attempts, detail=str(exc)
                    )
                    store.finish_step(
                        step_id, StepStatus.FAILED, at=now, detail=str(exc), events=[event]
                    )
                    LOG.error(
                        "host %s: %s FAILED after %d attempt(s): %s",
                        host_name,
                        label,
                        attempts,
                        exc,
                    )
                else:
                    store.finish_step(
                        step_id,
                        StepStatus.PENDING,
                        at=now,
                        detail=str(exc),
                        next_attempt_at=now + delay,
                    )
                    LOG.warning(
                        "host %s: %s attempt %d failed, retrying in %.1fs: %s",
                        host_name,
                        label,
                        attempts,
                        delay,
                        exc,
                    )
                return
            event = self._step_event(
                step,
                recovery_id,
                host_name,
                "end",
                attempt=attempts,
                detail=done.detail,
                result=dict(done.result),
            )
            store.finish_step(
                step_id,
                StepStatus.SUCCEEDED,
                at=self._clock.wall(),
                detail=done.detail,
                result=done.result,
                new_steps=done.new_steps,
                events=[event],
            )
            LOG.info("host %s: %s done: %s", host_name, label, done.detail)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):
                LOG.error("host %s: recording step %d failed: %s", host_name, step_id, exc)
            else:
                LOG.exception("host %s: recording step %d failed", host_name, step_id)
            with self._lock:  # RUNNING with no job: checked again once the store answers
                self._unrecorded[step_id] = (
                    host_name,
                    current_token(),
                    "its outcome was not recorded (database unavailable)",
                )

    def _step_done(self) -> None:
        """A step's outcome is written and its key free: deliver, decide again."""
        self._events_written()
        self.wake()

    def _step_event(
        self,
        step: Step,
        recovery_id: int,
        host: str,
        phase: str,
        *,
        attempt: int,
        detail: str = "",
        result: dict[str, Any] | None = None,
    ) -> Event:
        return make_event(
            f"{STEP_EVENT_NAMES[step.kind]}.{phase}",
            at=self._clock.wall(),
            host=host,
            instance_id=step.instance_id,
            recovery_id=recovery_id,
            step_id=step.id,
            step=step.kind.value,
            attempt=attempt,
            detail=detail,
            result=result or {},
            instance_name=step.instance_name,
            target_host=step.target_host,
        )

    def _events_written(self) -> None:
        """Events were committed: let the dispatcher deliver them now, not at its next poll."""
        if self._on_events is not None:
            self._on_events()
