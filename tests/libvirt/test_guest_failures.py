"""Guest OS failures on a real libvirt + QEMU guest (software emulation), end to end:
libvirt event → agent monitor → signed HTTP report → persisted failure → policy → action.

The guests of a test boot in parallel (~11 s each to init) to keep the tier short."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from lvstack import HOST, KEY, PrivateLibvirtd, Stack
from lvstack import guest_files as guest_files
from lvstack import lv_stack as lv_stack
from lvstack import private_stack as private_stack
from lvstack import shared_libvirt as shared_libvirt
from support import wait_until

from vigil.agent.services import ServiceWatch
from vigil.engine.guest import GuestPolicy
from vigil.model import GuestFailureKind, GuestFailureStatus, HaPolicy, HostState
from vigil.wire.keys import host_key

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def test_watchdog_notify_reset_and_panic_restart(lv_stack: Stack) -> None:
    stack = lv_stack
    notify = stack.define("hang", watchdog="none")
    reset = stack.define("hang", watchdog="reset")
    panic = stack.define("panic", on_crash="destroy")
    ids = {d: d.UUIDString() for d in (notify, reset, panic)}
    stack.policies[ids[notify]] = GuestPolicy(HaPolicy.KEEP_RUNNING, watchdog_notify=True)
    stack.policies[ids[reset]] = GuestPolicy(HaPolicy.KEEP_RUNNING)
    stack.policies[ids[panic]] = GuestPolicy(HaPolicy.KEEP_RUNNING)
    for dom in (notify, reset, panic):
        dom.create()

    # Panic → CRASHED/PANICKED (pvpanic), then STOPPED/CRASHED: one failure, restarted.
    wait_until(
        lambda: stack.compute.calls,
        "the crashed guest to be restarted",
        90,
        every=0.2,
        ignoring=(Exception,),
    )
    assert stack.compute.calls[0][:2] == ("start", ids[panic])
    wait_until(
        lambda: "vigil.instance.guest.restart.end" in stack.events(ids[panic]),
        "ACTIVE",
        30,
        every=0.2,
        ignoring=(Exception,),
    )
    assert panic.isActive()
    [crash] = stack.failures(ids[panic])
    assert crash.kind == GuestFailureKind.CRASHED and crash.restarts == 1

    # Watchdog with libvirt action none + vigil notify: the owner told, the VM untouched.
    wait_until(
        lambda: "vigil.instance.guest.notify" in stack.events(ids[notify]),
        "notify",
        60,
        every=0.2,
        ignoring=(Exception,),
    )
    [fired] = stack.failures(ids[notify])
    assert fired.kind == GuestFailureKind.WATCHDOG and fired.detail["action"] == "none"
    assert fired.status == GuestFailureStatus.NOTIFIED
    assert notify.isActive() and notify.state()[0] == 1  # running, not paused nor reset
    assert not [c for c in stack.compute.calls if c[1] == ids[notify]]

    # Watchdog reset: QEMU resets the guest (Nova's policy); vigil counts each firing.
    wait_until(
        lambda: stack.failures(ids[reset]),
        "the reset to be recorded",
        60,
        every=0.2,
        ignoring=(Exception,),
    )
    [resets] = stack.failures(ids[reset])
    assert resets.detail["action"] == "reset" and resets.count >= 1
    assert not [c for c in stack.compute.calls if c[1] == ids[reset]]
    # ...and QEMU did reset the guest (libvirt's REBOOT event follows the firing).
    wait_until(
        lambda: any(u == ids[reset] and e == "reboot" for _, u, e, _ in stack.seen),
        "the guest to be reset",
        10,
        every=0.2,
        ignoring=(Exception,),
    )


def test_libvirtd_restart_misses_no_state_change(
    private_stack: tuple[Stack, PrivateLibvirtd],
) -> None:
    stack, daemon = private_stack
    dies = stack.define("idle")
    lives = stack.define("idle")
    for dom in (dies, lives):
        stack.policies[dom.UUIDString()] = GuestPolicy(HaPolicy.KEEP_RUNNING)
        dom.create()
    wait_until(
        lambda: all(
            (s := stack.monitor.known(d.UUIDString())) and s.state == "running"
            for d in (dies, lives)
        ),
        "the monitor to see both guests running",
        30,
        every=0.2,
        ignoring=(Exception,),
    )
    qemu = daemon.qemu_pid(dies.name())

    daemon.kill()  # the close callback fires at once
    wait_until(
        lambda: not stack.monitor.connected.is_set(),
        "the monitor to notice",
        15,
        every=0.2,
        ignoring=(Exception,),
    )
    os.kill(qemu, signal.SIGKILL)  # a guest dies while nobody is listening
    time.sleep(1)
    daemon.restart()

    wait_until(
        lambda: stack.monitor.connections >= 2,
        "the monitor to reconnect",
        30,
        every=0.2,
        ignoring=(Exception,),
    )
    dies_id, lives_id = dies.UUIDString(), lives.UUIDString()
    wait_until(
        lambda: stack.failures(dies_id),
        "the death to be reported",
        30,
        every=0.2,
        ignoring=(Exception,),
    )
    [failure] = stack.failures(dies_id)
    # libvirtd, finding the QEMU gone when it starts, records the domain shut off
    # with reason "crashed".
    assert failure.kind == GuestFailureKind.CRASHED
    assert failure.detail["event"] == "reconnect"
    wait_until(
        lambda: "vigil.instance.guest.restart.end" in stack.events(dies_id),
        "restart",
        60,
        every=0.2,
        ignoring=(Exception,),
    )
    assert stack.compute.get_server(dies_id).status == "ACTIVE"
    assert stack.failures(lives_id) == []  # it kept running: nothing to report


def test_libvirtd_down_disables_the_host_for_scheduling_until_it_is_back(
    private_stack: tuple[Stack, PrivateLibvirtd],
) -> None:
    """libvirtd killed: its guest runs on, the agent's service watch reports it down, the
    server disables the host's compute service (no fencing); restarted: enabled again."""
    stack, daemon = private_stack
    # The host's heartbeats arrive (this stack has no host engine): it is UP.
    stack.store.set_host_state(HOST, HostState.UP, reason="heartbeats", at=time.time())
    dom = stack.define("idle")
    dom.create()
    watch = ServiceWatch(
        host=HOST,
        server_url=f"http://127.0.0.1:{stack.port}",
        key=host_key(KEY, HOST).encode(),
        # This test's own libvirtd, told apart from the machine's by its pid file.
        services={"libvirtd": rf"^libvirtd .*{re.escape(str(daemon.pid_file))}"},
        interval=0.2,
    )
    watch.start()
    try:
        wait_until(
            lambda: stack.store.get_host_services(HOST),
            "the first snapshot",
            15,
            every=0.2,
            ignoring=(Exception,),
        )
        assert not stack.compute.service.disabled
        qemu = daemon.qemu_pid(dom.name())

        daemon.kill()
        wait_until(
            lambda: stack.compute.service.disabled,
            "the host to be disabled",
            15,
            every=0.2,
            ignoring=(Exception,),
        )
        wait_until(
            lambda: stack.store.get_host_services(HOST).hold.value == "disabled",
            "the hold to be recorded",
            5,
            every=0.2,
            ignoring=(Exception,),
        )
        assert stack.compute.service.disabled_reason == "vigil: host services down: libvirtd"
        assert not stack.compute.service.forced_down
        os.kill(qemu, 0)  # the guest still runs without its libvirtd

        daemon.restart()
        wait_until(
            lambda: not stack.compute.service.disabled,
            "the host to be enabled",
            15,
            every=0.2,
            ignoring=(Exception,),
        )

        def host_events() -> list[str]:
            events = stack.store.list_events(limit=1000)
            return [e.event_type for e in events if e.instance_id is None]

        # The hold and its event are written right after the compute service's answer.
        wait_until(
            lambda: "vigil.host.compute.enabled" in host_events(),
            "the last event",
            5,
            every=0.2,
            ignoring=(Exception,),
        )
        assert host_events() == [
            "vigil.host.service.down",
            "vigil.host.compute.disabled",
            "vigil.host.service.up",
            "vigil.host.compute.enabled",
        ]
        assert stack.failures(dom.UUIDString()) == []  # its guest never failed
    finally:
        watch.stop()
