"""Segment ownership on the fake clock: who owns what, when an owner must stop acting,
and that a server which lost a segment can record nothing on it.

The coordination backend here is an in-memory one with leases on the fake clock (what
etcd and Redis do, proven against them in tests/coordination); the store is real.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import new_store
from support.world import World

from vigil.clock import FakeClock
from vigil.config import ConfigError, CoordinationSettings
from vigil.drivers.compute import ComputeService, Server
from vigil.drivers.coordination import CoordinationError, Coordinator
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.engine.guest import GuestSettings
from vigil.engine.ownership import Give, HostOwner, SegmentOwnership, Take, assign, plan
from vigil.model import (
    ComputeHold,
    GuestFailureKind,
    HaPolicy,
    Host,
    HostState,
    OwnerToken,
    Segment,
    ServiceState,
    StepKind,
    StepStatus,
)
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimCompute
from vigil.store import StaleEpoch, acting_as
from vigil.store.sql import SqlStore

SETTINGS = CoordinationSettings(lease_ttl=3.0, renew_interval=0.5, call_timeout=1.0, margin=0.5)


class Backend:
    """Leases on the fake clock: a member or lock not renewed for ``ttl`` is gone."""

    def __init__(self, clock: FakeClock, ttl: float) -> None:
        self.clock, self.ttl = clock, ttl
        self.members: dict[str, float] = {}  # member -> expiry
        self.locks: dict[str, tuple[str, float]] = {}  # lock -> (holder, expiry)
        self.down: set[str] = set()  # members cut off from the backend

    def expire(self) -> None:
        now = self.clock.monotonic()
        self.members = {m: t for m, t in self.members.items() if t > now}
        self.locks = {k: v for k, v in self.locks.items() if v[1] > now}


class FakeCoordinator(Coordinator):
    def __init__(self, backend: Backend, member: str) -> None:
        self.backend_, self.member = backend, member

    @property
    def backend(self) -> str:
        return "fake"

    def _call(self) -> None:
        if self.member in self.backend_.down:
            raise CoordinationError("backend unreachable")
        self.backend_.expire()

    def start(self) -> None:
        self.heartbeat()

    def stop(self) -> None:
        self.backend_.members.pop(self.member, None)

    def heartbeat(self) -> None:
        self._call()
        b, until = self.backend_, self.backend_.clock.monotonic() + self.backend_.ttl
        b.members[self.member] = until
        for name, (holder, _) in list(b.locks.items()):
            if holder == self.member:
                b.locks[name] = (holder, until)

    def members(self) -> frozenset[str]:
        self._call()
        return frozenset(self.backend_.members)

    def try_lock(self, name: str) -> bool:
        self._call()
        holder = self.backend_.locks.get(name)
        if holder is not None and holder[0] != self.member:
            return False
        self.backend_.locks[name] = (
            self.member,
            self.backend_.clock.monotonic() + self.backend_.ttl,
        )
        return True

    def still_held(self, name: str) -> bool:
        self._call()
        holder = self.backend_.locks.get(name)
        return holder is not None and holder[0] == self.member

    def release(self, name: str) -> None:
        self._call()
        if self.backend_.locks.get(name, ("",))[0] == self.member:
            del self.backend_.locks[name]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    store = new_store(tmp_path, Segment("seg-a"), [Host("a1", "seg-a", state=HostState.UP)])
    for name in ("seg-b", "seg-c"):
        store.create_segment(Segment(name))
    store.create_host(Host("b1", "seg-b", state=HostState.UP))
    yield store
    store.close()


def keeper(store: SqlStore, backend: Backend, member: str) -> SegmentOwnership:
    return SegmentOwnership(
        store=store,
        coordinator=FakeCoordinator(backend, member),
        clock=backend.clock,  # type: ignore[arg-type]
        settings=SETTINGS,
    )


# --- the pure rules -------------------------------------------------------------------


def test_segments_are_spread_evenly_and_a_leaving_server_moves_only_its_own() -> None:
    segments = [f"seg-{i}" for i in range(9)]
    three = assign(segments, ["s1", "s2", "s3"])
    assert sorted(list(three.values()).count(m) for m in ("s1", "s2", "s3")) == [3, 3, 3]
    assert assign(reversed(segments), ["s3", "s1", "s2"]) == three  # same on every server
    two = assign(segments, ["s1", "s2"])
    assert sorted(list(two.values()).count(m) for m in ("s1", "s2")) == [4, 5]
    kept = [s for s, m in three.items() if m != "s3"]
    assert sum(two[s] != three[s] for s in kept) <= len(kept) // 3  # a few others move
    assert assign(segments, []) == {}


def test_plan_takes_what_is_due_and_gives_up_what_is_not() -> None:
    segs = ["a", "b", "c", "d"]
    # s1 held everything alone; s2 joins: s1 keeps its share (name order), gives the rest
    assert plan("s1", ["s2"], segs, held=segs) == [Give("c"), Give("d")]
    # s2 kept a and b: s1 takes what is left, not what s2 still holds
    assert plan("s1", ["s2"], segs, held=[], current={"a": "s2", "b": "s2"}) == [
        Take("c"),
        Take("d"),
    ]
    assert plan("s1", [], ["a", "b"], held=["a", "b"]) == []  # alone: everything


def test_a_server_coming_back_does_not_take_back_what_another_kept_going() -> None:
    segs = ["seg-a", "seg-b", "seg-c"]
    fresh = assign(segs, ["s1", "s2", "s3"])
    away = next(m for m in ("s1", "s2", "s3") if m in fresh.values())
    taken = assign(segs, {"s1", "s2", "s3"} - {away}, current=fresh)
    assert all(taken[s] == m for s, m in fresh.items() if m != away)  # the others kept theirs
    back = assign(segs, ["s1", "s2", "s3"], current=taken)
    moved = {s for s in segs if back[s] != taken[s]}
    assert len(moved) == 1 and back[moved.pop()] == away  # only what the balance needs
    one = assign(["seg-a"], ["s2", "s3"], current={"seg-a": "s2"})
    assert assign(["seg-a"], ["s1", "s2", "s3"], current=one) == {"seg-a": "s2"}  # kept
    # an owner that is not a live member keeps nothing
    assert set(assign(segs, ["s1"], current={"seg-a": "s9"}).values()) == {"s1"}


def test_unsafe_timing_is_refused_at_start_up() -> None:
    SETTINGS.validate()
    with pytest.raises(ConfigError, match=r"renew_interval .* must not exceed lease_ttl - margin"):
        CoordinationSettings(lease_ttl=3.0, renew_interval=1.0, call_timeout=1.0).validate()
    with pytest.raises(ConfigError, match="whole seconds"):
        CoordinationSettings(backend_url="etcd3+http://x:2379", lease_ttl=3.5).validate()


# --- the keeper -----------------------------------------------------------------------


def test_an_owner_acts_under_a_new_epoch_and_stops_before_its_locks_can_expire(
    store: SqlStore,
) -> None:
    clock = FakeClock()
    backend = Backend(clock, SETTINGS.lease_ttl)
    a = keeper(store, backend, "vigil-a")
    a.run_round()
    assert {s: t.epoch for s, t in a.tokens().items()} == {"seg-a": 1, "seg-b": 1, "seg-c": 1}

    backend.down.add("vigil-a")  # cut off from the backend: renewals fail
    clock.advance(SETTINGS.lease_ttl - SETTINGS.margin - 0.01)
    a.run_round()
    assert a.owns("seg-a")  # still inside the window of its last renewal
    clock.advance(0.02)
    assert a.tokens() == {} and not a.owns("seg-a")  # stopped: locks may expire from now
    assert a.status().error == "backend unreachable"

    backend.down.clear()
    clock.advance(1.0)  # its locks expired meanwhile
    a.run_round()  # noticed lost, then taken again: a new epoch
    assert {s: t.epoch for s, t in a.tokens().items()} == {"seg-a": 2, "seg-b": 2, "seg-c": 2}


def test_a_server_that_joins_gets_its_share_once_the_owner_has_nothing_in_flight(
    store: SqlStore,
) -> None:
    clock = FakeClock()
    backend = Backend(clock, SETTINGS.lease_ttl)
    a, b = keeper(store, backend, "vigil-a"), keeper(store, backend, "vigil-b")
    busy = {"seg-a", "seg-b", "seg-c"}
    a.set_busy(lambda segment: segment in busy)
    a.run_round()
    b.start(background=False)  # joins: b's share is still locked by a
    assert b.tokens() == {}
    a.run_round()
    segs = ["seg-a", "seg-b", "seg-c"]
    share = set(assign(segs, ["vigil-a", "vigil-b"], {s: "vigil-a" for s in segs}).items())
    b_share = {s for s, m in share if m == "vigil-b"}
    assert b_share and set(a.tokens()) == {"seg-a", "seg-b", "seg-c"} - b_share  # a stopped
    assert a.status().giving == tuple(sorted(b_share))
    b.run_round()
    assert b.tokens() == {}  # a still holds the lock while its work finishes

    busy.clear()
    a.run_round()  # nothing in flight: released
    b.run_round()
    assert set(b.tokens()) == b_share
    assert all(t.epoch == 2 for t in b.tokens().values())


def test_a_paused_owner_finds_its_segments_taken_and_can_record_nothing(
    store: SqlStore,
) -> None:
    clock = FakeClock()
    backend = Backend(clock, SETTINGS.lease_ttl)
    a, b = keeper(store, backend, "vigil-a"), keeper(store, backend, "vigil-b")
    a.run_round()
    old = a.token("seg-a")
    assert old is not None
    b.start(background=False)

    clock.advance(SETTINGS.lease_ttl + 0.1)  # a is stopped (SIGSTOP): no renewal
    b.run_round()
    assert set(b.tokens()) == {"seg-a", "seg-b", "seg-c"}  # a left the group: all of them
    assert a.token("seg-a") is None  # a's window ran out before b could take over

    # Whatever a had under way when it stopped is refused by the store.
    with acting_as(old), pytest.raises(StaleEpoch):
        store.set_host_state("a1", HostState.SUSPECT, reason="stale owner", at=clock.wall())
    assert store.get_host("a1").state is HostState.UP

    a.run_round()  # continued: its locks are gone, it takes nothing b holds
    assert a.tokens() == {}
    b.run_round()  # a is back in the group: b gives a what is over its share
    a.run_round()
    assert len(a.tokens()) + len(b.tokens()) == 3
    assert not set(a.tokens()) & set(b.tokens())


def test_a_late_renewal_stops_acting_meanwhile_and_goes_on_under_the_same_epochs(
    store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The backend answers, but a renewal comes late (the process starved): the server
    does not act past its window, still holds its segments (``held``), and the late
    renewal lets it act again under the same epochs, saying for how long it stopped."""
    clock = FakeClock()
    backend = Backend(clock, SETTINGS.lease_ttl)
    a = keeper(store, backend, "vigil-a")
    a.run_round()
    before = a.tokens()
    clock.advance(SETTINGS.acting_window + 0.2)  # no renewal meanwhile; locks not expired
    assert a.tokens() == {} and a.token("seg-a") is None
    assert a.held("seg-a") == before["seg-a"]
    assert a.renew()
    assert a.tokens() == before
    assert "renewal late, vigil-a stopped acting on seg-a, seg-b, seg-c for 0.20s" in caplog.text


