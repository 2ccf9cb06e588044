"""The decision logic, with plain data and no I/O: detection, storm guard, recovery order."""

from __future__ import annotations

from dataclasses import replace

from vigil.config import DetectionSettings
from vigil.drivers.fencing import PowerState
from vigil.engine.decide import (
    GUARD_PREFIX,
    DeclareFailure,
    FinishRecovery,
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

DET = DetectionSettings(heartbeat_interval=0.5, suspect_after=1.0, failed_after=1.75)
NOW = 1_800_000_000.0


def view(
    name: str, state: HostState, age: float | None, *, segment: str = "s1", **kw: object
) -> HostView:
    maintenance = bool(kw.pop("maintenance", False))
    return HostView(Host(name, segment, state=state, maintenance=maintenance), age, **kw)  # type: ignore[arg-type]


def snap(
    *views: HostView,
    recoveries: tuple[Recovery, ...] = (),
    control: Control | None = None,
    segments: dict[str, Segment] | None = None,
    in_flight: frozenset[int] = frozenset(),
    uptime: float = 100.0,
    now: float = NOW,
) -> Snapshot:
    return Snapshot(
        now=now,
        uptime=uptime,
        control=control or Control(),
        segments=segments or {"s1": Segment("s1", max_parallel_evacuations=2)},
        hosts={v.host.name: v for v in views},
        recoveries=recoveries,
        in_flight=in_flight,
    )


def healthy(n: int) -> list[HostView]:
    return [view(f"ok{i}", HostState.UP, 0.1) for i in range(n)]


# --- detection --------------------------------------------------------------------------


def test_first_heartbeat_brings_new_host_up() -> None:
    assert decide(snap(view("c1", HostState.NEW, 0.2)), DET) == [
        MarkUp("c1", "first heartbeat received")
    ]


def test_new_host_without_heartbeat_is_not_monitored() -> None:
    assert decide(snap(view("c1", HostState.NEW, None)), DET) == []


def test_up_host_suspect_only_after_suspect_after() -> None:
    assert decide(snap(view("c1", HostState.UP, 0.99)), DET) == []
    actions = decide(snap(view("c1", HostState.UP, 1.0)), DET)
    assert [type(a) for a in actions] == [MarkSuspect]


def test_server_restart_gives_silent_hosts_a_grace_period() -> None:
    # No heartbeat since this server started: silence counts from start, not from forever.
    assert decide(snap(view("c1", HostState.UP, None), uptime=0.5), DET) == []
    assert [type(a) for a in decide(snap(view("c1", HostState.UP, None), uptime=1.2), DET)] == [
        MarkSuspect
    ]


def test_suspect_host_is_probed_then_declared_after_failed_after() -> None:
    hosts = healthy(3)
    assert decide(snap(view("c1", HostState.SUSPECT, 1.2), *hosts), DET) == [ProbePower("c1")]
    # a probe in flight is not repeated
    assert decide(snap(view("c1", HostState.SUSPECT, 1.3, probing=True), *hosts), DET) == []
    # BMC read "on" recently: wait for failed_after
    on = {"power": PowerState.ON, "power_read_age": 0.1}
    assert decide(snap(view("c1", HostState.SUSPECT, 1.5, **on), *hosts), DET) == []
    actions = decide(snap(view("c1", HostState.SUSPECT, 1.75, **on), *hosts), DET)
    assert actions == [
        DeclareFailure("c1", "no heartbeat for 1.75s (BMC power: on)", ("heartbeat",), None)
    ]


def test_bmc_power_off_declares_before_failed_after() -> None:
    v = view("c1", HostState.SUSPECT, 1.1, power=PowerState.OFF, power_read_age=0.0)
    (action,) = decide(snap(v, *healthy(3)), DET)
    assert isinstance(action, DeclareFailure)
    assert action.sources == ("heartbeat", "bmc")
    assert action.paused_reason is None


def test_heartbeat_clears_suspicion() -> None:
    assert decide(snap(view("c1", HostState.SUSPECT, 0.2)), DET) == [
        MarkUp("c1", "heartbeats resumed")
    ]


def test_maintenance_hosts_are_left_alone() -> None:
    assert decide(snap(view("c1", HostState.UP, 30.0, maintenance=True)), DET) == []


def test_recovered_host_is_not_used_again_even_when_it_beats() -> None:
    assert decide(snap(view("c1", HostState.RECOVERED, 0.1)), DET) == []


# --- storm guard and pause ----------------------------------------------------------------


def test_storm_in_segment_pauses_instead_of_fencing() -> None:
    seg = {"s1": Segment("s1", max_failed_share=0.5)}
    dead = [view(f"c{i}", HostState.SUSPECT, 5.0) for i in range(3)]
    actions = decide(snap(*dead, *healthy(1), segments=seg), DET)
    pauses = [a for a in actions if isinstance(a, PauseSegment)]
    declared = [a for a in actions if isinstance(a, DeclareFailure)]
    assert len(pauses) == 1 and "storm guard" in pauses[0].reason
    assert len(declared) == 3 and all(a.paused_reason for a in declared)


def test_failure_within_share_is_not_paused() -> None:
    seg = {"s1": Segment("s1", max_failed_share=0.5)}
    actions = decide(snap(view("c1", HostState.SUSPECT, 5.0), *healthy(3), segments=seg), DET)
    assert next(a for a in actions if isinstance(a, DeclareFailure)).paused_reason is None


def test_most_hosts_silent_across_segments_looks_like_vigil_cut_off() -> None:
    segs = {f"s{i}": Segment(f"s{i}", max_failed_share=1.0) for i in range(4)}
    dead = [view(f"c{i}", HostState.SUSPECT, 5.0, segment=f"s{i}") for i in range(3)]
    actions = decide(snap(*dead, view("ok", HostState.UP, 0.1, segment="s3"), segments=segs), DET)
    declared = [a for a in actions if isinstance(a, DeclareFailure)]
    assert declared and all("cut off" in (a.paused_reason or "") for a in declared)


def test_operator_pause_records_failure_but_holds_recovery() -> None:
    control = Control(paused=True, reason="network maintenance")
    (action,) = decide(snap(view("c1", HostState.SUSPECT, 5.0), *healthy(3), control=control), DET)
    assert isinstance(action, DeclareFailure)
    assert action.paused_reason is not None and "network maintenance" in action.paused_reason


# --- recovery ---------------------------------------------------------------------------------


def step(sid: int, kind: StepKind, status: StepStatus = StepStatus.PENDING, **kw: object) -> Step:
    return Step(id=sid, recovery_id=1, seq=sid, kind=kind, status=status, **kw)  # type: ignore[arg-type]


def recovery(*steps: Step, status: RecoveryStatus = RecoveryStatus.RUNNING) -> Recovery:
    return Recovery(1, 1, "c1", "s1", status, NOW - 5, steps=steps)


def host_steps(*statuses: StepStatus) -> list[Step]:
    kinds = (StepKind.FENCE, StepKind.FORCE_DOWN, StepKind.LIST_INSTANCES)
    return [step(i + 1, k, s) for i, (k, s) in enumerate(zip(kinds, statuses, strict=False))] + [
        step(i + 1, k) for i, k in enumerate(kinds) if i >= len(statuses)
    ]


def failed_host() -> HostView:
    return view("c1", HostState.FAILED, 9.0)


def test_fence_runs_first_and_alone() -> None:
    r = recovery(*host_steps())
    actions = decide(snap(failed_host(), recoveries=(r,)), DET)
    assert [(type(a), a.step.kind) for a in actions if isinstance(a, RunStep)] == [
        (RunStep, StepKind.FENCE)
    ]
    # while fencing is in flight nothing else starts
    assert decide(snap(failed_host(), recoveries=(r,), in_flight=frozenset({1})), DET) == []


def test_unconfirmed_fence_fails_the_recovery_and_evacuates_nothing() -> None:
    r = recovery(
        step(1, StepKind.FENCE, StepStatus.FAILED, detail="BMC unreachable"),
        step(2, StepKind.FORCE_DOWN),
        step(3, StepKind.LIST_INSTANCES),
        step(4, StepKind.EVACUATE, instance_id="i1"),
    )
    (action,) = decide(snap(failed_host(), recoveries=(r,)), DET)
    assert isinstance(action, FinishRecovery)
    assert action.status == RecoveryStatus.FAILED
    assert "fence failed: BMC unreachable" in action.reason


def test_retry_waits_for_its_backoff() -> None:
    r = recovery(step(1, StepKind.FENCE, next_attempt_at=NOW + 1), *host_steps()[1:])
    assert decide(snap(failed_host(), recoveries=(r,)), DET) == []
    assert len(decide(snap(failed_host(), recoveries=(r,), now=NOW + 1), DET)) == 1


def test_evacuations_run_in_priority_order_with_bounded_parallelism() -> None:
    done = host_steps(StepStatus.SUCCEEDED, StepStatus.SUCCEEDED, StepStatus.SUCCEEDED)
    evac = [step(10 + i, StepKind.EVACUATE, instance_id=f"i{i}") for i in range(5)]
    r = recovery(*done, *evac)
    actions = decide(snap(failed_host(), recoveries=(r,)), DET)
    assert [a.step.id for a in actions if isinstance(a, RunStep)] == [10, 11]  # limit 2
    running = recovery(*done, replace(evac[0], status=StepStatus.SUCCEEDED), *evac[1:])
    actions = decide(snap(failed_host(), recoveries=(running,), in_flight=frozenset({11})), DET)
    assert [a.step.id for a in actions if isinstance(a, RunStep)] == [12]


def test_recovery_succeeds_when_every_instance_step_is_done() -> None:
    done = host_steps(StepStatus.SUCCEEDED, StepStatus.SUCCEEDED, StepStatus.SUCCEEDED)
    r = recovery(
        *done,
        step(10, StepKind.EVACUATE, StepStatus.SUCCEEDED, instance_id="i"),
        step(11, StepKind.NOTIFY, StepStatus.SUCCEEDED, instance_id="j"),
    )
    (action,) = decide(snap(failed_host(), recoveries=(r,)), DET)
    assert isinstance(action, FinishRecovery) and action.status == RecoveryStatus.SUCCEEDED
    assert "1 instances evacuated, 1 notified" in action.reason


def test_one_failed_instance_fails_the_recovery_after_the_others_finish() -> None:
    done = host_steps(StepStatus.SUCCEEDED, StepStatus.SUCCEEDED, StepStatus.SUCCEEDED)
    bad = step(10, StepKind.EVACUATE, StepStatus.FAILED, instance_id="i", instance_name="db")
    r = recovery(*done, bad, step(11, StepKind.EVACUATE, StepStatus.RUNNING, instance_id="j"))
    assert decide(snap(failed_host(), recoveries=(r,), in_flight=frozenset({11})), DET) == []
    r2 = recovery(*done, bad, step(11, StepKind.EVACUATE, StepStatus.SUCCEEDED, instance_id="j"))
    (action,) = decide(snap(failed_host(), recoveries=(r2,)), DET)
    assert isinstance(action, FinishRecovery) and action.status == RecoveryStatus.FAILED
    assert "db" in action.reason


def test_host_without_instances_recovers_with_nothing_to_move() -> None:
    r = recovery(*host_steps(StepStatus.SUCCEEDED, StepStatus.SUCCEEDED, StepStatus.SUCCEEDED))
    (action,) = decide(snap(failed_host(), recoveries=(r,)), DET)
    assert isinstance(action, FinishRecovery) and action.status == RecoveryStatus.SUCCEEDED


def test_pause_holds_between_steps_and_resume_continues() -> None:
    r = recovery(*host_steps())
    control = Control(paused=True, reason="drill")
    (action,) = decide(snap(failed_host(), recoveries=(r,), control=control), DET)
    assert isinstance(action, PauseRecovery) and "drill" in action.reason
    paused = replace(r, status=RecoveryStatus.PAUSED)
    assert decide(snap(failed_host(), recoveries=(paused,), control=control), DET) == []
    assert decide(snap(failed_host(), recoveries=(paused,)), DET) == [ResumeRecovery(1, "c1")]


def test_paused_segment_holds_its_recoveries() -> None:
    segs = {"s1": Segment("s1", paused=True, pause_reason="storm guard")}
    (action,) = decide(
        snap(failed_host(), recoveries=(recovery(*host_steps()),), segments=segs), DET
    )
    assert isinstance(action, PauseRecovery)


# --- issue 12: reboots, withdrawals, the bound on a recovery ----------------------------


def _beating(name: str, *, boot: str | None, stored: str | None, state: HostState) -> HostView:
    return HostView(Host(name, "s1", state=state, boot_id=stored), 0.1, boot_id=boot)


def test_a_first_boot_id_is_remembered_and_a_new_one_is_a_reboot() -> None:
    first = _beating("c1", boot="b1", stored=None, state=HostState.UP)
    assert decide(snap(first), DET) == [RecordBoot("c1", "b1")]
    same = _beating("c1", boot="b1", stored="b1", state=HostState.UP)
    assert decide(snap(same), DET) == []
    new = _beating("c1", boot="b2", stored="b1", state=HostState.UP)
    [action] = decide(snap(new), DET)
    assert isinstance(action, HostRebooted) and action.boot_id == "b2"


def test_a_reboot_vigil_caused_or_expects_is_only_remembered() -> None:
    # restored after a recovery (NEW -> up at its first beat): the fence rebooted it
    restored = _beating("c1", boot="b2", stored="b1", state=HostState.NEW)
    assert RecordBoot("c1", "b2") in decide(snap(restored), DET)
    # a failed host belongs to its recovery
    failed = _beating("c1", boot="b2", stored="b1", state=HostState.FAILED)
    assert not any(isinstance(a, (RecordBoot, HostRebooted)) for a in decide(snap(failed), DET))


def _paused(*, attempts: int = 0, status: StepStatus = StepStatus.PENDING) -> Recovery:
    steps = (
        Step(1, 9, 1, StepKind.RECORD_INSTANCES, StepStatus.PENDING),
        Step(2, 9, 2, StepKind.FENCE, status, attempts=attempts),
    )
    return Recovery(9, 3, "c1", "s1", RecoveryStatus.PAUSED, NOW - 5, steps=steps)


def test_heartbeats_back_withdraw_a_paused_declaration_that_never_acted() -> None:
    back = view("c1", HostState.FAILED, 0.1)
    actions = decide(snap(back, recoveries=(_paused(),)), DET)
    assert actions == [
        WithdrawDeclaration(9, "c1", "heartbeats returned before anything was fenced or moved")
    ]
    # still silent: it stays held (the segment is paused by the guard)
    silent = view("c1", HostState.FAILED, 30.0)
    held = Segment("s1", paused=True, pause_reason=GUARD_PREFIX + "3 of 4")
    # ... and its instances are read meanwhile (that acts on nothing): their states are
    # those before the failure, not after a reboot during the pause (schedule seed 18)
    recovery = _paused()
    assert decide(snap(silent, recoveries=(recovery,), segments={"s1": held}), DET) == [
        RunStep(9, "c1", recovery.steps[0])
    ]
    read = replace(
        recovery,
        steps=(
            replace(recovery.steps[0], status=StepStatus.SUCCEEDED, attempts=1),
            recovery.steps[1],
        ),
    )
    assert decide(snap(silent, recoveries=(read,), segments={"s1": held}), DET) == []
    assert decide(snap(back, recoveries=(read,)), DET) == [
        WithdrawDeclaration(9, "c1", "heartbeats returned before anything was fenced or moved")
    ]
    # once a step has run, only an operator's resume goes on: never withdrawn
    acted = _paused(attempts=1)
    assert not any(
        isinstance(a, WithdrawDeclaration)
        for a in decide(snap(back, recoveries=(acted,), segments={"s1": held}), DET)
    )


def test_a_guard_pause_lifts_when_the_guard_would_not_pause_an_operator_pause_never() -> None:
    guard = Segment("s1", paused=True, pause_reason=GUARD_PREFIX + "3 of 4 hosts")
    [resume] = decide(snap(*healthy(3), segments={"s1": guard}), DET)
    assert isinstance(resume, ResumeSegment) and resume.segment == "s1"
    operator = Segment("s1", paused=True, pause_reason="rack maintenance")
    assert decide(snap(*healthy(3), segments={"s1": operator}), DET) == []
    still = (*healthy(3), view("c1", HostState.SUSPECT, 1.2))
    assert not any(
        isinstance(a, ResumeSegment) for a in decide(snap(*still, segments={"s1": guard}), DET)
    )


def test_a_real_failure_held_by_the_guard_goes_on_once_the_others_came_back() -> None:
    """Two hosts of two failed at once (fault schedule seed 13): c1 lost its power (its
    fence ran before the guard paused it), c2 was only cut off and came back. Once c2's
    declaration is withdrawn, 1 of 2 failing is within the guard's share: c1's recovery
    must go on, not stay paused for ever."""
    guard = Segment("s1", paused=True, pause_reason=GUARD_PREFIX + "2 of 2 hosts")
    fenced = (
        Step(1, 9, 1, StepKind.FENCE, StepStatus.SUCCEEDED, attempts=1),
        Step(2, 9, 2, StepKind.FORCE_DOWN, StepStatus.PENDING),
    )
    c1 = Recovery(9, 3, "c1", "s1", RecoveryStatus.PAUSED, NOW - 9, NOW - 9, steps=fenced)
    held = (Step(5, 10, 1, StepKind.FENCE, StepStatus.PENDING),)
    c2 = Recovery(10, 4, "c2", "s1", RecoveryStatus.PAUSED, NOW - 8, steps=held)
    dead, back = view("c1", HostState.FAILED, 30.0), view("c2", HostState.FAILED, 0.1)
    # this cycle: c2's declaration is withdrawn; the segment waits for that
    first = decide(snap(dead, back, recoveries=(c1, c2), segments={"s1": guard}), DET)
    assert [type(a) for a in first] == [WithdrawDeclaration]
    # next cycle: c2 is up, the guard would not pause for c1 alone: the segment resumes
    up = view("c2", HostState.UP, 0.1)
    second = decide(snap(dead, up, recoveries=(c1,), segments={"s1": guard}), DET)
    assert [type(a) for a in second] == [ResumeSegment]
    # and then c1's recovery resumes where it stopped
    free = replace(guard, paused=False, pause_reason="")
    assert decide(snap(dead, up, recoveries=(c1,), segments={"s1": free}), DET) == [
        ResumeRecovery(9, "c1")
    ]


def test_a_recovery_running_longer_than_max_duration_ends_failed() -> None:
    steps = (
        Step(1, 9, 1, StepKind.FENCE, StepStatus.SUCCEEDED),
        Step(2, 9, 2, StepKind.FORCE_DOWN, StepStatus.SUCCEEDED),
        Step(3, 9, 3, StepKind.LIST_INSTANCES, StepStatus.SUCCEEDED),
        Step(4, 9, 4, StepKind.EVACUATE, StepStatus.PENDING, instance_id="i", instance_name="db"),
    )
    rec = Recovery(9, 3, "c1", "s1", RecoveryStatus.RUNNING, NOW - 100, NOW - 100, steps=steps)
    assert decide(snap(recoveries=(rec,)), DET, max_duration=100.0) == [RunStep(9, "c1", steps[3])]
    late = snap(recoveries=(rec,), now=NOW + 0.5)
    assert decide(late, DET, max_duration=100.0) == [
        FinishRecovery(
            9, "c1", RecoveryStatus.FAILED, "did not end within 100s; unfinished: evacuate db"
        )
    ]


def test_record_instances_runs_beside_the_fence_and_gates_only_the_planning() -> None:
    steps = (
        Step(1, 9, 1, StepKind.RECORD_INSTANCES, StepStatus.PENDING),
        Step(2, 9, 2, StepKind.FENCE, StepStatus.PENDING),
        Step(3, 9, 3, StepKind.FORCE_DOWN, StepStatus.PENDING),
        Step(4, 9, 4, StepKind.LIST_INSTANCES, StepStatus.PENDING),
    )
    rec = Recovery(9, 3, "c1", "s1", RecoveryStatus.RUNNING, NOW, NOW, steps=steps)
    assert decide(snap(recoveries=(rec,)), DET) == [
        RunStep(9, "c1", steps[0]),
        RunStep(9, "c1", steps[1]),
    ]
    # fenced and forced down, the recording still running: the planning waits for it
    s2 = (
        replace(steps[0], status=StepStatus.RUNNING),
        replace(steps[1], status=StepStatus.SUCCEEDED),
        replace(steps[2], status=StepStatus.SUCCEEDED),
        steps[3],
    )
    assert decide(snap(recoveries=(replace(rec, steps=s2),), in_flight=frozenset({1})), DET) == []
    # a recording that failed for good loses only the states before: planning goes on
    s3 = (replace(s2[0], status=StepStatus.FAILED), *s2[1:])
    assert decide(snap(recoveries=(replace(rec, steps=s3),)), DET) == [RunStep(9, "c1", s3[3])]


def test_a_reboot_recovery_is_never_withdrawn_nor_held_by_the_storm_guard() -> None:
    """Its cause is the heartbeats that came back with a new boot id (fault schedule seed
    187); it fences and moves nothing. An operator's pause still holds it."""
    find = Step(1, 9, 1, StepKind.FIND_STOPPED, StepStatus.PENDING)
    paused = Recovery(9, 3, "c1", "s1", RecoveryStatus.PAUSED, NOW - 1, steps=(find,))
    guard = Segment("s1", paused=True, pause_reason=GUARD_PREFIX + "4 of 5 hosts")
    back = view("c1", HostState.UP, 0.1)
    other = view("c2", HostState.SUSPECT, 1.2, power=PowerState.ON, power_read_age=0.1)
    assert decide(snap(back, other, recoveries=(paused,), segments={"s1": guard}), DET) == [
        ResumeRecovery(9, "c1")
    ]
    running = replace(paused, status=RecoveryStatus.RUNNING)
    assert decide(snap(back, other, recoveries=(running,), segments={"s1": guard}), DET) == [
        RunStep(9, "c1", find)
    ]
    operator = Control(paused=True, reason="maintenance")
    actions = decide(snap(back, recoveries=(running,), control=operator), DET)
    assert [type(a) for a in actions] == [PauseRecovery]
