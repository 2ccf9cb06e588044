"""SimCloud's Nova rules and fault semantics, on a fake clock."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable

import pytest

from vigil.clock import FakeClock
from vigil.drivers.compute import (
    ACTIVE,
    ERROR,
    MASAKARI_KEY,
    POLICY_KEY,
    PRIORITY_KEY,
    REBUILD,
    SHUTOFF,
    ha_policy_from_metadata,
)
from vigil.drivers.errors import Conflict, NotFound, PermanentError, TemporaryError
from vigil.drivers.fencing import PowerState
from vigil.model import HaPolicy
from vigil.sim.cloud import SimCloud, SimLatency

HOSTS = ("h1", "h2", "h3")


def lat(**delays: float) -> SimLatency:
    """Zero latency except for ``delays``: each test shows only the delay it is about."""
    return dataclasses.replace(SimLatency.zero(), **delays)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cloud(clock: FakeClock) -> SimCloud:
    c = SimCloud(clock, latency=SimLatency.zero())
    for h in HOSTS:
        c.add_host(h)
    return c


def fence(cloud: SimCloud, host: str) -> None:
    """What vigil does before evacuating: power off through the BMC, force down."""
    cloud.bmc_power_off(host)
    assert cloud.bmc_power_status(host) == PowerState.OFF
    cloud.set_forced_down(host, True)


# ------------------------------------------------------------------ Nova's service view


def test_service_stays_up_for_service_down_time_after_power_loss(
    cloud: SimCloud, clock: FakeClock
) -> None:
    cloud.power_loss("h1")
    assert cloud.get_service("h1").up, "Nova has not noticed yet"
    clock.advance(60.0)
    assert cloud.get_service("h1").up
    clock.advance(0.1)
    service = cloud.get_service("h1")
    assert not service.up and not service.forced_down


def test_service_down_time_is_configurable(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=SimLatency.zero(), service_down_time=20.0)
    cloud.add_host("h1")
    cloud.isolate("h1")
    clock.advance(19.0)
    assert cloud.get_service("h1").up
    clock.advance(2.0)
    assert not cloud.get_service("h1").up
    cloud.reconnect("h1")
    assert cloud.get_service("h1").up, "the next report brings it back"


@pytest.mark.parametrize("fault", ["power_loss", "isolate", "hang"])
def test_faults_that_silence_nova_compute(cloud: SimCloud, clock: FakeClock, fault: str) -> None:
    getattr(cloud, fault)("h1")
    assert not cloud.host_can_heartbeat("h1")
    clock.advance(61.0)
    assert not cloud.get_service("h1").up
    assert cloud.get_service("h2").up


def test_agent_crash_leaves_host_and_nova_compute_running(
    cloud: SimCloud, clock: FakeClock
) -> None:
    sid = cloud.add_instance("vm", "h1")
    cloud.agent_crash("h1")
    assert not cloud.host_can_heartbeat("h1")
    clock.advance(120.0)
    assert cloud.get_service("h1").up
    assert cloud.instance(sid).running_on == {"h1"}
    cloud.agent_restart("h1")
    assert cloud.host_can_heartbeat("h1")


def test_force_down_is_immediate_and_survives_a_restart(cloud: SimCloud) -> None:
    cloud.power_loss("h1")
    cloud.set_forced_down("h1", True)
    assert not cloud.get_service("h1").up
    cloud.power_restore("h1")
    assert cloud.host_can_heartbeat("h1")
    assert not cloud.get_service("h1").up, "forced down until an operator says otherwise"
    cloud.set_forced_down("h1", False)
    assert cloud.get_service("h1").up


def test_disable_and_enable(cloud: SimCloud) -> None:
    cloud.disable("h2", "maintenance")
    service = cloud.get_service("h2")
    assert (service.disabled, service.disabled_reason, service.up) == (True, "maintenance", True)
    cloud.enable("h2")
    assert not cloud.get_service("h2").disabled


def test_disabling_a_silent_compute_nova_believes_up_waits_for_the_rpc(
    clock: FakeClock,
) -> None:
    slept: list[float] = []
    cloud = SimCloud(
        clock,
        latency=lat(rpc_timeout=60.0),
        sleep=slept.append,
    )
    cloud.add_host("h1")
    cloud.add_host("h2")
    cloud.power_loss("h1")
    cloud.disable("h1", "too early")
    assert slept == [60.0]
    assert cloud.calls("disable_rpc_timeout", "h1") == 1
    assert cloud.get_service("h1").disabled
    cloud.set_forced_down("h2", True)  # forced down first: no RPC is attempted
    cloud.power_loss("h2")
    cloud.disable("h2", "in order")
    assert slept == [60.0]
    assert cloud.calls("disable_rpc_timeout") == 1


# ------------------------------------------------------------------------ evacuate rules


def test_evacuate_refused_while_source_up(cloud: SimCloud, clock: FakeClock) -> None:
    sid = cloud.add_instance("vm", "h1")
    cloud.power_loss("h1")
    with pytest.raises(Conflict, match="ComputeServiceInUse"):
        cloud.evacuate(sid)
    clock.advance(61.0)  # Nova noticed by itself: no force down needed
    cloud.evacuate(sid)
    assert cloud.get_server(sid).host != "h1"


@pytest.mark.parametrize("busy", ["evacuating", "stopping", "rebooting"])
def test_evacuate_refused_while_a_task_runs(clock: FakeClock, busy: str) -> None:
    cloud = SimCloud(clock, latency=lat(evacuate=1.0, action=1.0))
    for h in HOSTS:
        cloud.add_host(h)
    sid = cloud.add_instance("vm", "h1")
    if busy == "stopping":
        cloud.stop(sid)
    elif busy == "rebooting":
        cloud.reboot(sid)
    cloud.set_forced_down("h1", True)
    if busy == "evacuating":
        cloud.evacuate(sid)
    with pytest.raises(Conflict, match="InstanceInvalidState"):
        cloud.evacuate(sid)
    assert cloud.calls("evacuate") == (1 if busy == "evacuating" else 0)


def test_evacuation_is_rebuild_then_active_on_the_target(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=lat(evacuate=0.4))
    cloud.add_host("h1")
    cloud.add_host("h2")
    sid = cloud.add_instance("vm", "h1", policy=HaPolicy.KEEP_RUNNING, priority=3)
    fence(cloud, "h1")
    cloud.evacuate(sid)
    server = cloud.get_server(sid)
    assert (server.status, server.task_state, server.host) == (REBUILD, "rebuilding", "h1")
    clock.advance(0.39)
    assert cloud.get_server(sid).status == REBUILD
    clock.advance(0.02)
    server = cloud.get_server(sid)
    assert (server.status, server.task_state, server.host) == (ACTIVE, None, "h2")
    assert (server.policy, server.priority) == (HaPolicy.KEEP_RUNNING, 3)
    assert [s.id for s in cloud.list_servers("h2")] == [sid]
    assert cloud.list_servers("h1") == []
    assert cloud.instance(sid).running_on == {"h2"}


def test_evacuation_jitter_is_bounded_and_seeded() -> None:
    def landing_times(seed: int) -> list[float]:
        fake = FakeClock()
        cloud = SimCloud(fake, latency=lat(evacuate=1.0, jitter=0.25), seed=seed)
        cloud.add_host("src", capacity=50)
        cloud.add_host("dst", capacity=50)
        ids = [cloud.add_instance(f"vm{i}", "src") for i in range(30)]
        fence(cloud, "src")
        for sid in ids:
            cloud.evacuate(sid)
        landed: dict[str, float] = {}
        for _ in range(200):
            fake.advance(0.01)
            for inst in cloud.instances():
                if inst.host == "dst":
                    landed.setdefault(inst.id, round(fake.monotonic() - 1000.0, 2))
        return [landed[i] for i in ids]

    times = landing_times(1)
    assert all(0.75 <= t <= 1.26 for t in times), times
    assert len(set(times)) > 5, "jitter spreads the landings"
    assert landing_times(1) == times


def test_evacuate_leaves_stopped_like_microversion_2_95(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=SimLatency.zero(), evacuate_leaves_stopped=True)
    cloud.add_host("h1")
    cloud.add_host("h2")
    sid = cloud.add_instance("vm", "h1")
    fence(cloud, "h1")
    cloud.evacuate(sid)
    server = cloud.get_server(sid)
    assert (server.host, server.status) == ("h2", SHUTOFF)
    assert cloud.instance(sid).running_on == frozenset()
    cloud.start(sid)
    assert cloud.get_server(sid).status == ACTIVE
    assert cloud.instance(sid).running_on == {"h2"}


# ------------------------------------------------ Nova's concurrency limit on rebuilds


def limited(clock: FakeClock, limit: int, n: int) -> tuple[SimCloud, list[str]]:
    """A fenced source "src" with ``n`` instances, a roomy "dst", Nova running at most
    ``limit`` rebuilds at once (0: no limit), evacuations taking 1 s."""
    cloud = SimCloud(clock, latency=lat(evacuate=1.0), max_concurrent_evacuations=limit)
    cloud.add_host("src", capacity=n)
    cloud.add_host("dst", capacity=n)
    ids = [cloud.add_instance(f"vm{i}", "src") for i in range(n)]
    fence(cloud, "src")
    return cloud, ids


def active(cloud: SimCloud, ids: list[str]) -> list[str]:
    return [s for s in ids if cloud.get_server(s).status == ACTIVE]


def test_evacuations_beyond_the_limit_are_accepted_and_wait(clock: FakeClock) -> None:
    cloud, ids = limited(clock, 2, 5)
    for sid in ids:
        cloud.evacuate(sid)  # all accepted at once, like Nova's 202
    for sid in ids:
        server = cloud.get_server(sid)
        assert (server.status, server.task_state, server.host) == (REBUILD, "rebuilding", "src")
    assert cloud.calls("evacuate") == 5
    assert cloud.evacuations_in_progress() == (2, 3)
    with pytest.raises(Conflict, match="InstanceInvalidState"):
        cloud.evacuate(ids[4])  # one evacuation per instance, waiting or not
    clock.advance(1.0)
    assert active(cloud, ids) == ids[:2], "only two rebuilds ran"
    assert cloud.evacuations_in_progress() == (2, 1)
    clock.advance(1.0)
    assert active(cloud, ids) == ids[:4]
    clock.advance(1.0)
    assert active(cloud, ids) == ids
    assert cloud.evacuations_in_progress() == (0, 0)
    assert {cloud.get_server(s).host for s in ids} == {"dst"}
    assert cloud.double_running() == []


def test_waiting_evacuations_start_in_arrival_order(clock: FakeClock) -> None:
    cloud, ids = limited(clock, 1, 4)
    for sid in reversed(ids):  # arrival order: vm3, vm2, vm1, vm0
        cloud.evacuate(sid)
    landed: list[str] = []
    for _ in ids:
        clock.advance(1.0)
        landed += [s for s in active(cloud, ids) if s not in landed]
    assert landed == list(reversed(ids))


def test_an_evacuation_s_latency_starts_when_a_slot_frees(clock: FakeClock) -> None:
    cloud, ids = limited(clock, 1, 2)
    cloud.evacuate(ids[0])
    clock.advance(0.5)
    cloud.evacuate(ids[1])  # waits: the slot is taken until 1.0
    clock.advance(0.5)
    assert active(cloud, ids) == ids[:1]
    clock.advance(0.99)  # 1.99: not 1.5 (accepted + 1 s), 2.0 (slot freed + 1 s)
    assert cloud.get_server(ids[1]).status == REBUILD
    clock.advance(0.01)
    assert active(cloud, ids) == ids


def test_slots_are_handed_on_in_due_order_when_nobody_looks(clock: FakeClock) -> None:
    cloud, ids = limited(clock, 2, 6)
    for sid in ids:
        cloud.evacuate(sid)
    clock.advance(2.5)  # nobody called in between: applied lazily, in due order
    assert active(cloud, ids) == ids[:4]
    assert cloud.evacuations_in_progress() == (2, 0)
    clock.advance(0.5)
    assert active(cloud, ids) == ids


def test_a_failed_rebuild_frees_its_slot_for_the_next(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=lat(evacuate=1.0), max_concurrent_evacuations=1)
    cloud.add_host("src")
    cloud.add_host("dead", capacity=1)
    sid_a = cloud.add_instance("a", "src")
    fence(cloud, "src")
    cloud.evacuate(sid_a)  # to "dead", the only host with room
    cloud.add_host("spare")
    sid_b = cloud.add_instance("b", "src")
    cloud.evacuate(sid_b)  # to "spare", waits for the slot
    clock.advance(0.25)
    cloud.power_loss("dead")  # a's rebuild fails now: b starts now, lands 1 s later
    assert cloud.get_server(sid_a).status == ERROR
    assert cloud.evacuations_in_progress() == (1, 0)
    clock.advance(0.99)
    assert cloud.get_server(sid_b).status == REBUILD
    clock.advance(0.01)
    assert (cloud.get_server(sid_b).status, cloud.get_server(sid_b).host) == (ACTIVE, "spare")


def test_a_waiting_evacuation_of_an_instance_reset_is_dropped(clock: FakeClock) -> None:
    cloud, ids = limited(clock, 1, 2)
    cloud.evacuate(ids[0])
    cloud.evacuate(ids[1])
    cloud.reset_state(ids[1])  # before its rebuild started
    assert cloud.evacuations_in_progress() == (1, 0)
    clock.advance(5.0)
    assert active(cloud, ids) == ids[:1]
    server = cloud.get_server(ids[1])
    assert (server.status, server.host) == (ERROR, "src"), "the stale rebuild never ran"
    cloud.evacuate(ids[1])  # its claim was freed: it can go again, and gets the slot
    assert cloud.evacuations_in_progress() == (1, 0)
    clock.advance(1.0)
    assert active(cloud, ids) == ids


def test_no_valid_host_takes_no_slot(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=lat(evacuate=1.0, action=0.1), max_concurrent_evacuations=1)
    cloud.add_host("src")
    cloud.add_host("dst", capacity=1)
    sid_a, sid_b = cloud.add_instance("a", "src"), cloud.add_instance("b", "src")
    fence(cloud, "src")
    cloud.evacuate(sid_a)
    cloud.evacuate(sid_b)  # no room left anywhere: fails as fast as without a limit
    assert cloud.evacuations_in_progress() == (1, 0)
    clock.advance(0.1)
    assert (cloud.get_server(sid_b).status, cloud.get_server(sid_b).host) == (ERROR, "src")


def test_no_limit_runs_every_evacuation_at_once(clock: FakeClock) -> None:
    cloud, ids = limited(clock, 0, 50)
    for sid in ids:
        cloud.evacuate(sid)
    assert cloud.evacuations_in_progress() == (50, 0)
    clock.advance(1.0)
    assert active(cloud, ids) == ids
    with pytest.raises(ValueError, match="max_concurrent_evacuations"):
        SimCloud(clock, max_concurrent_evacuations=-1)


@pytest.mark.parametrize(("before", "after"), [(SHUTOFF, SHUTOFF), (ERROR, ACTIVE)])
def test_evacuated_status_follows_the_status_before(
    cloud: SimCloud, before: str, after: str
) -> None:
    sid = cloud.add_instance("vm", "h1", status=before)
    fence(cloud, "h1")
    cloud.evacuate(sid)
    assert cloud.get_server(sid).status == after


def test_scheduler_spreads_to_the_least_loaded_fitting_host(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=SimLatency.zero())
    for h in ("src", "busy", "idle", "disabled", "forced"):
        cloud.add_host(h)
    cloud.add_instance("x", "busy")
    cloud.disable("disabled", "maintenance")
    cloud.set_forced_down("forced", True)
    ids = [cloud.add_instance(f"vm{i}", "src") for i in range(3)]
    fence(cloud, "src")
    targets = []
    for sid in ids:
        cloud.evacuate(sid)
        targets.append(cloud.get_server(sid).host)
    assert targets == ["idle", "busy", "idle"]


def test_scheduler_picks_as_a_scan_of_every_host_would_while_loads_change(
    clock: FakeClock,
) -> None:
    """The scheduler keeps the hosts by load (a heap updated as loads change) instead of
    scanning every host per evacuation: through evacuations landing, waiting for a
    rebuild slot, reset while they wait, failing on a dead host, with hosts disabled and
    forced down, it picks what the scan picks: the least loaded fitting host, by name."""
    rng = random.Random(7)
    cloud = SimCloud(clock, latency=lat(evacuate=1.0), max_concurrent_evacuations=3, seed=1)
    hosts = [f"h{i:02d}" for i in range(12)]
    for h in hosts:
        cloud.add_host(h, capacity=rng.randint(5, 9))
    ids = [cloud.add_instance(f"vm{i}", hosts[i % 4]) for i in range(20)]

    def scan(sid: str) -> str | None:  # the scheduler as it was: every host, every time
        inst = cloud._instances[sid]
        now = clock.monotonic()
        fits = [h for h in hosts if h != inst.host and not cloud._unfit(inst, cloud._hosts[h], now)]
        return min(fits, key=lambda h: (cloud._load(h), h), default=None)

    for h in hosts[:4]:
        fence(cloud, h)
    cloud.disable("h07", "maintenance")
    picked = 0
    for round_ in range(60):
        sid = rng.choice(ids)
        server = cloud.get_server(sid)
        if server.status in (ACTIVE, ERROR) and cloud._hosts[server.host].forced_down:
            with cloud._lock:
                expected = scan(sid)
                assert cloud._schedule(cloud._instances[sid], clock.monotonic()) == expected
            cloud.evacuate(sid)
            picked += expected is not None
        elif server.status == REBUILD and rng.random() < 0.3:
            cloud.reset_state(sid)
        if round_ == 30:
            cloud.power_loss("h05")  # its rebuilds in flight fail; Nova sees it up a while
        clock.advance(rng.choice((0.0, 0.3, 0.7)))
    assert picked > 10


def test_scheduler_counts_evacuations_in_flight_against_capacity(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=lat(evacuate=1.0))
    cloud.add_host("src")
    cloud.add_host("small", capacity=2)
    ids = [cloud.add_instance(f"vm{i}", "src") for i in range(3)]
    fence(cloud, "src")
    for sid in ids:
        cloud.evacuate(sid)
    clock.advance(1.0)
    hosts = sorted((cloud.get_server(s).host, cloud.get_server(s).status) for s in ids)
    assert hosts == [("small", ACTIVE), ("small", ACTIVE), ("src", ERROR)]


def test_no_valid_host_ends_error_on_the_source_and_can_be_retried(cloud: SimCloud) -> None:
    sid = cloud.add_instance("vm", "h1")
    cloud.disable("h2", "maintenance")
    cloud.disable("h3", "maintenance")
    fence(cloud, "h1")
    cloud.evacuate(sid)  # accepted: the failure is asynchronous, as in Nova
    server = cloud.get_server(sid)
    assert (server.host, server.status, server.task_state) == ("h1", ERROR, None)
    assert cloud.instance(sid).fault is not None
    assert "No valid host" in str(cloud.instance(sid).fault)
    cloud.enable("h3")
    cloud.evacuate(sid)  # ERROR is evacuable
    server = cloud.get_server(sid)
    assert (server.host, server.status) == ("h3", ACTIVE)
    assert cloud.instance(sid).fault is None


def test_full_hosts_give_no_valid_host(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=SimLatency.zero())
    cloud.add_host("h1")
    cloud.add_host("h2", capacity=1)
    cloud.add_instance("filler", "h2")
    sid = cloud.add_instance("vm", "h1")
    fence(cloud, "h1")
    cloud.evacuate(sid)
    assert cloud.get_server(sid).status == ERROR
    with pytest.raises(ValueError, match="full"):
        cloud.add_instance("more", "h2")


def test_scheduler_may_pick_a_host_that_just_died_and_the_rebuild_fails(
    cloud: SimCloud,
) -> None:
    sid = cloud.add_instance("vm", "h1")
    cloud.disable("h3", "maintenance")
    fence(cloud, "h1")
    cloud.power_loss("h2")  # Nova still believes h2 up
    cloud.evacuate(sid)
    server = cloud.get_server(sid)
    assert (server.host, server.status) == ("h1", ERROR)
    assert "h2" in str(cloud.instance(sid).fault)


def test_evacuation_to_a_hung_host_waits_for_it(cloud: SimCloud) -> None:
    sid = cloud.add_instance("vm", "h1")
    fence(cloud, "h1")
    cloud.hang("h2")
    cloud.evacuate(sid, "h2")  # Nova still believes h2 up
    assert cloud.get_server(sid).status == REBUILD
    cloud.unhang("h2")
    assert (cloud.get_server(sid).host, cloud.get_server(sid).status) == ("h2", ACTIVE)


def test_evacuation_waiting_for_a_hung_host_fails_when_it_is_fenced(cloud: SimCloud) -> None:
    sid = cloud.add_instance("vm", "h1")
    fence(cloud, "h1")
    cloud.hang("h2")
    cloud.evacuate(sid, "h2")
    fence(cloud, "h2")
    server = cloud.get_server(sid)
    assert (server.host, server.status, server.task_state) == ("h1", ERROR, None)
    cloud.evacuate(sid, "h3")  # the retry is free to go elsewhere
    assert cloud.get_server(sid).host == "h3"


@pytest.mark.parametrize(
    ("prepare", "error", "match"),
    [
        (lambda c: None, PermanentError, "same one"),
        (lambda c: c.disable("h2", "x"), PermanentError, "disabled"),
        (lambda c: c.set_forced_down("h2", True), PermanentError, "forced down"),
        (lambda c: c.add_instance("filler", "h2"), PermanentError, "full"),
    ],
    ids=["source", "disabled", "forced-down", "full"],
)
def test_evacuate_to_an_unfit_named_target_is_refused(
    clock: FakeClock, prepare: Callable[[SimCloud], object], error: type[Exception], match: str
) -> None:
    cloud = SimCloud(clock, latency=SimLatency.zero())
    cloud.add_host("h1")
    cloud.add_host("h2", capacity=1)
    sid = cloud.add_instance("vm", "h1")
    prepare(cloud)
    fence(cloud, "h1")
    target = "h1" if match == "same one" else "h2"
    with pytest.raises(error, match=match):
        cloud.evacuate(sid, target)
    assert cloud.get_server(sid).status == ACTIVE
    assert cloud.calls("evacuate") == 0


def test_evacuate_to_a_target_nova_noticed_down_is_refused(
    cloud: SimCloud, clock: FakeClock
) -> None:
    sid = cloud.add_instance("vm", "h1")
    fence(cloud, "h1")
    cloud.power_loss("h2")
    clock.advance(61.0)
    with pytest.raises(PermanentError, match="down"):
        cloud.evacuate(sid, "h2")
    with pytest.raises(NotFound):
        cloud.evacuate(sid, "nowhere")


# --------------------------------------------------------------------------- anti-affinity


def test_anti_affinity_steers_the_scheduler(cloud: SimCloud) -> None:
    a = cloud.add_instance("a", "h1", server_group="db", anti_affinity=True)
    cloud.add_instance("b", "h2", server_group="db")
    cloud.add_instance("x", "h3")  # h3 is busier, but h2 holds a member
    fence(cloud, "h1")
    cloud.evacuate(a)
    assert cloud.get_server(a).host == "h3"
    assert cloud.get_server(a).server_group == "db"


def test_anti_affinity_refuses_a_named_target_and_no_valid_host(cloud: SimCloud) -> None:
    cloud.add_server_group("db")
    a = cloud.add_instance("a", "h1", server_group="db")
    cloud.add_instance("b", "h2", server_group="db")
    cloud.add_instance("c", "h3", server_group="db")
    fence(cloud, "h1")
    with pytest.raises(PermanentError, match="anti-affinity"):
        cloud.evacuate(a, "h2")
    cloud.evacuate(a)
    assert (cloud.get_server(a).host, cloud.get_server(a).status) == ("h1", ERROR)


def test_anti_affinity_members_cannot_be_placed_together(cloud: SimCloud) -> None:
    cloud.add_instance("a", "h1", server_group="db", anti_affinity=True)
    with pytest.raises(ValueError, match="anti-affinity"):
        cloud.add_instance("b", "h1", server_group="db")
    cloud.add_instance("c", "h1", server_group="web")  # not anti-affinity: allowed
    cloud.add_instance("d", "h1", server_group="web")
    with pytest.raises(ValueError, match="not anti-affinity"):
        cloud.add_instance("e", "h2", server_group="web", anti_affinity=True)


def test_parallel_evacuations_of_a_group_race_the_late_check(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=lat(evacuate=1.0))
    for h in ("h1", "h2", "h3"):
        cloud.add_host(h)
    a = cloud.add_instance("a", "h1", server_group="db", anti_affinity=True)
    b = cloud.add_instance("b", "h2", server_group="db")
    fence(cloud, "h1")
    fence(cloud, "h2")
    cloud.evacuate(a)
    cloud.evacuate(b)  # the scheduler does not see a on its way to h3
    assert cloud.get_server(b).status == REBUILD
    clock.advance(1.0)
    assert (cloud.get_server(a).host, cloud.get_server(a).status) == ("h3", ACTIVE)
    assert (cloud.get_server(b).host, cloud.get_server(b).status) == ("h2", ERROR)
    assert "Anti-affinity" in str(cloud.instance(b).fault)


# ------------------------------------------------------------------- start, stop, reboot


def test_actions_take_time_and_change_status(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=lat(action=0.5))
    cloud.add_host("h1")
    sid = cloud.add_instance("vm", "h1")
    cloud.stop(sid)
    assert (cloud.get_server(sid).status, cloud.get_server(sid).task_state) == (
        ACTIVE,
        "powering-off",
    )
    with pytest.raises(Conflict):
        cloud.start(sid)
    clock.advance(0.5)
    assert cloud.get_server(sid).status == SHUTOFF
    assert cloud.instance(sid).running_on == frozenset()
    with pytest.raises(Conflict):
        cloud.reboot(sid, hard=False)  # a soft reboot needs a running guest
    cloud.reboot(sid, hard=True)
    assert cloud.get_server(sid).status == "HARD_REBOOT"
    clock.advance(0.5)
    assert cloud.get_server(sid).status == ACTIVE
    assert cloud.instance(sid).running_on == {"h1"}


def test_actions_need_the_compute_service_up(cloud: SimCloud) -> None:
    sid = cloud.add_instance("vm", "h1")
    cloud.set_forced_down("h1", True)
    for action in (cloud.stop, cloud.reboot):
        with pytest.raises(Conflict, match="ServiceUnavailable"):
            action(sid)


def test_an_action_on_a_dead_host_nova_believes_up_never_completes(cloud: SimCloud) -> None:
    sid = cloud.add_instance("vm", "h1")
    cloud.power_loss("h1")
    cloud.reboot(sid)  # accepted: Nova does not know yet
    server = cloud.get_server(sid)
    assert (server.status, server.task_state) == (ACTIVE, None)
    assert cloud.instance(sid).running_on == frozenset()


# --------------------------------------------------------------------- safety accounting


@pytest.mark.parametrize("fault", ["isolate", "hang"])
def test_evacuating_an_unfenced_host_is_recorded_as_double_running(
    cloud: SimCloud, fault: str
) -> None:
    sid = cloud.add_instance("vm", "h1")
    other = cloud.add_instance("other", "h1")
    getattr(cloud, fault)("h1")
    cloud.set_forced_down("h1", True)  # the mistake: forced down without fencing
    cloud.evacuate(sid)
    assert cloud.double_running() == [sid]
    assert cloud.instance(sid).running_on == {"h1", cloud.get_server(sid).host}
    assert other not in cloud.double_running()


def test_fencing_before_evacuating_is_not_double_running(cloud: SimCloud) -> None:
    sid = cloud.add_instance("vm", "h1")
    cloud.isolate("h1")  # the BMC is still reachable on the management network
    fence(cloud, "h1")
    cloud.evacuate(sid)
    assert cloud.double_running() == []
    assert cloud.instance(sid).running_on == {cloud.get_server(sid).host}


def test_power_restore_after_evacuation_starts_nothing_twice(cloud: SimCloud) -> None:
    moved = cloud.add_instance("moved", "h1", policy=HaPolicy.KEEP_RUNNING)
    left = cloud.add_instance("left", "h1", policy=HaPolicy.OFF)
    cloud.power_loss("h1")
    cloud.set_forced_down("h1", True)
    assert cloud.get_server(left).status == ACTIVE, "Nova does not know the host died"
    cloud.evacuate(moved)
    cloud.power_restore("h1")
    assert cloud.double_running() == []
    assert cloud.instance(moved).running_on == {cloud.get_server(moved).host}
    assert cloud.get_server(moved).host != "h1"
    left_now = cloud.instance(left)
    assert (left_now.host, left_now.status, left_now.running_on) == ("h1", SHUTOFF, frozenset())


def test_a_double_run_stays_recorded(cloud: SimCloud) -> None:
    sid = cloud.add_instance("vm", "h1")
    cloud.hang("h1")
    cloud.set_forced_down("h1", True)
    cloud.evacuate(sid)
    cloud.power_loss("h1")
    assert cloud.instance(sid).running_on == {cloud.get_server(sid).host}
    assert cloud.double_running() == [sid]


# -------------------------------------------------------------------------------- BMCs


def test_bmc_power_off_takes_effect_after_its_latency(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=lat(power_off=0.2))
    cloud.add_host("h1")
    sid = cloud.add_instance("vm", "h1")
    cloud.bmc_power_off("h1")
    assert cloud.bmc_power_status("h1") == PowerState.ON
    clock.advance(0.1)
    cloud.bmc_power_off("h1")  # idempotent: does not push the power-off back
    clock.advance(0.1)
    assert cloud.bmc_power_status("h1") == PowerState.OFF
    assert not cloud.is_powered("h1")
    assert cloud.instance(sid).running_on == frozenset()
    cloud.bmc_power_on("h1")
    clock.advance(0.2)
    assert cloud.bmc_power_status("h1") == PowerState.ON
    assert cloud.host_can_heartbeat("h1")
    assert cloud.calls("bmc_power_off", "h1") == 2
    assert cloud.calls("bmc_power_on", "h1") == 1


def test_lazy_power_off_dates_nova_s_lag_from_when_it_happened(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=lat(power_off=0.2))
    cloud.add_host("h1")
    cloud.bmc_power_off("h1")
    clock.advance(60.1)  # nothing called in between: the power-off is applied late
    assert cloud.get_service("h1").up, "went off at +0.2 s: 59.9 s of silence"
    clock.advance(0.2)
    assert not cloud.get_service("h1").up


def test_unreachable_bmc_times_out_with_a_temporary_error(clock: FakeClock) -> None:
    slept: list[float] = []
    cloud = SimCloud(clock, latency=lat(bmc_timeout=3.0), sleep=slept.append)
    cloud.add_host("h1")
    cloud.bmc_unreachable("h1", True)
    for call in (cloud.bmc_power_off, cloud.bmc_power_on, cloud.bmc_power_status):
        with pytest.raises(TemporaryError, match="h1"):
            call("h1")
    assert slept == [3.0, 3.0, 3.0]
    assert cloud.is_powered("h1")
    assert cloud.calls("bmc_power_off") == 0
    assert cloud.attempts("bmc_power_off", "h1") == 1
    cloud.bmc_unreachable("h1", False)
    cloud.bmc_power_off("h1")
    assert cloud.bmc_power_status("h1") == PowerState.OFF


def test_lying_bmc_acknowledges_but_power_stays_on(cloud: SimCloud, clock: FakeClock) -> None:
    sid = cloud.add_instance("vm", "h1")
    cloud.bmc_lies("h1", True)
    cloud.bmc_power_off("h1")
    clock.advance(10.0)
    assert cloud.bmc_power_status("h1") == PowerState.ON
    assert cloud.instance(sid).running_on == {"h1"}
    assert cloud.calls("bmc_power_off", "h1") == 1


def test_bmc_of_an_unknown_host_is_not_found(cloud: SimCloud) -> None:
    with pytest.raises(NotFound):
        cloud.bmc_power_status("nope")


# ------------------------------------------------------------------ counting, threads, misc


def test_calls_count_accepted_calls_per_target(cloud: SimCloud) -> None:
    a = cloud.add_instance("a", "h1")
    b = cloud.add_instance("b", "h1")
    with pytest.raises(Conflict):
        cloud.evacuate(a)
    fence(cloud, "h1")
    cloud.evacuate(a)
    cloud.evacuate(b)
    assert cloud.calls("evacuate", a) == 1
    assert cloud.attempts("evacuate", a) == 2
    assert cloud.calls("evacuate") == 2
    assert cloud.calls("set_forced_down", "h1") == 1
    assert cloud.calls("bmc_power_off", "h1") == 1
    assert cloud.calls("evacuate", "nobody") == 0


def test_concurrent_evacuations_of_one_instance_accept_exactly_one(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=lat(evacuate=1.0))
    for h in HOSTS:
        cloud.add_host(h)
    sid = cloud.add_instance("vm", "h1")
    fence(cloud, "h1")
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def attempt() -> None:
        barrier.wait()
        try:
            cloud.evacuate(sid)
            result = "accepted"
        except Conflict:
            result = "conflict"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("accepted") == 1
    assert outcomes.count("conflict") == 15
    assert cloud.calls("evacuate", sid) == 1
    assert cloud.attempts("evacuate", sid) == 16
    clock.advance(1.0)
    assert cloud.get_server(sid).host != "h1"


def test_concurrent_evacuations_respect_capacity(clock: FakeClock) -> None:
    cloud = SimCloud(clock, latency=SimLatency.zero())
    cloud.add_host("src", capacity=40)
    for h in ("d1", "d2", "d3"):
        cloud.add_host(h, capacity=10)
    ids = [cloud.add_instance(f"vm{i}", "src") for i in range(36)]
    fence(cloud, "src")

    def run(chunk: list[str]) -> None:
        for sid in chunk:
            cloud.evacuate(sid)

    threads = [threading.Thread(target=run, args=(ids[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    placed = {h: len(cloud.list_servers(h)) for h in ("d1", "d2", "d3")}
    assert placed == {"d1": 10, "d2": 10, "d3": 10}
    assert len([s for s in cloud.list_servers("src") if s.status == ERROR]) == 6
    assert cloud.double_running() == []


def test_api_latency_sleeps_outside_the_clock(clock: FakeClock) -> None:
    slept: list[float] = []
    cloud = SimCloud(clock, latency=lat(api_call=0.01), sleep=slept.append)
    cloud.add_host("h1")
    cloud.get_service("h1")
    cloud.bmc_power_status("h1")
    cloud.host_can_heartbeat("h1")  # a test's query, not an API call
    assert slept == [0.01, 0.01]


def test_world_building_mistakes_are_value_errors(cloud: SimCloud) -> None:
    with pytest.raises(ValueError):
        cloud.add_host("h1")
    with pytest.raises(ValueError):
        cloud.add_instance("vm", "nowhere")
    with pytest.raises(ValueError):
        cloud.add_instance("vm", "h1", status=REBUILD)
    sid = cloud.add_instance("vm", "h1", id="fixed-id")
    assert sid == "fixed-id"
    with pytest.raises(ValueError):
        cloud.add_instance("vm", "h1", id="fixed-id")
    with pytest.raises(ValueError):
        cloud.add_server_group("g", "affinity")
    cloud.power_loss("h2")
    with pytest.raises(ValueError):
        cloud.hang("h2")


def test_instances_snapshot_and_network(cloud: SimCloud) -> None:
    sid = cloud.add_instance("vm", "h1", metadata={MASAKARI_KEY: "True"}, status=SHUTOFF)
    (snap,) = cloud.instances()
    assert (snap.id, snap.name, snap.host, snap.status) == (sid, "vm", "h1", SHUTOFF)
    assert snap.metadata == {MASAKARI_KEY: "True"}
    assert snap.running_on == frozenset()
    assert cloud.hosts() == list(HOSTS)
    assert cloud.network() == (0.0, 0.0)
    cloud.set_network(loss=0.05, jitter=0.2)
    assert cloud.network() == (0.05, 0.2)
    with pytest.raises(ValueError):
        cloud.set_network(loss=1.5)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, (None, 0)),
        ({POLICY_KEY: "keep-running", PRIORITY_KEY: "9"}, (HaPolicy.KEEP_RUNNING, 9)),
        ({POLICY_KEY: "Notify"}, (HaPolicy.NOTIFY, 0)),
        ({POLICY_KEY: "bogus", PRIORITY_KEY: "high"}, (None, 0)),
        ({MASAKARI_KEY: "True"}, (HaPolicy.KEEP_RUNNING, 0)),
        ({MASAKARI_KEY: "false"}, (HaPolicy.OFF, 0)),
        ({MASAKARI_KEY: "True", POLICY_KEY: "notify"}, (HaPolicy.NOTIFY, 0)),
    ],
)
def test_policy_from_metadata(
    metadata: dict[str, str], expected: tuple[HaPolicy | None, int]
) -> None:
    assert ha_policy_from_metadata(metadata) == expected


def test_latency_validation() -> None:
    with pytest.raises(ValueError):
        SimLatency(evacuate=-1)
    with pytest.raises(ValueError):
        SimLatency(jitter=1.0)
    zero = SimLatency.zero()
    assert (zero.api_call, zero.evacuate, zero.bmc_timeout, zero.jitter) == (0, 0, 0, 0)


# ------------------------------------------------------------------ ground-truth records


def test_cut_from_server_silences_heartbeats_only(cloud: SimCloud) -> None:
    cloud.cut_from_server("h1", True)
    assert not cloud.host_can_heartbeat("h1")
    assert cloud.peer_reachable("h1", "h2")
    assert cloud.get_service("h1").up
    cloud.cut_from_server("h1", False)
    assert cloud.host_can_heartbeat("h1")


def test_dead_destination_leaves_the_evacuation_in_rebuild_until_it_is_back(
    clock: FakeClock,
) -> None:
    """The rebuild cast waits in the dead compute's queue: carried out once the host is
    back and has booted."""
    c = SimCloud(clock, latency=lat(evacuate=1.0, boot=3.0), dead_destination_hangs=True)
    for h in HOSTS:
        c.add_host(h)
    sid = c.add_instance("vm", "h1")
    c.disable("h3", "maintenance")
    fence(c, "h1")
    c.evacuate(sid)  # the scheduler picks h2
    c.power_loss("h2")  # before the rebuild lands; Nova still believes h2 up
    clock.advance(5.0)
    server = c.get_server(sid)
    assert (server.host, server.status, server.task_state) == ("h1", REBUILD, "rebuilding")
    assert c.evacuation_started(sid)  # the conductor did its part
    c.power_restore("h2")
    clock.advance(2.0)
    assert c.get_server(sid).status == REBUILD  # h2 still boots
    assert not c.host_can_heartbeat("h2")
    clock.advance(1.5)
    assert (c.get_server(sid).host, c.get_server(sid).status) == ("h2", ACTIVE)
    assert c.instance(sid).running_on == frozenset({"h2"})


def test_a_stale_rebuild_of_an_instance_reset_meanwhile_is_refused(clock: FakeClock) -> None:
    c = SimCloud(clock, latency=lat(evacuate=1.0), dead_destination_hangs=True)
    for h in HOSTS:
        c.add_host(h)
    sid = c.add_instance("vm", "h1")
    c.disable("h3", "maintenance")
    fence(c, "h1")
    c.evacuate(sid)  # the scheduler picks h2
    c.power_loss("h2")
    clock.advance(5.0)
    c.reset_state(sid)
    c.enable("h3")
    c.evacuate(sid, "h3")
    clock.advance(2.0)
    assert (c.get_server(sid).host, c.get_server(sid).status) == ("h3", ACTIVE)
    c.power_restore("h2")  # its queue still holds the old cast
    clock.advance(2.0)
    assert (c.get_server(sid).host, c.get_server(sid).status) == ("h3", ACTIVE)
    assert c.double_running() == []


def test_dead_destination_chosen_after_power_loss_hangs_too(clock: FakeClock) -> None:
    c = SimCloud(clock, latency=SimLatency.zero(), dead_destination_hangs=True)
    for h in HOSTS:
        c.add_host(h)
    sid = c.add_instance("vm", "h1")
    c.disable("h3", "maintenance")
    fence(c, "h1")
    c.power_loss("h2")
    c.evacuate(sid)
    assert c.get_server(sid).status == REBUILD
    (rec,) = c.evacuations()
    assert (rec.source, rec.dest, rec.named, rec.lost) == ("h1", "h2", False, False)
    assert rec.dest_condition is not None and not rec.dest_condition.powered
    assert rec.dest_condition.describe() == "powered off"


def test_power_offs_record_the_host_condition(cloud: SimCloud, clock: FakeClock) -> None:
    t0 = clock.monotonic()
    clock.advance(1.0)
    cloud.isolate("h1")
    clock.advance(2.0)
    cloud.bmc_power_off("h1")
    cloud.bmc_power_off("h2")  # a healthy host: what a checker must flag
    cloud.bmc_lies("h3", True)
    cloud.bmc_power_off("h3")
    assert cloud.watchdog_reset("h1") is False  # off: its watchdog runs no more
    assert cloud.watchdog_reset("h3") is True  # still on (its BMC lied): reset
    a, b, c, d = cloud.power_offs()
    assert (a.host, a.cause, a.effective, a.condition.healthy) == ("h1", "bmc", True, False)
    assert a.condition.isolated and a.condition.describe() == "isolated"
    assert a.condition.compute_down_since == t0 + 1.0
    assert (b.host, b.effective, b.condition.healthy) == ("h2", True, True)
    assert b.condition.healthy_since == t0
    assert (c.host, c.effective) == ("h3", False)  # the BMC lied
    assert (d.host, d.cause, d.condition.powered) == ("h3", "watchdog", True)
    assert cloud.power_losses() == {"h1": [t0 + 3.0], "h2": [t0 + 3.0], "h3": [t0 + 3.0]}


def test_healthy_since_restarts_when_a_fault_heals(cloud: SimCloud, clock: FakeClock) -> None:
    t0 = clock.monotonic()
    clock.advance(1.0)
    cloud.agent_crash("h1")
    assert cloud.host_condition("h1").healthy_since is None
    assert cloud.host_condition("h1").describe() == "agent down"
    clock.advance(1.0)
    cloud.agent_restart("h1")
    assert cloud.host_condition("h1").healthy_since == t0 + 2.0
    cloud.power_loss("h2")
    clock.advance(1.0)
    cloud.power_restore("h2")
    assert cloud.host_condition("h2").healthy_since == t0 + 3.0
    assert cloud.faulty_spans() == {"h1": [(t0 + 1.0, t0 + 2.0)], "h2": [(t0 + 2.0, t0 + 3.0)]}


def test_power_state_is_what_the_host_last_reported(cloud: SimCloud) -> None:
    sid = cloud.add_instance("vm", "h1")
    assert cloud.get_server(sid).power_state == 1
    cloud.isolate("h1")
    cloud.watchdog_reset("h1")  # back up, still cut off: Nova hears nothing
    server = cloud.get_server(sid)
    assert (server.status, server.power_state) == (ACTIVE, 1)
    assert cloud.instance(sid).running_on == frozenset()
    cloud.reconnect("h1")  # nova-compute reports the guest off; Nova keeps it ACTIVE
    server = cloud.get_server(sid)
    assert (server.status, server.power_state) == (ACTIVE, 4)
    cloud.reboot(sid)  # a hard reboot starts it
    assert (cloud.get_server(sid).power_state, cloud.instance(sid).running_on) == (
        1,
        frozenset({"h1"}),
    )


def test_after_a_reboot_nova_keeps_instances_active_until_its_power_sync(
    clock: FakeClock,
) -> None:
    c = SimCloud(clock, latency=lat(boot=1.0, power_sync=5.0))
    for h in HOSTS:
        c.add_host(h)
    sid = c.add_instance("vm", "h1")
    c.power_loss("h1")
    c.power_restore("h1")
    clock.advance(1.5)  # booted: nova-compute reports the guest off
    server = c.get_server(sid)
    assert (server.status, server.power_state) == (ACTIVE, 4)
    clock.advance(5.0)  # its power sync
    assert c.get_server(sid).status == SHUTOFF


def test_a_bmc_power_off_on_its_way_lands_after_a_watchdog_reset(clock: FakeClock) -> None:
    """The BMC was told to power the host off; its watchdog resets it before the command
    lands: the host ends off (the reset does not undo the BMC's command)."""
    cloud = SimCloud(clock, latency=SimLatency(power_off=0.15))
    cloud.add_host("h1")
    cloud.bmc_power_off("h1")
    assert cloud.watchdog_reset("h1") is True  # still on: the command has not landed
    clock.advance(0.2)
    assert not cloud.is_powered("h1")
    assert cloud.bmc_power_status("h1") is PowerState.OFF
