"""Application checks and the recovery ladder: the declarations, the judging of a
check's results and the ladder's decisions, as pure functions on explicit times."""

from __future__ import annotations

import pytest

from vigil.engine.app_health import (
    Act,
    Episode,
    EscalateApp,
    Mode,
    Resolved,
    Tell,
    Wait,
    decide_ladder,
)
from vigil.wire.app_checks import (
    CheckSpec,
    CheckState,
    CheckType,
    Health,
    InstanceContext,
    LadderSpec,
    Rung,
    SpecError,
    declaration_from,
    judge,
    next_run_at,
    parse_check,
)


def test_checks_and_the_ladder_are_read_with_the_policy_precedence() -> None:
    metadata = {
        "vigil:check:web": "type=http port=8080 path=/healthz interval=10 timeout=2",
        "vigil:app_recovery": "restart-command='systemctl restart web' restarts=1 reboots=1",
    }
    image = {
        "vigil:check:web": "type=tcp port=80",  # the instance's own declaration wins
        "vigil:check:db": "type=exec command='pg_isready -q -t 1' grace=120",
    }
    flavor = {"vigil:check:agent": "type=guest-agent", "hw:watchdog_action": "reset"}
    declared = declaration_from(metadata, image, flavor)
    assert [(c.name, c.type) for c in declared.checks] == [
        ("agent", CheckType.GUEST_AGENT),
        ("db", CheckType.EXEC),
        ("web", CheckType.HTTP),
    ]
    web = declared.checks[2]
    assert (web.port, web.path, web.interval, web.timeout, web.threshold) == (
        8080,
        "/healthz",
        10.0,
        2.0,
        3,
    )
    assert declared.checks[1].command == ("pg_isready", "-q", "-t", "1")
    assert declared.ladder.restart_command == ("systemctl", "restart", "web")
    assert declared.ladder.rungs() == [Rung.RESTART_APP, Rung.SOFT_REBOOT]
    assert declaration_from({}, {}, {}).checks == ()


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("vigil:check:web", "port=80", "vigil:check:web.type"),
        ("vigil:check:web", "type=smtp", "vigil:check:web.type"),
        ("vigil:check:web", "type=http", "vigil:check:web.port"),
        ("vigil:check:web", "type=http port=99999", "vigil:check:web.port"),
        ("vigil:check:web", "type=http port=80 path=healthz", "vigil:check:web.path"),
        ("vigil:check:web", "type=tcp port=80 command=ls", "vigil:check:web.command"),
        ("vigil:check:web", "type=tcp port=80 interval=ten", "vigil:check:web.interval"),
        ("vigil:check:web", "type=tcp port=80 interval=5 timeout=5", "vigil:check:web.timeout"),
        ("vigil:check:web", "type=tcp port=80 port=81", "vigil:check:web.port"),
        ("vigil:check:db", "type=exec", "vigil:check:db.command"),
        ("vigil:check:db", "type=exec command='unclosed", "vigil:check:db"),
        ("vigil:check:a b", "type=guest-agent", "vigil:check:a b"),
        ("vigil:check:x", "type=guest-agent readiness=maybe", "vigil:check:x.readiness"),
        ("vigil:app_recovery", "reboots=-1", "vigil:app_recovery.reboots"),
        ("vigil:app_recovery", "migrate=yes", "vigil:app_recovery.migrate"),
    ],
)
def test_a_faulty_declaration_is_refused_naming_its_field(key: str, value: str, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        declaration_from({key: value})
    assert caught.value.field == field


def test_too_many_checks_are_refused() -> None:
    many = {f"vigil:check:c{i}": "type=guest-agent" for i in range(9)}
    with pytest.raises(SpecError, match="at most 8"):
        declaration_from(many)


# --- judging ------------------------------------------------------------------------------

WEB = parse_check("vigil:check:web", "type=http port=80 interval=10 timeout=2 threshold=3 grace=60")
BOOTED = InstanceContext(started_at=0.0)


def run(state: CheckState, ok: bool, at: float, context: InstanceContext = BOOTED) -> CheckState:
    return judge(
        WEB, state, ok=ok, at=at, detail="ok" if ok else "connection refused", context=context
    )


def test_a_check_fails_after_threshold_consecutive_failures_and_recovers_on_one_success() -> None:
    state = run(CheckState(), True, 100.0)
    assert state.health == Health.HEALTHY
    for n, at in enumerate((110.0, 120.0), start=1):
        state = run(state, False, at)
        assert (state.health, state.failures) == (Health.HEALTHY, n)  # not yet
    state = run(state, False, 130.0)
    assert (state.health, state.failures) == (Health.FAILING, 3)
    assert state.detail == "connection refused"
    # Declared within interval x (threshold - 1) + timeout of the first failed run.
    assert WEB.declares_failure_after >= 130.0 - 110.0
    state = run(state, True, 140.0)
    assert (state.health, state.failures) == (Health.HEALTHY, 0)


def test_a_success_between_failures_starts_the_count_again() -> None:
    state = run(run(run(CheckState(), False, 100.0), False, 110.0), True, 120.0)
    state = run(run(state, False, 130.0), False, 140.0)
    assert (state.health, state.failures) == (Health.HEALTHY, 2)


def test_failures_within_the_grace_after_a_boot_do_not_count() -> None:
    rebooted = InstanceContext(started_at=1000.0)
    state = CheckState(Health.FAILING, 3)
    for at in (1010.0, 1020.0, 1030.0, 1040.0, 1050.0):
        state = run(state, False, at, rebooted)
        assert (state.health, state.failures) == (Health.UNKNOWN, 0)
    for at in (1060.0, 1070.0):
        state = run(state, False, at, rebooted)
    assert state.health == Health.UNKNOWN and state.failures == 2
    assert run(state, False, 1080.0, rebooted).health == Health.FAILING


def test_a_paused_or_migrating_instance_is_suspended_not_failing() -> None:
    state = run(run(CheckState(), False, 100.0), False, 110.0)
    paused = InstanceContext(started_at=0.0, suspended="paused")
    state = run(state, False, 120.0, paused)
    assert (state.health, state.failures, state.detail) == (Health.SUSPENDED, 0, "paused")
    state = run(state, False, 130.0)
    assert (state.health, state.failures) == (Health.UNKNOWN, 1)  # counted from scratch


def test_a_check_runs_at_once_then_every_interval() -> None:
    assert next_run_at(WEB, CheckState(), 50.0) == 50.0
    assert next_run_at(WEB, CheckState(last_run_at=50.0), 55.0) == 60.0


# --- the ladder ---------------------------------------------------------------------------

LADDER = LadderSpec(restart_command=("svc", "restart"), restarts=2, reboots=2, settle=60.0)


def climb(ladder: LadderSpec, start: float = 0.0) -> list[tuple[float, object]]:
    """Follow the ladder's decisions for an application that never comes back."""
    episode, now, seen = Episode(opened_at=start), start, []
    for _ in range(50):
        decision = decide_ladder(Mode.KEEP_RUNNING, ladder, episode, ["web"], now)
        seen.append((now, decision))
        if isinstance(decision, Act):
            episode = Episode(start, decision.attempt, now)
        elif isinstance(decision, Wait):
            now = decision.until
        else:
            break
    return seen


def test_the_ladder_climbs_rung_by_rung_with_settle_and_backoff_then_escalates() -> None:
    acts = [(t, d.rung) for t, d in climb(LADDER) if isinstance(d, Act)]
    assert acts == [
        (0.0, Rung.RESTART_APP),
        (60.0, Rung.RESTART_APP),  # settle; no backoff before the second attempt
        (130.0, Rung.SOFT_REBOOT),  # settle + 10 s
        (210.0, Rung.HARD_REBOOT),  # settle + 20 s
    ]
    final_at, final = climb(LADDER)[-1]
    assert isinstance(final, EscalateApp) and final_at == 210.0 + 60.0 + 40.0
    assert "2 restart-app, 1 soft-reboot, 1 hard-reboot" in final.reason


def test_without_a_restart_command_the_ladder_starts_with_a_reboot_and_may_rebuild() -> None:
    ladder = LadderSpec(reboots=1, rebuild=True)
    assert [d.rung for _, d in climb(ladder) if isinstance(d, Act)] == [
        Rung.SOFT_REBOOT,
        Rung.REBUILD,
    ]
    nothing = climb(LadderSpec(reboots=0))
    assert len(nothing) == 1 and isinstance(nothing[0][1], EscalateApp)


def test_an_escalated_episode_gets_no_more_action_and_passing_checks_resolve_it() -> None:
    escalated = Episode(opened_at=0.0, attempts=4, last_action_at=10.0, escalated=True)
    assert isinstance(decide_ladder(Mode.KEEP_RUNNING, LADDER, escalated, ["web"], 1e9), Wait)
    assert isinstance(decide_ladder(Mode.KEEP_RUNNING, LADDER, escalated, [], 1e9), Resolved)


def test_notify_tells_and_never_acts() -> None:
    decision = decide_ladder(Mode.NOTIFY, LADDER, Episode(0.0), ["web", "db"], 5.0)
    assert decision == Tell("failing: web, db")


def test_a_readiness_check_is_declared_as_such() -> None:
    ready = parse_check("vigil:check:ready", "type=http port=8080 path=/ready readiness=true")
    assert ready.readiness and isinstance(ready, CheckSpec)
