"""The decision: a pure function of a snapshot of the world and the time.

``decide(snapshot, detection, recovery)`` returns the actions to take this cycle and
does no I/O, so every rule here is tested with plain data and a fake clock. The engine
builds the snapshot, performs the actions and records their outcome.

The rules, in the order a host failure meets them:

- detection: a monitored host whose heartbeats stop for ``suspect_after`` is SUSPECT and
  its BMC is read; it is declared FAILED when the BMC reads power off, or after
  ``failed_after`` without a heartbeat whatever the BMC says (an isolated or hung host
  still reads "on"). A heartbeat before that makes it UP again.
- reports (Masakari's COMPUTE_HOST notifications): another's word that a host is down is
  one signal. It makes a host that is not heartbeating SUSPECT (a host without a vigil
  agent too) and is named among the failure's sources, but never declares a failure on
  its own: the BMC must read power off, or the host's own heartbeats must have been
  silent for ``failed_after``. The fence comes first either way. A report about a host
  vigil never heard ends within ``failed_after`` all the same: with the BMC reading on,
  it is closed as not corroborated; with no readable BMC (none configured, unreachable)
  the failure is declared so that the fence decides — a recovery that cannot fence ends
  failed, saying why, and moves nothing.
- storm guard (S3): a declaration that would make more than the segment's
  ``max_failed_share`` of its hosts failing at once — or more than half of all hosts, which
  looks like vigil being cut off — is recorded PAUSED, and the segment is paused.
- recovery: fence (power off, confirmed) → force the compute service down → list the
  instances → evacuate the keep-running ones (priority order, bounded parallelism) and
  notify for the notify ones. Each host-level step must succeed before the next starts;
  a host-level step that fails for good ends the recovery FAILED, so nothing is evacuated
  from a host whose fence was not confirmed (S1).
- pause (S4): an operator's cloud-wide pause or a paused segment holds every recovery
  between steps; a step already running finishes.
- withdrawal: a paused declaration none of whose steps ever ran is withdrawn when the
  host's heartbeats return (it was vigil, or the network, not the host); a segment the
  storm guard paused resumes by itself once the guard would not pause it any more (no
  host suspect, the hosts still failing within its share): their recoveries go on.
- reboots: a host that heartbeats with a new kernel boot id, never declared failed (its
  watchdog reset it, or its power blinked for less than the detection time), had a
  failure all the same: its guests are off. A recovery without a fence starts its
  stopped HA instances again (``find-stopped`` → ``start`` per instance, or ``notify``).
- every recovery ends: one still running ``max_duration`` after it started ends FAILED,
  naming the steps that had not finished (each step's attempts and timeouts bound it
  well before that; this is the bound an operator can count on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vigil.config import DetectionSettings
from vigil.drivers.fencing import PowerState
from vigil.engine.flow import HOST_STEPS
from vigil.model import (
    Control,
    Host,
    HostState,
    Recovery,
    RecoveryStatus,
    Segment,
    Step,
    StepKind,
    StepStatus,
)

# Why the storm guard paused a segment starts with this: such a pause lifts by itself
# once every declaration it held was withdrawn; an operator's pause never does.
GUARD_PREFIX = "storm guard: "
TERMINAL_STEP = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED})
ACTIVE_RECOVERY = (RecoveryStatus.PENDING, RecoveryStatus.RUNNING, RecoveryStatus.PAUSED)
# With fewer monitored hosts than this, "most hosts failing" says nothing about vigil
# being cut off (one of two hosts failing is an ordinary failure).
MIN_HOSTS_FOR_CUTOFF_GUARD = 3
CUTOFF_SHARE = 0.5


@dataclass(frozen=True)
class DownReport:
    """Someone else says the host is down (e.g. a Masakari monitor's notification)."""

    source: str  # e.g. masakari
    reason: str
    age: float  # seconds since it arrived
    # The reporter took it back (the host is started again). Kept, not forgotten: for a
    # host vigil has never heard, silence alone must not declare it either.
    withdrawn: bool = False


@dataclass(frozen=True)
class HostView:
    host: Host
    heartbeat_age: float | None  # seconds; None when none arrived since the server started
    power: PowerState | None = None  # last BMC read while suspect
    power_read_age: float | None = None
    probing: bool = False  # a BMC read is in flight
    report: DownReport | None = None  # the latest unconsumed report that it is down
    boot_id: str | None = None  # the kernel boot id in its latest heartbeat


@dataclass(frozen=True)
class Snapshot:
    now: float  # wall clock, epoch seconds
    uptime: float  # seconds since this server started: the grace for silent hosts
    control: Control
    segments: Mapping[str, Segment]
    hosts: Mapping[str, HostView]
    recoveries: tuple[Recovery, ...]  # the active ones
    in_flight: frozenset[int] = frozenset()  # ids of steps being executed now
    # For failed hosts with no active recovery: the last recovery, if it ended FAILED at
    # the fence (nothing forced down, nothing moved).
    unfenced: Mapping[str, Recovery] = field(default_factory=dict)
    # Hosts not in maintenance per segment, counting those ``hosts`` leaves out. None:
    # ``hosts`` holds every host. At scale the engine puts in ``hosts`` only the ones the
    # rules can act on this cycle (every host not UP, every UP host silent for
    # ``suspect_after``, with a new boot id, a report or a recovery); the storm guard
    # needs the others only as a count.
    monitored: Mapping[str, int] | None = None

    def monitored_in(self, segment: str | None = None) -> int:
        """Hosts not in maintenance, of ``segment`` (None: of every segment here)."""
        if self.monitored is not None:
            if segment is None:
                return sum(self.monitored.values())
            return self.monitored.get(segment, 0)
        return sum(
            1
            for v in self.hosts.values()
            if not v.host.maintenance and (segment is None or v.host.segment == segment)
        )


# --- actions --------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkUp:
    host: str
    reason: str


@dataclass(frozen=True)
class MarkSuspect:
    host: str
    reason: str


@dataclass(frozen=True)
class ProbePower:
    host: str


@dataclass(frozen=True)
class DeclareFailure:
    host: str
    reason: str
    sources: tuple[str, ...]
    paused_reason: str | None = None


@dataclass(frozen=True)
class PauseSegment:
    segment: str
    reason: str


@dataclass(frozen=True)
class PauseRecovery:
    recovery_id: int
    host: str
    reason: str


@dataclass(frozen=True)
class ResumeRecovery:
    recovery_id: int
    host: str


@dataclass(frozen=True)
class RecordBoot:
    """Remember the host's kernel boot id (first heard, or after a reboot vigil expected)."""

    host: str
    boot_id: str


@dataclass(frozen=True)
class HostRebooted:
    """The host came back with a new kernel boot id, never declared failed — or declared,
    but its fence never confirmed (``unfenced``: that recovery's id): it did reset."""

    host: str
    boot_id: str
    reason: str
    unfenced: int | None = None


@dataclass(frozen=True)
class ForgetReport:
    """Another's report that the host is down has served (the host was declared failed,
    or is in maintenance) or is contradicted (the host kept beating long after it): it
    is dropped, silently. ``age`` is how old the report was in the snapshot, so that a
    newer report that arrived since is kept."""

    host: str
    age: float


@dataclass(frozen=True)
class ClearReport:
    """Another's report that the host is down, not corroborated: closed, the host back to
    waiting for its first heartbeat (a host without a vigil agent stays so)."""

    host: str
    reason: str


@dataclass(frozen=True)
class WithdrawDeclaration:
    recovery_id: int
    host: str
    reason: str


@dataclass(frozen=True)
class ResumeSegment:
    segment: str
    reason: str


@dataclass(frozen=True)
class RunStep:
    recovery_id: int
    host: str
    step: Step


@dataclass(frozen=True)
class FinishRecovery:
    recovery_id: int
    host: str
    status: RecoveryStatus
    reason: str


Action = (
    MarkUp
    | MarkSuspect
    | ProbePower
    | DeclareFailure
    | PauseSegment
    | PauseRecovery
    | ResumeRecovery
    | RunStep
    | FinishRecovery
    | RecordBoot
    | HostRebooted
    | WithdrawDeclaration
    | ResumeSegment
    | ClearReport
    | ForgetReport
)


def decide(
    snap: Snapshot, detection: DetectionSettings, *, max_duration: float = float("inf")
) -> list[Action]:
    actions: list[Action] = []
    actions.extend(_detect(snap, detection))
    actions.extend(_reboots(snap, detection))
    for recovery in snap.recoveries:
        actions.extend(_drive(snap, recovery, detection, max_duration))
    actions.extend(_unpause(snap, detection))
    return actions


def _beating(view: HostView | None, detection: DetectionSettings) -> bool:
    return (
        view is not None
        and view.heartbeat_age is not None
        and view.heartbeat_age < detection.suspect_after
    )


def _reboots(snap: Snapshot, detection: DetectionSettings) -> list[Action]:
    """A new kernel boot id: remembered, and for a host in use a failure that happened."""
    busy = {r.host for r in snap.recoveries}
    actions: list[Action] = []
    for name, view in sorted(snap.hosts.items()):
        host, boot = view.host, view.boot_id
        if boot is None or boot == host.boot_id or not _beating(view, detection):
            continue
        if host.state == HostState.FAILED:
            gave_up = snap.unfenced.get(name)
            if gave_up is not None and host.boot_id is not None:
                actions.append(
                    HostRebooted(
                        name,
                        boot,
                        f"host {name} booted again (boot id {host.boot_id} -> {boot}) after "
                        f"recovery {gave_up.id} could not confirm its fence: it did reset, "
                        "and its stopped HA instances are started where they are",
                        unfenced=gave_up.id,
                    )
                )
            continue  # else its recovery owns it (a withdrawal first, if it never acted)
        if (
            host.boot_id is not None
            and host.state in (HostState.UP, HostState.SUSPECT)
            and not host.maintenance
        ):
            if name in busy:
                continue  # after the recovery it has (for example restarting its guests)
            actions.append(
                HostRebooted(
                    name,
                    boot,
                    f"host {name} booted again (boot id {host.boot_id} -> {boot}) "
                    "without vigil declaring it failed: its guests were stopped",
                )
            )
        else:
            actions.append(RecordBoot(name, boot))
    return actions


def _unpause(snap: Snapshot, detection: DetectionSettings) -> list[Action]:
    """Segments the storm guard paused where it would not pause any more: no host of the
    segment is suspect, no held declaration waits to be withdrawn, and the failing hosts
    left (those whose failure is real) are within the guard's share. Their recoveries
    then go on; an operator's pause never lifts by itself."""
    actions: list[Action] = []
    for name, segment in sorted(snap.segments.items()):
        if not segment.paused or not segment.pause_reason.startswith(GUARD_PREFIX):
            continue
        members = [v for v in snap.hosts.values() if v.host.segment == name]  # the unsettled
        if any(v.host.state == HostState.SUSPECT and not v.host.maintenance for v in members):
            continue
        if any(
            r.segment == name and _withdrawable(r) and _beating(snap.hosts.get(r.host), detection)
            for r in snap.recoveries
        ):
            continue  # withdrawn this cycle: judge the segment without it next cycle
        if _storm(snap, name) is not None:
            continue
        failing = sum(1 for v in members if _failing(v))
        actions.append(
            ResumeSegment(
                name,
                f"the storm guard's condition is over: {failing} of "
                f"{snap.monitored_in(name)} hosts failing, the other declarations withdrawn",
            )
        )
    return actions


def _guard_only(snap: Snapshot, recovery: Recovery) -> bool:
    """Whether what holds the recovery is only the storm guard's pause of its segment."""
    segment = snap.segments.get(recovery.segment)
    return (
        not snap.control.paused
        and segment is not None
        and segment.pause_reason.startswith(GUARD_PREFIX)
    )


def _withdrawable(recovery: Recovery) -> bool:
    """A paused declaration none of whose steps ever acted (reading its instances is
    not acting). A host's reboot recovery is no declaration: its cause is the very
    heartbeats that came back."""
    if recovery.step(StepKind.FENCE) is None:
        return False
    return recovery.status == RecoveryStatus.PAUSED and all(
        s.status == StepStatus.PENDING and not s.attempts
        for s in recovery.steps
        if s.kind != StepKind.RECORD_INSTANCES
    )


# --- detection ------------------------------------------------------------------------


def _silence(view: HostView, snap: Snapshot) -> float:
    """How long the host has been silent, counting from server start if never heard."""
    return view.heartbeat_age if view.heartbeat_age is not None else snap.uptime


def _failing(view: HostView) -> bool:
    return not view.host.maintenance and view.host.state in (HostState.SUSPECT, HostState.FAILED)


def _detect(snap: Snapshot, detection: DetectionSettings) -> list[Action]:
    actions: list[Action] = []
    declared_segments: set[str] = set()
    for name, view in sorted(snap.hosts.items()):
        host = view.host
        said = view.report
        if said is not None and _report_done(view, detection):
            actions.append(ForgetReport(name, said.age))
            said = None
        if host.maintenance:
            continue
        beating = view.heartbeat_age is not None and view.heartbeat_age < detection.suspect_after
        report = said if said is not None and not said.withdrawn else None
        if host.state == HostState.NEW:
            if beating:
                actions.append(MarkUp(name, "first heartbeat received"))
            elif report is not None:
                # A host without a vigil agent: the report is the first sign of trouble.
                actions.append(MarkSuspect(name, f"{report.source}: {report.reason}"))
        elif host.state == HostState.UP:
            silence = _silence(view, snap)
            if silence >= detection.suspect_after:
                actions.append(MarkSuspect(name, f"no heartbeat for {silence:.2f}s"))
        elif host.state == HostState.SUSPECT:
            silence = _silence(view, snap)
            # Silence is a signal only from a host vigil hears: for one never heard since
            # the start, a report plus its silence would be one signal counted twice.
            heard = view.heartbeat_age is not None or said is None
            if beating:
                actions.append(MarkUp(name, "heartbeats resumed"))
            elif said is not None and said.withdrawn and not heard:
                pass  # reported down, then back: nothing to go on until it speaks again
            elif (
                report is not None
                and not heard
                and report.age >= detection.failed_after
                and view.power == PowerState.ON
                and view.power_read_age is not None
            ):
                # Nothing corroborates the report (no agent, the BMC reads on): vigil does
                # not fence on one signal. Said at once, once, and the report is closed.
                actions.append(
                    ClearReport(
                        name,
                        f"{report.source}: {report.reason}; not corroborated: the BMC reads "
                        "power on and no vigil agent heartbeats from the host: not fenced, "
                        "nothing moved",
                    )
                )
            elif (
                view.power == PowerState.OFF
                or (heard and silence >= detection.failed_after)
                or (
                    report is not None
                    and not heard
                    and report.age >= detection.failed_after
                    and view.power == PowerState.UNKNOWN
                )
            ):
                told = f"{report.source}: {report.reason}; " if report else ""
                if report is not None and not heard and view.power == PowerState.UNKNOWN:
                    # No agent and no readable BMC: declared, so that the recovery's fence
                    # decides — and says why it cannot, if it cannot: the reporter is told
                    # within the detection time instead of waiting for ever (S1 holds: the
                    # fence must be confirmed before anything moves).
                    reason = (
                        f"{told}no vigil agent heartbeats from the host and its BMC cannot "
                        "be read: the fence decides"
                    )
                    sources: tuple[str, ...] = (report.source,)
                elif view.power == PowerState.OFF:
                    silent = f"no heartbeat for {silence:.2f}s and " if heard else ""
                    reason = f"{told}{silent}the BMC reads power off"
                    sources = ("heartbeat",) if heard else ()
                    sources += (report.source,) if report else ()
                    sources += ("bmc",)
                else:
                    power = view.power.value if view.power else "unreadable"
                    reason = f"{told}no heartbeat for {silence:.2f}s (BMC power: {power})"
                    sources = ("heartbeat", report.source) if report else ("heartbeat",)
                paused = _held(snap, host.segment)
                if paused is None:
                    paused = _storm(snap, host.segment)
                    if paused and host.segment not in declared_segments:
                        actions.append(PauseSegment(host.segment, paused))
                        declared_segments.add(host.segment)
                actions.append(DeclareFailure(name, reason, sources, paused))
            elif not view.probing and (
                view.power_read_age is None or view.power_read_age >= detection.probe_interval
            ):
                actions.append(ProbePower(name))
    return actions


def _report_done(view: HostView, detection: DetectionSettings) -> bool:
    """Whether a report that the host is down has nothing more to say: the host was
    declared failed on it (or after), is in maintenance, or kept beating for longer than
    a failure takes to be declared after the report arrived."""
    host, report = view.host, view.report
    if report is None:
        return False
    if host.maintenance or host.state in (HostState.FAILED, HostState.RECOVERED):
        return True
    return host.state == HostState.UP and report.age > detection.failed_after


def _held(snap: Snapshot, segment_name: str) -> str | None:
    """Why recovery in this segment is held by an operator or an earlier alarm (S4)."""
    if snap.control.paused:
        return f"automatic recovery paused by operator: {snap.control.reason}"
    segment = snap.segments.get(segment_name)
    if segment is not None and segment.paused:
        return f"segment {segment_name} paused: {segment.pause_reason}"
    return None


def _storm(snap: Snapshot, segment_name: str) -> str | None:
    """Why starting a recovery in this segment now would be a storm (S3), or None."""
    # Failing hosts are never UP: all of them are in ``hosts``; the others are counted.
    failing = [v for v in snap.hosts.values() if _failing(v)]
    segment = snap.segments.get(segment_name)
    members = snap.monitored_in(segment_name)
    failing_here = sum(1 for v in failing if v.host.segment == segment_name)
    if segment is not None and members:
        share = failing_here / members
        if share > segment.max_failed_share:
            return GUARD_PREFIX + (
                f"{failing_here} of {members} hosts of segment {segment_name} failing "
                f"at once (more than {segment.max_failed_share:.0%}): storm guard"
            )
    monitored = snap.monitored_in()
    if monitored >= MIN_HOSTS_FOR_CUTOFF_GUARD and len(failing) > CUTOFF_SHARE * monitored:
        return GUARD_PREFIX + (
            f"{len(failing)} of {monitored} hosts silent at once: vigil may be cut off "
            "from them; not fencing"
        )
    return None


# --- recovery -------------------------------------------------------------------------


def _due(step: Step, snap: Snapshot) -> bool:
    return (
        step.status == StepStatus.PENDING
        and step.id not in snap.in_flight
        and step.next_attempt_at <= snap.now
    )


def _drive(
    snap: Snapshot, recovery: Recovery, detection: DetectionSettings, max_duration: float
) -> list[Action]:
    hold = _held(snap, recovery.segment)
    if hold and recovery.step(StepKind.FIND_STOPPED) is not None and _guard_only(snap, recovery):
        # Starting the instances of a host that rebooted and is up again fences and moves
        # nothing: the storm guard does not hold it (an operator's pause does).
        hold = None
    steps = sorted(recovery.steps, key=lambda s: s.seq)
    record = recovery.step(StepKind.RECORD_INSTANCES)
    if recovery.status == RecoveryStatus.PAUSED:
        # Reading the instances acts on nothing: it runs while held too, so that the
        # states are those before the failure, not after a reboot during the pause.
        reading: list[Action] = []
        if record is not None and _due(record, snap):
            reading.append(RunStep(recovery.id, recovery.host, record))
        if _withdrawable(recovery) and _beating(snap.hosts.get(recovery.host), detection):
            return [
                WithdrawDeclaration(
                    recovery.id,
                    recovery.host,
                    "heartbeats returned before anything was fenced or moved",
                )
            ]
        return reading if hold else [*reading, ResumeRecovery(recovery.id, recovery.host)]
    if hold:
        return [PauseRecovery(recovery.id, recovery.host, hold)]
    busy = any(s.id in snap.in_flight for s in steps)
    started = recovery.started_at if recovery.started_at is not None else recovery.created_at
    if snap.now - started > max_duration:
        unfinished = [s for s in steps if s.status not in TERMINAL_STEP]
        names = ", ".join(
            s.kind.value + (f" {s.instance_name or s.instance_id}" if s.instance_id else "")
            for s in unfinished
        )
        return [
            FinishRecovery(
                recovery.id,
                recovery.host,
                RecoveryStatus.FAILED,
                f"did not end within {max_duration:g}s; unfinished: {names or 'none'}",
            )
        ]

    actions: list[Action] = []
    if record is not None and _due(record, snap):
        actions.append(RunStep(recovery.id, recovery.host, record))
    for step in (s for s in steps if s.kind in HOST_STEPS):
        if step.kind == StepKind.RECORD_INSTANCES:
            continue  # beside the others; a failed read only loses the states before
        if step.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
            continue
        planning = step.kind == StepKind.LIST_INSTANCES and record is not None
        if planning and record is not None and record.status not in TERMINAL_STEP:
            return actions  # plan with the states before the failure in hand
        if step.status == StepStatus.FAILED:
            if busy:
                return []
            return [
                FinishRecovery(
                    recovery.id,
                    recovery.host,
                    RecoveryStatus.FAILED,
                    f"{step.kind.value} failed: {step.detail}",
                )
            ]
        if _due(step, snap):
            actions.append(RunStep(recovery.id, recovery.host, step))
        return actions

    instance_steps = [s for s in steps if s.kind not in HOST_STEPS]
    segment = snap.segments.get(recovery.segment)
    limit = segment.max_parallel_evacuations if segment is not None else 1
    running = sum(
        1 for s in instance_steps if s.id in snap.in_flight or s.status == StepStatus.RUNNING
    )
    for step in instance_steps:
        if running >= limit:
            break
        if _due(step, snap):
            actions.append(RunStep(recovery.id, recovery.host, step))
            running += 1
    if not actions and not busy and all(s.status in TERMINAL_STEP for s in instance_steps):
        failed = [s for s in instance_steps if s.status == StepStatus.FAILED]
        if failed:
            names = ", ".join(s.instance_name or s.instance_id or "?" for s in failed)
            return [
                FinishRecovery(
                    recovery.id,
                    recovery.host,
                    RecoveryStatus.FAILED,
                    f"{len(failed)} of {len(instance_steps)} instances not recovered: {names}",
                )
            ]
        moved = sum(1 for s in instance_steps if s.kind == StepKind.EVACUATE)
        started_again = sum(1 for s in instance_steps if s.kind == StepKind.START)
        told = len(instance_steps) - moved - started_again
        if recovery.step(StepKind.FIND_STOPPED) is not None:
            summary = f"host rebooted; {started_again} instances started, {told} notified"
        else:
            summary = f"host fenced; {moved} instances evacuated, {told} notified"
        return [FinishRecovery(recovery.id, recovery.host, RecoveryStatus.SUCCEEDED, summary)]
    return actions
