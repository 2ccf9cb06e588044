"""Reports from other monitors (Masakari's COMPUTE_HOST notifications) in the decision:
one corroborating signal, never enough alone to declare a host failed."""

from __future__ import annotations

# tests/engine is no package: pytest puts it on the path, and the helpers are shared.
from test_decide import DET, healthy, snap, view

from vigil.drivers.fencing import PowerState
from vigil.engine.decide import (
    ClearReport,
    DeclareFailure,
    DownReport,
    ForgetReport,
    MarkSuspect,
    ProbePower,
    decide,
)
from vigil.model import HostState

REPORT = DownReport("masakari", "COMPUTE_HOST STOPPED", 0.1)


def test_report_makes_a_host_without_an_agent_suspect() -> None:
    # No vigil agent: the host never heartbeats and is not monitored by silence.
    assert decide(snap(view("c1", HostState.NEW, None)), DET) == []
    assert decide(snap(view("c1", HostState.NEW, None, report=REPORT)), DET) == [
        MarkSuspect("c1", "masakari: COMPUTE_HOST STOPPED")
    ]


def test_report_about_a_beating_host_is_ignored() -> None:
    assert decide(snap(view("c1", HostState.NEW, 0.1, report=REPORT)), DET)[0].reason == (
        "first heartbeat received"
    )
    assert decide(snap(view("c1", HostState.UP, 0.3, report=REPORT)), DET) == []


def test_report_alone_never_declares_a_failure() -> None:
    hosts = healthy(3)
    on = {"power": PowerState.ON, "power_read_age": 0.1}
    # Never heard and the BMC reads on (or cannot be read): however long, only probes.
    for uptime in (2.0, 60.0, 3600.0):
        actions = decide(
            snap(view("c1", HostState.SUSPECT, None, report=REPORT, **on), *hosts, uptime=uptime),
            DET,
        )
        assert actions == []
    assert decide(
        snap(view("c1", HostState.SUSPECT, None, report=REPORT), *hosts, uptime=60.0), DET
    ) == [ProbePower("c1")]


def test_report_and_bmc_power_off_declare() -> None:
    off = {"power": PowerState.OFF, "power_read_age": 0.0}
    (action,) = decide(
        snap(view("c1", HostState.SUSPECT, None, report=REPORT, **off), *healthy(3)), DET
    )
    assert action == DeclareFailure(
        "c1", "masakari: COMPUTE_HOST STOPPED; the BMC reads power off", ("masakari", "bmc")
    )


def test_report_joins_the_sources_of_a_heard_host() -> None:
    on = {"power": PowerState.ON, "power_read_age": 0.1}
    (action,) = decide(
        snap(view("c1", HostState.SUSPECT, 1.8, report=REPORT, **on), *healthy(3)), DET
    )
    assert isinstance(action, DeclareFailure)
    assert action.sources == ("heartbeat", "masakari")
    assert action.reason.startswith("masakari: COMPUTE_HOST STOPPED; no heartbeat for 1.80s")


def test_reported_host_still_meets_the_storm_guard() -> None:
    off = {"power": PowerState.OFF, "power_read_age": 0.0}
    dead = [view(f"c{i}", HostState.SUSPECT, None, report=REPORT, **off) for i in range(3)]
    actions = decide(snap(*dead, *healthy(1)), DET)
    declared = [a for a in actions if isinstance(a, DeclareFailure)]
    assert declared and all(a.paused_reason for a in declared)


def test_withdrawn_report_leaves_a_never_heard_host_alone() -> None:
    withdrawn = DownReport("masakari", "COMPUTE_HOST STOPPED", 5.0, withdrawn=True)
    off = {"power": PowerState.OFF, "power_read_age": 0.0}
    for v in (
        view("c1", HostState.SUSPECT, None, report=withdrawn),
        view("c1", HostState.SUSPECT, None, report=withdrawn, **off),
        view("c1", HostState.NEW, None, report=withdrawn),
    ):
        assert decide(snap(v, *healthy(3), uptime=600.0), DET) == []
    # A host vigil hears is judged by its heartbeats as ever.
    (action,) = decide(snap(view("c1", HostState.SUSPECT, 2.0, report=withdrawn), *healthy(3)), DET)
    assert isinstance(action, DeclareFailure) and action.sources == ("heartbeat",)


# --- a report always ends (issue 13): within failed_after, with a reason ------------------

OLD = DownReport("masakari", "COMPUTE_HOST STOPPED", 1.8)  # older than failed_after (1.75)


def test_an_uncorroborated_report_is_closed_with_its_reason() -> None:
    on = {"power": PowerState.ON, "power_read_age": 0.1}
    (action,) = decide(
        snap(view("c1", HostState.SUSPECT, None, report=OLD, **on), *healthy(3)), DET
    )
    assert action == ClearReport(
        "c1",
        "masakari: COMPUTE_HOST STOPPED; not corroborated: the BMC reads power on and no "
        "vigil agent heartbeats from the host: not fenced, nothing moved",
    )


def test_a_report_about_a_host_vigil_cannot_read_is_declared_for_the_fence_to_decide() -> None:
    unknown = {"power": PowerState.UNKNOWN, "power_read_age": 0.1}
    young = view("c1", HostState.SUSPECT, None, report=REPORT, **unknown)
    assert decide(snap(young, *healthy(3)), DET) == []  # still within failed_after
    (action,) = decide(
        snap(view("c1", HostState.SUSPECT, None, report=OLD, **unknown), *healthy(3)), DET
    )
    assert action == DeclareFailure(
        "c1",
        "masakari: COMPUTE_HOST STOPPED; no vigil agent heartbeats from the host and its BMC "
        "cannot be read: the fence decides",
        ("masakari",),
    )
    # not before the BMC was read at least once
    unread = view("c1", HostState.SUSPECT, None, report=OLD)
    assert decide(snap(unread, *healthy(3)), DET) == [ProbePower("c1")]


def test_a_report_is_forgotten_once_it_served_or_heartbeats_contradict_it() -> None:
    late = DownReport("masakari", "COMPUTE_HOST STOPPED", DET.failed_after + 1.0)
    for state in (HostState.FAILED, HostState.RECOVERED):
        assert ForgetReport("c1", 0.1) in decide(snap(view("c1", state, None, report=REPORT)), DET)
    # Kept while it may still count: the host is up and the report is recent.
    assert decide(snap(view("c1", HostState.UP, 0.3, report=REPORT)), DET) == []
    # Heartbeats went on long after it: dropped — and a silence is still caught at once.
    assert decide(snap(view("c1", HostState.UP, 0.3, report=late)), DET) == [
        ForgetReport("c1", late.age)
    ]
    silent = decide(snap(view("c1", HostState.UP, 5.0, report=late), *healthy(3)), DET)
    assert silent[0] == ForgetReport("c1", late.age)
    assert isinstance(silent[1], MarkSuspect)
