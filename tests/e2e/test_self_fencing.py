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
from vigil.drivers.fencing import PowerState
from vigil.engine.heartbeat import HeartbeatReceiver, HeartbeatTable
from vigil.engine.lease import LeaseKeeper, SelfFenceDevice

FAST = SelfFencingSettings(lease_ttl=1.0, watchdog_timeout=1.0, margin=0.5)
FAST_OVERRIDES = (
    "self_fencing.lease_ttl=1.0",
    "self_fencing.watchdog_timeout=1.0",
    "self_fencing.margin=0.5",
    "recovery.fence_confirm_timeout=0.6",
    "recovery.retry_backoff=0.1",
)

# --- the server's side, on a fake clock -------------------------------------------------


def test_fence_confirmed_only_after_last_grant_plus_ttl_watchdog_and_margin() -> None:
    clock = FakeClock()
    keeper = LeaseKeeper(clock, FAST)
    clock.advance(100)
    assert keeper.grant("c1", 1.0) == 1.0
    device = SelfFenceDevice(keeper, "c1")
    clock.advance(0.2)
    # not revoked yet: never OFF, however long the silence
    clock.advance(10)
    assert device.power_status() == PowerState.ON
    assert keeper.grant("c1", 1.0) == 1.0  # it came back and beat
    last = clock.monotonic()
    device.power_off()  # the fence starts: no more grants
    assert keeper.grant("c1", 1.0) is None
    clock.advance(FAST.wait - 0.01)
    assert device.power_status() == PowerState.ON
    clock.advance(0.01)
    assert clock.monotonic() - last == pytest.approx(2.5)
    assert device.power_status() == PowerState.OFF


def test_an_agent_with_a_slower_watchdog_than_configured_is_waited_for() -> None:
    clock = FakeClock()
    keeper = LeaseKeeper(clock, FAST)
    keeper.grant("c1", 6.0)  # the agent says its watchdog waits 6 s, not 1
    keeper.revoke("c1")
    clock.advance(FAST.wait + 1)
    assert not keeper.self_fenced("c1")
    clock.advance(5.0)
    assert keeper.self_fenced("c1")


def test_after_a_restart_the_server_waits_from_its_own_start() -> None:
    # A previous server process may have granted a lease just before it died.
    clock = FakeClock()
    keeper = LeaseKeeper(clock, FAST)
    keeper.revoke("c1")
    clock.advance(FAST.wait - 0.1)
    assert not keeper.self_fenced("c1")
    clock.advance(0.1)
    assert keeper.self_fenced("c1")


@pytest.mark.parametrize(
    ("sf", "why"),
    [
        (SelfFencingSettings(lease_ttl=0.5), "four heartbeat intervals"),
        (SelfFencingSettings(margin=0.1), "clocks run"),
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


def test_real_udp_lease_petting_stops_when_the_server_revokes(tmp_path: Path) -> None:
    key = b"k"
    keeper = LeaseKeeper(SystemClock(), FAST)
    table = HeartbeatTable(SystemClock())
    rx = HeartbeatReceiver(
        table,
        key=key,
        known_host=lambda h: True,
        bind=("127.0.0.1", 0),
        clock=SystemClock(),
        leases=keeper,
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
        assert h.cloud.double_running() == []  # so nothing ever ran twice
        for iid in victims:
            inst = h.cloud.instance(iid)
            assert inst.host != "compute-1" and inst.running_on == {inst.host}


def test_healthy_self_fencing_hosts_never_reset() -> None:
    opts = DemoOptions(hosts=3, instances=3, self_fencing=True, overrides=FAST_OVERRIDES)
    with Harness(opts) as h:
        h.cloud.set_network(loss=0.05, jitter=0.2)
        time.sleep(4)
        assert h.agents.resets == []
        assert h.client.get("/v1/recoveries").json() == []