def test_a_renewal_never_waits_for_the_store(store: SqlStore) -> None:
    """The rebalancing waits on a store that does not answer (a database server whose
    connections the workers hold): renewals go on meanwhile, and the window with them."""
    clock = FakeClock()
    backend = Backend(clock, SETTINGS.lease_ttl)
    a = keeper(store, backend, "vigil-a")
    a.run_round()
    owned = a.tokens()
    entered, answer = threading.Event(), threading.Event()
    list_segments = store.list_segments

    def slow_list_segments() -> list[Segment]:
        entered.set()
        answer.wait(10)
        return list_segments()

    store.list_segments = slow_list_segments  # type: ignore[method-assign]
    rebalancing = threading.Thread(target=a.rebalance)
    rebalancing.start()
    try:
        assert entered.wait(5)
        for _ in range(10):  # 5 s of renewals while the store does not answer
            clock.advance(SETTINGS.renew_interval)
            assert a.renew()
        assert a.tokens() == owned
    finally:
        answer.set()
        rebalancing.join(5)
    assert not rebalancing.is_alive()


# --- the epoch checked right before a call that changes the cloud ---------------------


class Revocable:
    """This server's ownership of segment s1, which a test takes away at a moment of its
    choosing (as the keeper does when the lock is lost), or whose acting window it lets
    lapse (``lapsed``: a renewal late, the lock still held)."""

    member = "vigil-a"
    shared = True

    def __init__(self, token: OwnerToken) -> None:
        self._token = token
        self.revoked = False
        self.lapsed = False

    def token(self, segment: str) -> OwnerToken | None:
        return None if self.lapsed else self.held(segment)

    def held(self, segment: str) -> OwnerToken | None:
        return None if self.revoked or segment != self._token.segment else self._token

    def owns(self, segment: str) -> bool:
        return self.token(segment) is not None

    def valid(self, token: OwnerToken | None) -> bool:
        return token is None or self.token(token.segment) == token

    def taken_at(self, segment: str) -> float | None:
        return None

    def tokens(self) -> dict[str, OwnerToken]:
        token = self.token(self._token.segment)
        return {} if token is None else {token.segment: token}


