"""Self-fencing: an agent pets its watchdog only while it holds a lease, and the server
waits for lease TTL + watchdog timeout + margin before it treats a silent host as fenced.

The unit parts run on a fake clock; the end-to-end parts run the real server, real UDP
leases and the simulated cloud, whose watchdogs reset hosts the way a real one would.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from vigil.agent.heartbeat import HeartbeatSender
from vigil.agent.selffence import DeviceWatchdog, SelfFencer
from vigil.cli.demo import DemoOptions, Harness
from vigil.clock import FakeClock, SystemClock
from vigil.config import (
    ConfigError,
    DetectionSettings,
    SelfFencingSettings,
)
from vigil.drivers.errors import PermanentError
from vigil.drivers.fencing import PowerState
from vigil.engine.heartbeat import HeartbeatReceiver, HeartbeatTable
from vigil.engine.lease import LeaseKeeper, SelfFenceDevice
from vigil.wire.keys import AgentKeys, host_key

FAST = SelfFencingSettings(
    lease_ttl=1.5, watchdog_timeout=1.0, margin=0.5, peer_interval=0.5, peer_timeout=0.3
)
FAST_OVERRIDES = (
    "self_fencing.lease_ttl=1.5",
    "self_fencing.watchdog_timeout=1.0",
    "self_fencing.margin=0.5",
    "self_fencing.peer_interval=0.5",
    "self_fencing.peer_timeout=0.3",
    "recovery.fence_confirm_timeout=0.6",
    "recovery.retry_backoff=0.1",
)
SEGMENT = [("c1", "s"), ("c2", "s"), ("c3", "s")]

# --- the server's side, on a fake clock -------------------------------------------------


class Agents:
    """Agents beating on the fake clock, each acknowledging the grant of its last beat."""

    def __init__(self, keeper: LeaseKeeper) -> None:
        self.keeper = keeper
        self.seq: dict[str, int] = {}
        self.acked: dict[str, int] = {}

    def beat(self, host: str, *, hears_grant: bool = True, watchdog: float = 1.0) -> float | None:
        seq = self.seq[host] = self.seq.get(host, 0) + 1
        ttl = self.keeper.grant(host, watchdog, boot_id="b", seq=seq, ack=self.acked.get(host, 0))
        if ttl is not None and hears_grant:
            self.acked[host] = seq
        return ttl


def run(clock: FakeClock, agents: Agents, seconds: float, hosts: tuple[str, ...]) -> None:
    """``hosts`` beat every 0.25 s for ``seconds``, the last time at the end."""
    for _ in range(round(seconds / 0.25)):
        clock.advance(0.25)
        for h in hosts:
            agents.beat(h)


def keeper_for(clock: FakeClock) -> tuple[LeaseKeeper, Agents]:
    keeper = LeaseKeeper(clock, FAST, members=lambda: SEGMENT, refresh=0.0)
    return keeper, Agents(keeper)


def test_fence_confirmed_after_the_wait_while_a_majority_of_peers_is_connected() -> None:
    clock = FakeClock()
    keeper, agents = keeper_for(clock)
    clock.advance(100)
    run(clock, agents, 2.0, ("c1", "c2", "c3"))
    device = SelfFenceDevice(keeper, "c1")
    # not revoked yet: never OFF, however long the silence
    run(clock, agents, 10.0, ("c2", "c3"))
    assert device.power_status() == PowerState.ON
    assert agents.beat("c1") == FAST.lease_ttl  # it came back and beat
    last = clock.monotonic()
    device.power_off()  # the fence starts: no more grants
    assert agents.beat("c1") is None
    run(clock, agents, FAST.wait - 0.05, ("c2", "c3"))
    clock.advance(0.04)
    assert device.power_status() == PowerState.ON
    assert keeper.deadline("c1") == pytest.approx(last + FAST.wait)
    clock.advance(0.02)
    assert FAST.wait == pytest.approx(1.5 + 0.8 + 1.0 + 0.5)  # ttl + peer window + wd + margin
    assert device.power_status() == PowerState.OFF


def test_no_confirmation_without_a_connected_majority_of_the_segment() -> None:
    # c1 and c3 are cut off together (or vigil is cut from them): c1 could survive on
    # c3's "lost", so the server must not count c1 as fenced, however long it waits.
    clock = FakeClock()
    keeper, agents = keeper_for(clock)
    run(clock, agents, 2.0, ("c1", "c2", "c3"))
    keeper.revoke("c1")
    run(clock, agents, 60.0, ("c2",))
    assert keeper.deadline("c1") is None and not keeper.self_fenced("c1")
    # c3 is back: from the start of its run on, c1's checks fail
    run(clock, agents, FAST.wait + 0.75, ("c2", "c3"))
    back = keeper.run_since("c3")
    assert back is not None and back > 60
    assert keeper.deadline("c1") == pytest.approx(back + FAST.wait)
    assert keeper.self_fenced("c1")


def test_grants_a_peer_never_acknowledged_prove_nothing() -> None:
    # The server hears c2 and c3 and grants, but their grants are lost on the way back:
    # they answer c1 "lost", so their runs must not count.
    clock = FakeClock()
    keeper, agents = keeper_for(clock)
    run(clock, agents, 1.0, ("c1",))
    keeper.revoke("c1")
    for _ in range(80):
        agents.beat("c2", hears_grant=False)
        agents.beat("c3", hears_grant=False)
        clock.advance(0.25)
    assert keeper.run_since("c2") is None and not keeper.self_fenced("c1")


def test_a_run_breaks_when_acknowledgements_are_half_a_lease_apart() -> None:
    clock = FakeClock()
    keeper, agents = keeper_for(clock)
    run(clock, agents, 1.0, ("c2",))
    first = keeper.run_since("c2")
    assert first is not None
    clock.advance(FAST.lease_ttl / 2)  # no acknowledgement for half a lease
    assert keeper.run_since("c2") is None
    run(clock, agents, 0.5, ("c2",))
    again = keeper.run_since("c2")
    assert again is not None and again > first


def test_a_host_whose_agent_never_held_a_lease_is_never_confirmed() -> None:
    # c1's agent is heard, but the grants never reach it (a firewall on the way back, or
    # it had just started): it armed no watchdog and will not reset. Its peers are fine.
    clock = FakeClock()
    keeper, agents = keeper_for(clock)
    for _ in range(8):
        agents.beat("c1", hears_grant=False)
        agents.beat("c2")
        agents.beat("c3")
        clock.advance(0.25)
    device = SelfFenceDevice(keeper, "c1")
    with pytest.raises(PermanentError, match="held no lease when last heard"):
        device.power_off()
    keeper.revoke("c1")  # even revoked some other way: never confirmed
    run(clock, agents, 60.0, ("c2", "c3"))
    assert keeper.deadline("c1") is not None  # the wait alone would have passed
    assert not keeper.self_fenced("c1") and device.power_status() == PowerState.ON
    # Once a heartbeat says it holds a lease, waiting proves the reset again.
    keeper.reinstate("c1")
    agents.beat("c1")
    agents.beat("c1")  # acknowledges the grant the first one got
    device.power_off()
    run(clock, agents, FAST.wait + 0.5, ("c2", "c3"))
    assert device.power_status() == PowerState.OFF


def test_a_host_armed_when_it_failed_is_confirmed_though_its_next_boot_holds_no_lease() -> None:
    # It reset (its watchdog fired) and its agent is back before the wait is over:
    # revoked, it gets no grant, so its heartbeats say "no lease" -- about the new boot.
    clock = FakeClock()
    keeper, agents = keeper_for(clock)
    run(clock, agents, 2.0, ("c1", "c2", "c3"))
    device = SelfFenceDevice(keeper, "c1")
    device.power_off()
    agents.seq["c1"], agents.acked["c1"] = 0, 0  # the agent of the next boot
    for _ in range(round((FAST.wait + 0.5) / 0.25)):
        agents.beat("c1")
        agents.beat("c2")
        agents.beat("c3")
        clock.advance(0.25)
    assert device.power_status() == PowerState.OFF


def test_a_host_alone_in_its_segment_is_never_confirmed() -> None:
    clock = FakeClock()
    keeper = LeaseKeeper(clock, FAST, members=lambda: [("c1", "alone")], refresh=0.0)
    keeper.grant("c1", 1.0)
    keeper.revoke("c1")
    clock.advance(1000)
    assert not keeper.self_fenced("c1")
    assert LeaseKeeper(clock, FAST).deadline("c1") is None  # no membership: no peers


def test_the_grant_names_the_segment_and_its_size() -> None:
    keeper, _ = keeper_for(FakeClock())
    assert keeper.segment("c2") == ("s", 3)
    assert keeper.segment("unknown") == ("", 0)


def test_an_agent_with_a_slower_watchdog_or_peer_window_than_configured_is_waited_for() -> None:
    clock = FakeClock()
    keeper, agents = keeper_for(clock)
    run(clock, agents, 1.0, ("c2", "c3"))
    keeper.grant("c1", 6.0, peer_window=2.0)  # its watchdog waits 6 s, its window is 2 s
    last = clock.monotonic()
    keeper.revoke("c1")
    assert keeper.deadline("c1") == pytest.approx(last + 1.5 + 2.0 + 6.0 + 0.5)


def test_after_a_restart_the_server_waits_from_its_own_start_and_the_peers_runs() -> None:
    # A previous server process may have granted a lease just before it died, and the
    # host may have been surviving on its peers meanwhile.
    clock = FakeClock()
    keeper, agents = keeper_for(clock)
    started = clock.monotonic()
    keeper.revoke("c1")
    run(clock, agents, FAST.wait + 0.75, ("c2", "c3"))
    runs_from = keeper.run_since("c3")
    assert runs_from == pytest.approx(started + 0.5)  # its first ack, in its second beat
    assert keeper.deadline("c1") == pytest.approx(runs_from + FAST.wait)
    assert keeper.self_fenced("c1")


def test_a_failed_or_recovered_host_is_granted_nothing() -> None:
    keeper = LeaseKeeper(FakeClock(), FAST, may_grant=lambda h: h != "c1")
    assert keeper.grant("c1", 1.0) is None
    assert keeper.grant("c2", 1.0) == FAST.lease_ttl


@pytest.mark.parametrize(
    ("sf", "why"),
    [
        (SelfFencingSettings(lease_ttl=1.0), "six heartbeat intervals"),
        (SelfFencingSettings(margin=0.1), "clocks run"),
        (SelfFencingSettings(peer_interval=0.2, peer_timeout=0.3), "one peer check at a time"),
        (
            SelfFencingSettings(watchdog_timeout=1.0, margin=0.5, peer_timeout=0.6),
            "its watchdog would fire",
        ),
    ],
)
def test_unsafe_self_fencing_timing_is_refused(sf: SelfFencingSettings, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        sf.validate(DetectionSettings())


# --- the agent's side, with a watchdog test device ----------------------------------------


def test_agent_pets_only_while_the_lease_is_valid_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = tmp_path / "watchdog"
    device.touch()
    now = [100.0]
    fencer = SelfFencer(
        "c1",
        DeviceWatchdog(str(device)),
        interval=0.25,
        watchdog_timeout=8,
        monotonic=lambda: now[0],
    )
    assert not fencer.tick() and device.stat().st_size == 0  # not armed before a lease
    fencer.on_lease("c1", 103.0)
    fencer.on_lease("c2", 999.0)  # another host's lease means nothing here
    for _ in range(4):
        assert fencer.tick()
        now[0] += 0.5
    assert device.stat().st_size == 4
    now[0] = 103.0
    with caplog.at_level(logging.CRITICAL):
        assert not fencer.tick()
        assert not fencer.tick()
    assert device.stat().st_size == 4
    assert caplog.text.count("lease from vigil-server lost") == 1
    fencer.stop(disarm=True)
    assert device.read_bytes().endswith(b"V")  # magic close on a clean stop


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_real_udp_lease_petting_stops_when_the_server_revokes(
    tmp_path: Path, process: bool
) -> None:
    """Leases granted over real UDP by the receiver on a thread and in its own process
    (vigil-server's default), until the server revokes."""
    key = host_key("k", "c1").encode()  # c1's agent's; the server holds "k"
    keeper = LeaseKeeper(SystemClock(), FAST)
    table = HeartbeatTable(SystemClock())
    rx = HeartbeatReceiver(
        table,
        keys=AgentKeys(["k"]),
        known_host=lambda h: True,
        bind=("127.0.0.1", 0),
        clock=SystemClock(),
        leases=keeper,
        process=process,
    )
    device = tmp_path / "watchdog"
    device.touch()
    fencer = SelfFencer("c1", DeviceWatchdog(str(device)), interval=0.05, watchdog_timeout=1.0)
    sender = HeartbeatSender(
        ["c1"], server=rx.address, key=key, interval=0.1, watchdog=1.0, on_lease=fencer.on_lease
    )
    rx.start()
    sender.start()
    fencer.start()
    try:
        time.sleep(0.8)
        petted = device.stat().st_size
        assert petted >= 5 and fencer.lease_valid()
        keeper.revoke("c1")  # vigil decided to fence c1
        time.sleep(FAST.lease_ttl + 0.3)
        assert not fencer.lease_valid()
        stopped_at = device.stat().st_size
        time.sleep(0.5)
        assert device.stat().st_size == stopped_at  # no more petting
    finally:
        fencer.stop(disarm=True)
        sender.stop()
        rx.stop()


# --- end to end -------------------------------------------------------------------------


def test_total_power_loss_bmc_dead_recovered_after_the_computed_wait() -> None:
    opts = DemoOptions(hosts=3, instances=6, self_fencing=True, overrides=FAST_OVERRIDES)
    with Harness(opts) as h:
        h.cloud.bmc_unreachable("compute-1", True)
        t0 = h.inject("power-loss", "compute-1")
        recovery = h.watch("compute-1", t0, timeout=20)
        assert recovery is not None and recovery["status"] == "succeeded", recovery
        fence = next(s for s in recovery["steps"] if s["kind"] == "fence")
        assert fence["result"]["level"] == 2  # the BMC failed; the watchdog level confirmed
        # the last grant was at most one heartbeat interval before the power loss
        assert fence["finished_at"] - t0 >= FAST.wait - 0.25
        assert h.cloud.double_running() == []
        evacs = [s for s in recovery["steps"] if s["kind"] == "evacuate"]
        assert len(evacs) == 2 and all(s["status"] == "succeeded" for s in evacs)


def test_isolated_host_with_dead_bmc_resets_itself_before_anything_moves() -> None:
    opts = DemoOptions(hosts=3, instances=6, self_fencing=True, overrides=FAST_OVERRIDES)
    with Harness(opts) as h:
        h.cloud.bmc_unreachable("compute-1", True)
        victims = [i.id for i in h.cloud.instances() if i.host == "compute-1"]
        t0 = h.inject("isolation", "compute-1")  # still running its VMs, unreachable
        recovery = h.watch("compute-1", t0, timeout=20)
        assert recovery is not None and recovery["status"] == "succeeded", recovery
        assert "compute-1" in h.agents.resets  # its watchdog fired
        assert_reset_before_any_evacuation(h, "compute-1")
        assert h.cloud.double_running() == []  # so nothing ever ran twice
        for iid in victims:
            inst = h.cloud.instance(iid)
            assert inst.host != "compute-1" and inst.running_on == {inst.host}


def assert_reset_before_any_evacuation(h: Harness, host: str) -> None:
    resets = [r.at for r in h.cloud.power_offs() if r.host == host and r.cause == "watchdog"]
    moves = [e.at for e in h.cloud.evacuations() if e.source == host]
    assert resets and moves and min(resets) < min(moves), (resets, moves)


def test_a_host_cut_from_the_server_only_resets_since_its_peers_still_hear_vigil() -> None:
    opts = DemoOptions(hosts=3, instances=6, self_fencing=True, overrides=FAST_OVERRIDES)
    with Harness(opts) as h:
        h.cloud.bmc_unreachable("compute-1", True)
        t0 = time.time()
        h.cloud.cut_from_server("compute-1", True)  # its peers still answer it: "fresh"
        recovery = h.watch("compute-1", t0, timeout=20)
        assert recovery is not None and recovery["status"] == "succeeded", recovery
        assert h.agents.resets == ["compute-1"]
        assert_reset_before_any_evacuation(h, "compute-1")
        assert h.cloud.double_running() == []


def test_vigil_server_down_for_longer_than_a_lease_resets_no_host() -> None:
    opts = DemoOptions(hosts=3, instances=3, self_fencing=True, overrides=FAST_OVERRIDES)
    with Harness(opts) as h:
        time.sleep(1.0)  # every agent holds a lease
        h.server.stop()  # vigil is gone: nobody is granted anything any more
        h.server.stop = lambda: None  # type: ignore[method-assign]  # (stopped once)
        time.sleep(3 * FAST.wait)
        assert h.agents.resets == []
        assert [r for r in h.cloud.power_offs() if r.cause == "watchdog"] == []


def test_healthy_self_fencing_hosts_never_reset() -> None:
    opts = DemoOptions(hosts=3, instances=3, self_fencing=True, overrides=FAST_OVERRIDES)
    with Harness(opts) as h:
        h.cloud.set_network(loss=0.05, jitter=0.2)
        time.sleep(4)
        assert h.agents.resets == []
        assert h.client.get("/v1/recoveries").json() == []
