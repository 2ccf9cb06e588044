"""The fault-schedule generator and the ground-truth checker, on plain data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from vigil.drivers.compute import POLICY_KEY
from vigil.sim.cloud import EvacuationRecord, HostCondition, PowerOffRecord, SimInstance
from vigil.sim.schedules import (
    CLOUD_ACTIONS,
    ETCD_ACTIONS,
    HOST_ACTIONS,
    SERVER_ACTIONS,
    Fault,
    HostSpec,
    InstanceSpec,
    Observation,
    Schedule,
    Timing,
    check,
    fencing_possible,
    generate,
)

T = Timing()


def healthy(since: float = 0.0) -> HostCondition:
    return HostCondition(True, False, False, True, False, since, None)


def off(down_since: float) -> HostCondition:
    return HostCondition(False, False, False, False, False, None, down_since)


def isolated(down_since: float) -> HostCondition:
    return HostCondition(True, False, True, True, False, None, down_since)


def schedule(fencing: tuple[str, ...] = ("sim",), faults: Sequence[Fault] = ()) -> Schedule:
    hosts = tuple(HostSpec(f"h{i}", "seg-a", fencing) for i in (1, 2, 3))
    instances = (
        InstanceSpec("vm-1", "h1", "keep-running", 0),
        InstanceSpec("vm-2", "h1", "notify", 0),
    )
    return Schedule(1, "bmc", hosts, instances, (*faults, Fault(9.0, "heal")))


def inst(
    name: str, host: str, status: str = "ACTIVE", running: Sequence[str] = (), policy: str = ""
) -> SimInstance:
    return SimInstance(
        id=f"id-{name}",
        name=name,
        host=host,
        status=status,
        task_state=None,
        metadata={POLICY_KEY: policy or "keep-running"},
        server_group=None,
        fault=None,
        running_on=frozenset(running),
    )


def observe(
    *,
    instances: Sequence[SimInstance] = (),
    double: Sequence[str] = (),
    power_offs: Sequence[PowerOffRecord] = (),
    evacuations: Sequence[EvacuationRecord] = (),
    spans: Mapping[str, Sequence[tuple[float, float | None]]] | None = None,
    recoveries: Sequence[Mapping[str, Any]] = (),
    server_down: Sequence[tuple[float, float | None]] = (),
    losses: Mapping[str, Sequence[float]] | None = None,
) -> Observation:
    return Observation(
        t0=100.0,
        heal_at=110.0,
        instances=instances or [inst("vm-1", "h2", running=["h2"])],
        double_running=double,
        power_offs=power_offs,
        evacuations=evacuations,
        faulty_spans=spans or {},
        recoveries=recoveries,
        server_down=server_down,
        power_losses=losses or {},
    )


# ------------------------------------------------------------------------- generator


def test_a_seed_always_gives_the_same_schedule() -> None:
    assert generate(42) == generate(42)
    assert generate(42) != generate(43)


@pytest.mark.parametrize("seed", range(200))
def test_generated_schedules_stay_in_bounds(seed: int) -> None:
    s = generate(seed)
    assert 3 <= len(s.hosts) <= 8
    assert 1 <= len(s.segments) <= 2
    per_host = {h.name: 0 for h in s.hosts}
    for i in s.instances:
        per_host[i.host] += 1
    assert all(3 <= n <= 5 for n in per_host.values())
    assert [f.at for f in s.faults] == sorted(f.at for f in s.faults)
    assert s.faults[-1].action == "heal" and s.heal_at == s.faults[-1].at
    for f in s.faults:
        assert f.action in HOST_ACTIONS | CLOUD_ACTIONS
        assert (f.host is not None) == (f.action in HOST_ACTIONS)
    assert s.fencing_mode in ("bmc", "self", "both")


def test_generated_schedules_cover_every_kind_of_fault() -> None:
    actions = {f.action for seed in range(300) for f in generate(seed).faults}
    assert actions == HOST_ACTIONS | CLOUD_ACTIONS
    modes = {generate(seed).fencing_mode for seed in range(50)}
    assert modes == {"bmc", "self", "both"}


def test_with_several_servers_the_same_world_and_host_faults_and_server_faults_on_top() -> None:
    seen: set[str] = set()
    majority_lost = 0
    theirs_actions = SERVER_ACTIONS | ETCD_ACTIONS
    for seed in range(100):
        one, three = generate(seed), generate(seed, servers=3)
        assert three.servers == 3 and three.describe()[0].endswith(", 3 servers")
        assert (three.hosts, three.instances) == (one.hosts, one.instances)
        ours = [f for f in three.faults if f.action not in theirs_actions]
        assert ours[:-1] == [f for f in one.faults[:-1] if f.action not in theirs_actions]
        theirs = [f for f in three.faults if f.action in theirs_actions]
        starts = ("server-kill", "server-stop", "server-cut", "etcd-kill")
        assert 1 <= sum(f.action in starts for f in theirs) <= 6
        servers = {f.host for f in theirs if f.action in SERVER_ACTIONS}
        assert servers <= {"vigil-0", "vigil-1", "vigil-2"}
        members = {f.host for f in theirs if f.action in ETCD_ACTIONS}
        assert members <= {"etcd-0", "etcd-1", "etcd-2"}
        for f in theirs:  # every stopped server is continued, every killed member started
            ends = {"server-stop": "server-cont", "etcd-kill": "etcd-start"}
            if f.action in ends:
                assert any(g.action == ends[f.action] and g.host == f.host for g in theirs)
        down: set[str] = set()
        for f in theirs:  # (in time order)
            if f.action in ETCD_ACTIONS:
                (down.add if f.action == "etcd-kill" else down.discard)(str(f.host))
                majority_lost += len(down) >= 2
        assert [f.at for f in three.faults] == sorted(f.at for f in three.faults)
        seen |= {f.action for f in theirs}
    assert seen == theirs_actions
    assert majority_lost >= 3  # etcd's majority lost in some schedules


def test_blips_are_shorter_than_detection() -> None:
    for seed in range(300):
        s = generate(seed)
        for a, b in zip(s.faults, s.faults[1:], strict=False):
            pair = (a.action, b.action, a.host) == ("power-loss", "power-restore", b.host)
            if pair and b.at - a.at < 0.5:  # longer ones are power-loss episodes (>= 0.5 s)
                assert b.at - a.at <= 0.5 * T.declare_min + 1e-9


def test_describe_names_the_seed_and_each_fault() -> None:
    lines = generate(7).describe()
    assert lines[0].startswith("seed 7: ")
    assert lines[-1].endswith("heal")
    assert Fault(1.5, "network", None, 0.05, 0.02).describe() == (
        "t+1.50 network loss=0.050 jitter=0.020s"
    )


def test_timing_overrides_are_valid_vigil_settings() -> None:
    from vigil import config

    conf = config.load([], config_files=[])
    items = [f"{g}.{k}={v}" for g, opts in T.overrides().items() for k, v in opts.items()]
    config.apply_overrides(
        conf, [*items, "api.auth_token=x", "agent.key=y", "database.connection=sqlite://"]
    )
    settings = config.settings_from_conf(conf)
    assert settings.detection.failed_after == T.failed_after


# --------------------------------------------------------------------------- checker


def test_a_clean_run_has_no_violation() -> None:
    assert check(schedule(), T, observe()).violations == []


def test_double_running_is_a_violation() -> None:
    v = check(schedule(), T, observe(double=["id-vm-1"])).violations
    assert [x.kind for x in v] == ["double-running"]
    assert "vm-1" in v[0].detail


def test_fencing_a_host_that_was_never_faulty_is_a_violation() -> None:
    po = PowerOffRecord(105.0, "h2", "bmc", True, healthy(100.0))
    v = check(schedule(), T, observe(power_offs=[po])).violations
    assert [(x.kind, x.host) for x in v] == [("healthy-fenced", "h2")]


def test_a_watchdog_reset_while_the_server_was_down_says_so() -> None:
    po = PowerOffRecord(105.0, "h2", "watchdog", True, healthy(100.0))
    v = check(schedule(), T, observe(power_offs=[po], server_down=[(104.0, 106.0)])).violations
    assert v[0].kind == "healthy-fenced" and "vigil-server was down" in v[0].detail


def test_a_reset_without_a_quorum_while_the_server_was_down_is_no_violation() -> None:
    """vigil down and h1 off as well: h2 and h3 reach 2 of 3 — a majority — so a reset of
    h2 breaks the promise; with h3 off too, h2 alone cannot tell, and resets by design."""
    po = PowerOffRecord(105.0, "h2", "watchdog", True, healthy(100.0))
    down = [(104.0, 106.0)]
    one_off = {"h1": [(103.0, None)]}
    v = check(schedule(), T, observe(power_offs=[po], server_down=down, spans=one_off))
    assert [x.kind for x in v.violations] == ["healthy-fenced"]
    two_off = {"h1": [(103.0, None)], "h3": [(103.5, None)]}
    v = check(schedule(), T, observe(power_offs=[po], server_down=down, spans=two_off))
    assert v.violations == []
    assert v.resets_without_quorum == [
        "h2: watchdog reset at t+5.00 with vigil-server down and only 1 of 3 hosts of its "
        "segment able to vouch (h2)"
    ]
    # a host cut from the server only still vouches: that reset is a violation again
    cut = schedule(faults=[Fault(3.5, "cut", "h3")])
    v = check(cut, T, observe(power_offs=[po], server_down=down, spans=two_off))
    assert [x.kind for x in v.violations] == ["healthy-fenced"]
    # ... unless it lost its power since (fenced, say): then it cannot
    fenced = observe(power_offs=[po], server_down=down, spans=two_off, losses={"h3": [104.5]})
    v = check(cut, T, fenced)
    assert v.violations == [] and len(v.resets_without_quorum) == 1


def test_fencing_a_faulty_or_returned_host_is_not_a_violation() -> None:
    po_faulty = PowerOffRecord(105.0, "h1", "bmc", True, isolated(103.0))
    po_back = PowerOffRecord(107.0, "h2", "bmc", True, healthy(106.0))
    po_lie = PowerOffRecord(107.0, "h3", "bmc", False, healthy(100.0))
    spans = {"h2": [(103.0, 106.0)]}  # isolated for 3 s: vigil rightly declared it
    verdict = check(schedule(), T, observe(power_offs=[po_faulty, po_back, po_lie], spans=spans))
    assert verdict.violations == []
    assert len(verdict.fenced_after_return) == 1


def test_a_blip_shorter_than_detection_does_not_excuse_a_fence() -> None:
    po = PowerOffRecord(107.0, "h2", "bmc", True, healthy(103.1))
    spans = {"h2": [(103.0, 103.1)]}
    v = check(schedule(), T, observe(power_offs=[po], spans=spans)).violations
    assert [x.kind for x in v] == ["healthy-fenced"]


def test_a_keep_running_instance_running_nowhere_is_stranded() -> None:
    obs = observe(instances=[inst("vm-1", "h2", "SHUTOFF"), inst("vm-2", "h1", policy="notify")])
    v = check(schedule(), T, obs).violations
    assert [(x.kind, x.instance) for x in v] == [("stranded", "vm-1")]
    assert "placed on h1" in v[0].detail and "SHUTOFF on h2" in v[0].detail


def test_stranded_with_reason_is_excused_only_when_fencing_was_impossible() -> None:
    rec = {"id": 1, "host": "h1", "status": "failed", "reason": "fence failed", "steps": []}
    obs = observe(instances=[inst("vm-1", "h1", "SHUTOFF")], recoveries=[rec])
    bmc_down = [Fault(2.0, "bmc-down", "h1")]
    impossible = check(schedule(faults=bmc_down), T, obs)
    assert impossible.violations == [] and len(impossible.stranded_with_reason) == 1
    possible = check(schedule(), T, obs).violations
    assert [x.kind for x in possible] == ["stranded"]
    assert "fencing was possible" in possible[0].detail


def test_stranded_with_every_other_host_of_its_segment_down_at_the_end_is_excused() -> None:
    """Fault schedule seed 240: every host of the segment lost power or was cut off and
    fenced; the recovery failed with no destination. Nowhere to run it, whoever recovers
    -- but one other host up at the end makes it a violation again."""
    rec = {"id": 1, "host": "h1", "status": "failed", "reason": "no destination", "steps": []}
    obs = observe(instances=[inst("vm-1", "h1", "ERROR")], recoveries=[rec])
    all_down = {"h1": [(103.0, None)], "h2": [(104.0, None)], "h3": [(101.0, 102.0), (105.0, None)]}
    nowhere = check(schedule(), T, replace(obs, faulty_spans=all_down))
    assert nowhere.violations == []
    assert "no other host of segment seg-a up at the end" in nowhere.stranded_with_reason[0]
    one_back = {**all_down, "h3": [(101.0, 102.0)]}
    v = check(schedule(), T, replace(obs, faulty_spans=one_back)).violations
    assert [x.kind for x in v] == ["stranded"]
    # h3 came back only after vigil fenced it: out of service until an operator restores it
    h3 = {"id": 2, "host": "h3", "status": "succeeded", "reason": "host fenced", "steps": []}
    h3["steps"] = [{"kind": "fence", "status": "succeeded"}]
    fenced = replace(obs, faulty_spans=one_back, recoveries=[rec, h3])
    assert check(schedule(), T, fenced).violations == []


def test_fencing_possible() -> None:
    assert fencing_possible(schedule(), "h1")
    assert not fencing_possible(schedule(faults=[Fault(1.0, "bmc-lies", "h1")]), "h1")
    assert fencing_possible(schedule(faults=[Fault(1.0, "bmc-lies", "h1")]), "h2")
    assert fencing_possible(
        schedule(("sim", "self-fence"), faults=[Fault(1.0, "bmc-down", "h1")]), "h1"
    )


@pytest.mark.parametrize("status", ["pending", "running", "paused"])
def test_a_recovery_not_ended_is_a_violation(status: str) -> None:
    rec = {
        "id": 3,
        "host": "h1",
        "status": status,
        "reason": "x",
        "steps": [{"kind": "evacuate", "instance_name": "vm-1", "status": "running"}],
    }
    v = check(schedule(), T, observe(recoveries=[rec])).violations
    assert [x.kind for x in v] == ["endless-recovery"]
    assert "evacuate vm-1=running" in v[0].detail


def test_an_evacuation_to_a_host_long_down_is_a_violation() -> None:
    long_down = EvacuationRecord(108.0, "id-vm-1", "h1", "h2", False, False, off(104.0))
    fresh = EvacuationRecord(108.0, "id-vm-1", "h1", "h3", False, False, off(107.9))
    fine = EvacuationRecord(108.0, "id-vm-2", "h1", "h3", True, False, healthy())
    nowhere = EvacuationRecord(108.0, "id-vm-3", "h1", None, False, False, None)
    verdict = check(schedule(), T, observe(evacuations=[long_down, fresh, fine, nowhere]))
    assert [(x.kind, x.host) for x in verdict.violations] == [("evacuation-to-down-host", "h2")]
    assert "Nova chose" in verdict.violations[0].detail
    assert len(verdict.evacuations_to_fresh_dead) == 1


def _fenced(done: float) -> dict[str, Any]:
    step = {"kind": "fence", "status": "succeeded", "finished_at": done, "detail": "self"}
    return {"id": 1, "host": "h1", "status": "succeeded", "created_at": 1005.0, "steps": [step]}


def test_a_fence_confirmed_while_the_host_never_lost_power_is_a_violation() -> None:
    base = observe(recoveries=[_fenced(1007.0)])
    obs = Observation(**{**base.__dict__, "t0_wall": 1000.0, "power_losses": {}})
    v = check(schedule(), T, obs).violations
    assert [(x.kind, x.host) for x in v] == [("fence-confirmed-while-running", "h1")]
    assert "succeeded at t+7.00" in v[0].detail


def test_a_fence_after_a_reset_or_power_loss_is_fine() -> None:
    base = observe(recoveries=[_fenced(1007.0)])
    for losses in ([106.5], [104.0], [107.1]):  # a reset, the failure itself, just after
        obs = Observation(**{**base.__dict__, "t0_wall": 1000.0, "power_losses": {"h1": losses}})
        assert check(schedule(), T, obs).violations == []


@pytest.mark.parametrize("status", ["succeeded", "failed", "withdrawn"])
def test_ended_recoveries_are_not_endless(status: str) -> None:
    rec = {"id": 3, "host": "h1", "status": status, "reason": "x", "steps": []}
    assert check(schedule(), T, observe(recoveries=[rec])).violations == []


# ------------------------------------------------------------------ nothing done twice


def test_a_host_powered_off_twice_with_no_power_restored_between_is_a_violation() -> None:
    first = PowerOffRecord(104.0, "h1", "bmc", True, isolated(103.0))
    again = PowerOffRecord(106.0, "h1", "bmc", False, off(104.0))
    verdict = check(schedule(), T, observe(power_offs=[first, again]))
    assert [(x.kind, x.host) for x in verdict.violations] == [("fenced-twice", "h1")]
    assert "t+4.00 and asked again at t+6.00" in verdict.violations[0].detail


def test_a_second_power_off_after_an_ineffective_one_or_a_restore_is_fine() -> None:
    lied = PowerOffRecord(104.0, "h1", "bmc", False, isolated(103.0))
    then = PowerOffRecord(106.0, "h1", "bmc", True, isolated(103.0))
    assert check(schedule(), T, observe(power_offs=[lied, then])).violations == []
    restored = schedule(faults=[Fault(5.0, "power-restore", "h1")])  # at 105.0
    again = PowerOffRecord(107.0, "h1", "bmc", True, isolated(106.0))
    offs = [PowerOffRecord(104.0, "h1", "bmc", True, isolated(103.0)), again]
    assert check(restored, T, observe(power_offs=offs)).violations == []