def test_a_fence_whose_segment_is_lost_after_the_power_read_does_not_power_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fence step reads the BMC (on), then loses the segment before its power-off:
    the power-off is never asked for, and the step stays RUNNING for the new owner to
    re-check (its store write would be refused anyway; the BMC could not refuse)."""
    from vigil.server import fence_factory

    with World(tmp_path, ("c1", "c2", "c3")) as world:
        owner = world.store.take_segment("s1", "vigil-a", at=world.clock.wall())
        ownership = Revocable(OwnerToken("s1", "vigil-a", owner.epoch))
        devices = fence_factory(world.cloud)

        def fence_devices(host: Host) -> list[FenceDevice]:
            return [_LosesOnRead(d, world, ownership) for d in devices(host)]

        world.host_engine(ownership=ownership, fence_devices=fence_devices)
        world.tick_until(lambda: world.state("c1") == HostState.UP, "c1 up")
        world.cloud.isolate("c1")  # running, cut off: it must be fenced
        world.tick_until(lambda: ownership.revoked, "the fence step's power read", 10)
        for _ in range(5):
            world.tick()
        assert world.cloud.attempts("bmc_power_off", "c1") == 0
        assert world.cloud.is_powered("c1")
        (recovery,) = world.store.list_recoveries()
        fence = recovery.step(StepKind.FENCE)
        assert fence is not None and fence.status == StepStatus.RUNNING
    assert "fence left to the segment's new owner" in caplog.text


class _LosesOnRead(FenceDevice):
    """A fence device whose power read, once a recovery exists (the fence step's read,
    not a suspect host's probe), takes the segment away before returning."""

    def __init__(self, device: FenceDevice, world: World, ownership: Revocable) -> None:
        self._device, self._world, self._ownership = device, world, ownership
        self.description = device.description

    def power_status(self) -> PowerState:
        state = self._device.power_status()
        if self._world.store.list_recoveries():
            self._ownership.revoked = True
        return state

    def power_off(self) -> None:
        self._device.power_off()

    def power_on(self) -> None:
        self._device.power_on()


def test_a_fence_stopped_by_a_lapsed_window_is_done_once_renewed_and_not_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fence step reads the BMC (on), then the acting window lapses (a renewal
    late, the segment still held) before its power-off: no power-off meanwhile, the
    step is neither failed nor left to another server, and once renewed the fence runs
    again and the recovery ends with every instance recovered."""
    from vigil.server import fence_factory

    with World(tmp_path, ("c1", "c2", "c3")) as world:
        owner = world.store.take_segment("s1", "vigil-a", at=world.clock.wall())
        ownership = Revocable(OwnerToken("s1", "vigil-a", owner.epoch))
        devices = fence_factory(world.cloud)
        lapses = [True]  # the first read after a recovery exists lapses, only that one

        def fence_devices(host: Host) -> list[FenceDevice]:
            return [_LapsesOnRead(d, world, ownership, lapses) for d in devices(host)]

        world.host_engine(ownership=ownership, fence_devices=fence_devices)
        world.tick_until(lambda: world.state("c1") == HostState.UP, "c1 up")
        sid = world.cloud.add_instance("vm-1", "c1", policy=HaPolicy.KEEP_RUNNING)
        world.cloud.isolate("c1")
        world.tick_until(lambda: ownership.lapsed, "the fence step's power read", 10)
        for _ in range(5):
            world.tick()
        assert world.cloud.attempts("bmc_power_off", "c1") == 0
        (recovery,) = world.store.list_recoveries()
        fence = recovery.step(StepKind.FENCE)
        assert fence is not None and fence.status == StepStatus.RUNNING

        ownership.lapsed = False  # renewed: same epoch
        world.tick_until(
            lambda: world.store.list_recoveries()[0].status.value == "succeeded",
            "the recovery done",
            60,
        )
        assert world.cloud.attempts("bmc_power_off", "c1") == 1
        assert world.cloud.get_server(sid).host != "c1"
        (recovery,) = world.store.list_recoveries()
        assert all(step.status == StepStatus.SUCCEEDED for step in recovery.steps)
    assert "acting window lapsed (renewal late)" in caplog.text
    assert "fence stopped, to be done again" in caplog.text
    assert "left to the segment's new owner" not in caplog.text


def test_the_receiver_verifies_the_heartbeats_of_the_segments_held_here(tmp_path: Path) -> None:
    """The engine tells the receiver whose heartbeats to verify: the hosts of the
    segments held here (a lapse keeps them), none once lost; all when alone."""
    with World(tmp_path, ("c1", "c2")) as world:
        taken = world.store.take_segment("s1", "vigil-a", at=world.clock.wall())
        ownership = Revocable(OwnerToken("s1", "vigil-a", taken.epoch))
        told: list[frozenset[str] | None] = []
        world.host_engine(ownership=ownership).on_hearing = told.append
        world.tick()
        assert told == [frozenset({"c1", "c2"})]
        ownership.lapsed = True
        world.tick()
        assert told == [frozenset({"c1", "c2"})]  # still held: still verified here
        ownership.revoked = True
        world.tick()
        assert told[-1] == frozenset()
    (tmp_path / "alone").mkdir()
    with World(tmp_path / "alone", ("c1",)) as world:
        told = []
        world.host_engine().on_hearing = told.append
        world.tick()
        world.tick()
        assert told == [None]


class _LapsesOnRead(_LosesOnRead):
    """The first power read once a recovery exists lets the acting window lapse."""

    def __init__(
        self, device: FenceDevice, world: World, ownership: Revocable, lapses: list[bool]
    ) -> None:
        super().__init__(device, world, ownership)
        self._lapses = lapses

    def power_status(self) -> PowerState:
        state = self._device.power_status()
        if self._lapses[0] and self._world.store.list_recoveries():
            self._lapses[0] = False
            self._ownership.lapsed = True
        return state


# --- the reactions about one host: guest failures, host services ------------------------


class _RevokesOnRead(SimCompute):
    """Nova whose reads (``get_server``, ``get_service``) take segment s1 away, once
    ``armed``, before they answer: the segment is lost between the reaction's read and
    its call that changes the cloud."""

    def __init__(self, cloud: SimCloud) -> None:
        super().__init__(cloud)
        self.ownership: Revocable | None = None
        self.armed = False  # a read loses the segment
        self.lapses = False  # a read lets the acting window lapse

    def _read(self) -> None:
        if self.armed and self.ownership is not None:
            self.ownership.revoked = True
        if self.lapses and self.ownership is not None:
            self.ownership.lapsed = True

    def get_server(self, server_id: str) -> Server:
        self._read()
        return super().get_server(server_id)

    def get_service(self, host: str) -> ComputeService:
        self._read()
        return super().get_service(host)


def _owned_world(tmp_path: Path) -> tuple[World, _RevokesOnRead, Revocable, HostOwner]:
    world = World(tmp_path, ("c1", "c2"), compute=_RevokesOnRead)
    compute = world.compute
    assert isinstance(compute, _RevokesOnRead)
    taken = world.store.take_segment("s1", "vigil-a", at=world.clock.wall())
    ownership = Revocable(OwnerToken("s1", "vigil-a", taken.epoch))
    compute.ownership = ownership
    owner = HostOwner(ownership, lambda host: "s1")
    return world, compute, ownership, owner


def _crashed_guest(world: World, owner: HostOwner) -> str:
    """A keep-running instance on c1 whose guest crashed, its restart planned (the
    guest engine acting through ``owner``): the next cycle runs the restart."""
    guest = world.guest_engine(GuestSettings(restart_budget=3))
    guest.owner = owner
    sid = world.cloud.add_instance("vm-1", "c1", policy=HaPolicy.KEEP_RUNNING)
    world.cloud.stop(sid)
    world.guest_report(sid, GuestFailureKind.CRASHED, reason="panicked")
    world.cycle()  # the policy read, then the plan
    return sid


def test_a_guest_restart_whose_segment_is_lost_before_nova_is_called_is_left_to_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The restart worker reads the instance, then the segment is lost: no start is asked
    of Nova, nothing is recorded (the restart stays RUNNING), and the segment's next
    owner requeues it and restarts the instance, once."""
    world, compute, ownership, owner = _owned_world(tmp_path)
    with world:
        sid = _crashed_guest(world, owner)
        compute.armed = True
        world.cycle()  # the restart: its read loses the segment
        assert world.cloud.calls("start", sid) == 0 and world.cloud.calls("reboot", sid) == 0
        (failure,) = world.store.list_guest_failures(instance_id=sid)
        assert failure.action_status is StepStatus.RUNNING
        world.cycle()  # no longer owned: not even looked at
        assert world.cloud.calls("start", sid) == 0

        # The next owner (epoch 2) requeues what was left running in s1, and restarts it.
        compute.armed = False
        taken = world.store.take_segment("s1", "vigil-b", at=world.clock.wall())
        ownership.__init__(OwnerToken("s1", "vigil-b", taken.epoch))  # type: ignore[misc]
        with acting_as(ownership.token("s1")):
            assert (
                world.store.requeue_running_guest_actions(at=world.clock.wall(), segment="s1") == 1
            )
        world.cycle()
        assert world.cloud.calls("start", sid) == 1
        assert world.store.list_guest_failures(instance_id=sid)[0].restarts == 1
    assert "restart stopped: segment s1: epoch 1 is no longer this server's" in caplog.text


def test_a_guest_restart_stopped_by_a_lapsed_window_is_done_once_renewed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The restart worker reads the instance, then the acting window lapses: no start
    meanwhile; once renewed this server restarts it, once, its budget counted once."""
    world, compute, ownership, owner = _owned_world(tmp_path)
    with world:
        sid = _crashed_guest(world, owner)
        compute.lapses = True
        world.cycle()  # the restart: its read lets the window lapse
        assert world.cloud.calls("start", sid) == 0 and world.cloud.calls("reboot", sid) == 0
        (failure,) = world.store.list_guest_failures(instance_id=sid)
        assert failure.action_status is StepStatus.PENDING
        world.cycle()  # lapsed: not started
        assert world.cloud.calls("start", sid) == 0

        compute.lapses = False
        ownership.lapsed = False  # renewed: same epoch
        world.cycle()
        assert world.cloud.calls("start", sid) == 1
        (failure,) = world.store.list_guest_failures(instance_id=sid)
        assert failure.restarts == 1
    assert "restart stopped: segment s1: acting window lapsed" in caplog.text


def test_an_operator_request_stopped_by_a_lapsed_window_is_carried_out_once_renewed(
    tmp_path: Path,
) -> None:
    """A request's call to Nova is stopped by a lapsed acting window (``may_act``): it is
    due again, not failed, and carried out once renewed."""
    from vigil.engine.reconciler import RetryPolicy
    from vigil.engine.requests import OperatorRequests
    from vigil.model import OperatorRequest, RequestKind

    store = new_store(tmp_path, Segment("s1"), [Host("c1", "s1", state=HostState.UP)])
    clock = FakeClock()
    taken = store.take_segment("s1", "vigil-a", at=clock.wall())
    ownership = Revocable(OwnerToken("s1", "vigil-a", taken.epoch))
    requests = OperatorRequests(
        store=store, clock=clock, retry=RetryPolicy(3, base=1.0, cap=4.0), wake=lambda: None
    )
    requests.owner = HostOwner(ownership, lambda host: "s1")
    reboots: list[str] = []
    lapses = [True]

    def reboot(request: OperatorRequest) -> tuple[str, list[Any]]:
        if lapses.pop() if lapses else False:
            ownership.lapsed = True  # the window lapses as the request first runs
        requests.owner.may_act()  # right before the call that changes the cloud
        reboots.append(request.target)
        return "rebooted", []

    requests.register(RequestKind.RESTART_INSTANCE, reboot)
    try:
        asked = requests.submit(RequestKind.RESTART_INSTANCE, "vm-1", host="c1", reason="x")
        requests.run_cycle()
        assert requests.drain(10.0)
        assert store.get_request(asked.id).status is StepStatus.PENDING and reboots == []
        requests.run_cycle()  # still lapsed: not started
        assert requests.drain(10.0) and reboots == []
        ownership.lapsed = False
        requests.run_cycle()
        assert requests.drain(10.0)
        assert store.get_request(asked.id).status is StepStatus.SUCCEEDED
        assert reboots == ["vm-1"]
    finally:
        requests.close()
        store.close()


def test_a_disable_whose_segment_is_lost_before_nova_is_called_is_not_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The service keeper reads c1's compute service, then loses the segment: the host
    is not disabled, and nothing says it was."""
    world, compute, _, owner = _owned_world(tmp_path)
    with world:
        keeper = world.service_keeper()
        keeper.owner = owner
        now = world.clock.wall()
        world.store.set_host_state("c1", HostState.UP, reason="heard", at=now)
        keeper.receive(
            "c1",
            {
                "nova-compute": ServiceState(False, now, "no process"),
                "libvirtd": ServiceState(True, now, "pid 3"),
            },
            reported_at=now,
        )
        compute.armed = True
        world.cycle()
        assert not world.cloud.get_service("c1").disabled
        (held,) = world.store.list_host_services()
        assert held.hold is ComputeHold.NONE  # nothing recorded as done
        world.cycle()  # no longer owned: not looked at again
        assert world.cloud.calls("disable", "c1") == 0
    assert "service action stopped: segment s1: epoch 1 is no longer this server's" in caplog.text


def test_a_host_job_counts_as_busy_in_its_segment_while_it_runs() -> None:
    """The keeper gives a segment up only once nothing of it is in flight: a guest restart
    or an operator request in the middle of a Nova call counts."""

    ownership = Revocable(OwnerToken("s1", "vigil-a", 1))
    owner = HostOwner(ownership, lambda host: {"c1": "s1", "c2": "s2"}.get(host or ""))
    inside, release = threading.Event(), threading.Event()

    def call_nova() -> None:
        inside.set()
        release.wait(5)

    job = threading.Thread(target=owner.job("c1", "restart of vm-1", call_nova))
    assert not owner.busy_in("s1")
    job.start()
    assert inside.wait(5)
    assert owner.busy_in("s1") and not owner.busy_in("s2")
    release.set()
    job.join(5)
    assert not owner.busy_in("s1")


def test_a_segment_taken_over_holds_the_silence_of_hosts_that_followed_another_owner(
    tmp_path: Path,
) -> None:
    """c1's agent followed the previous owner (its heartbeats said so): it may still send
    most of them there for a while, so its silence here from the take is judged only
    after the hold (owner_hint_ttl + other_servers_interval), then as usual. c2's agent
    sent every heartbeat to every server: its silence counts at once."""
    with World(tmp_path, ("c1", "c2", "c3", "c4")) as world:
        taken = world.store.take_segment("s1", "vigil-a", at=world.clock.wall())
        ownership = Revocable(OwnerToken("s1", "vigil-a", taken.epoch))
        ownership.revoked = True  # another server's for now: its hosts heard here
        world.host_engine(ownership=ownership)
        for _ in range(8):
            world.tick()
        world.heartbeats.heard_unverified(["c1", "c3"], fanned=["c1", "c3"])
        world.cloud.isolate("c1")  # from the take on, nothing reaches this server
        world.cloud.isolate("c2")
        # c3 failed (its recovery owns it): not held, a hold must not pass for heartbeats.
        for state in (HostState.SUSPECT, HostState.FAILED):
            world.store.set_host_state("c3", state, reason="test", at=world.clock.wall())
        world.cloud.isolate("c3")
        world.tick()
        ownership.revoked = False
        took = world.clock.monotonic()
        for _ in range(5):
            world.tick()
        age = world.heartbeats.age("c3")
        assert age is not None and age >= 0.25  # silent since before the take: not held
        hold = world.settings.coordination.takeover_hold
        assert hold == 4.0
        world.tick_until(lambda: world.state("c2") == HostState.FAILED, "c2 failed", 3)
        assert world.clock.monotonic() - took < 2.5
        assert world.state("c1") in (HostState.NEW, HostState.UP)
        suspect_after = world.settings.detection.suspect_after
        while world.clock.monotonic() - took < hold + suspect_after - 0.2:
            world.tick()
            assert world.state("c1") in (HostState.NEW, HostState.UP)
        world.tick_until(lambda: world.state("c1") == HostState.FAILED, "c1 failed", 2)
