"""Application checks end to end on the real tiny guest (``conftest.py``: Debian's
qemu-ga, busybox httpd on 127.0.0.1:8080 inside): vigil's server side in this process
(SQLite store, ``AppHealth`` over the simulated Nova in real time, its loop on a
thread, the agents' route on a real uvicorn) and a real ``AppChecks`` reaching the guest
through libvirt (``appstack.py``):

- httpd killed in the guest: the ``http`` check fails, vigil opens the failure, its
  restart command runs in the guest, the check passes, the failure is resolved;
- a restart that does not help: the ladder climbs to a reboot through (simulated) Nova,
  escalates, and then does nothing more;
- a paused guest: its checks are suspended, no failure opens;
- a guest agent that stops answering: the ``guest-agent`` check fails and the ladder
  reboots the guest (Nova's side simulated, its reboot done to the real guest), which
  answers again.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from appstack import AppStack
from support import wait_until

from vigil.agent.guest_agent import GuestAgent, GuestAgentError
from vigil.model import AppEpisodeStatus, Health
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimCompute

pytestmark = [pytest.mark.libvirt, pytest.mark.guest_agent, pytest.mark.slow]

BUSYBOX = "/bin/busybox"  # applets through busybox itself (see conftest.py)
# By its applet link, as the guest's /init starts it: a process named httpd.
START_HTTPD = ("/bin/httpd", "-p", "127.0.0.1:8080", "-h", "/www")

# Intervals the software-emulated guest meets (a run takes ~0.5-1 s there); grace 0:
# the agent sees the domain for the first time when it starts, which is a (re)start.
INTERVAL, THRESHOLD = 2.0, 2
WEB = f"type=http port=8080 path=/ interval={INTERVAL:g} timeout=1.5 threshold={THRESHOLD} grace=0"
RESTART = f"restart-command={shlex.quote(shlex.join(START_HTTPD))}"


def declaring(ladder: str) -> dict[str, str]:
    return {"vigil:check:web": WEB, "vigil:app_recovery": ladder}


def health(stack: AppStack, iid: str) -> Health | None:
    """The ``web`` check's health as the server recorded it (None: not yet)."""
    inst = stack.store.get_app_instance(iid)
    state = None if inst is None else inst.checks.get("web")
    return None if state is None else state.health


def httpd_runs(agent: GuestAgent, dom: Any) -> bool:
    return bool(agent.exec(dom, [BUSYBOX, "pidof", "httpd"], timeout=10).stdout.split())


def kill_httpd(agent: GuestAgent, dom: Any) -> None:
    assert agent.exec(dom, [BUSYBOX, "killall", "httpd"], timeout=10).ok
    assert not httpd_runs(agent, dom)


@pytest.fixture
def guest(agent_guest: tuple[GuestAgent, Any], booted_guest: Any) -> Iterator[Any]:
    """The shared guest, healthy; left healthy (httpd serving, running) for the next."""
    yield booted_guest
    if booted_guest.dom.info()[0] == 3:  # VIR_DOMAIN_PAUSED
        booted_guest.dom.resume()
    booted_guest.make_healthy()


@contextlib.contextmanager
def started(tmp_path: Path, iid: str, ladder: str) -> Iterator[AppStack]:
    """The stack running, once the server has heard the check pass."""
    with AppStack(tmp_path, {iid: declaring(ladder)}) as stack:
        wait_until(
            lambda: health(stack, iid) == Health.HEALTHY,
            "the http check reported healthy to the server",
            60,
            every=0.2,
        )
        yield stack


def test_a_killed_service_is_restarted_in_the_guest_and_the_failure_resolved(
    guest: Any, tmp_path: Path
) -> None:
    iid = guest.dom.UUIDString()
    with started(tmp_path, iid, f"{RESTART} restarts=2 reboots=1 settle=30 backoff=0") as stack:
        kill_httpd(guest.agent, guest.dom)
        wait_until(
            lambda: "vigil.app.resolved" in stack.event_types(iid),
            "the application failure resolved",
            60,
            every=0.2,
        )
        events = stack.events(iid)
        assert [e.event_type for e in events] == [
            "vigil.app.check.failing",
            "vigil.app.failure",
            "vigil.app.recovery.start",
            "vigil.app.recovery.end",
            "vigil.app.check.healthy",
            "vigil.app.resolved",
        ]
        data = {e.event_type: e.payload["vigil_object.data"] for e in events}
        assert data["vigil.app.check.failing"]["detail"].startswith("exit 1"), data
        assert data["vigil.app.recovery.start"]["rung"] == "restart-app"
        # The agent's outcome of the command it ran in the guest.
        assert data["vigil.app.recovery.end"]["reason"].startswith("exit 0 in "), data
        inst = stack.instance(iid)
        assert inst.episode is not None and inst.episode.status == AppEpisodeStatus.RESOLVED
        assert inst.checks["web"].health == Health.HEALTHY
        assert stack.cloud.calls("reboot", iid) == 0
    assert httpd_runs(guest.agent, guest.dom)


def test_a_restart_that_does_not_help_climbs_to_a_reboot_escalates_and_stops(
    guest: Any, tmp_path: Path
) -> None:
    iid = guest.dom.UUIDString()
    ladder = "restart-command='/bin/busybox true' restarts=1 reboots=1 settle=5 backoff=0"
    with started(tmp_path, iid, ladder) as stack:
        kill_httpd(guest.agent, guest.dom)
        wait_until(
            lambda: "vigil.app.escalated" in stack.event_types(iid),
            "the application failure escalated",
            60,
            every=0.2,
        )
        events = stack.events(iid)
        assert [e.event_type for e in events] == [
            "vigil.app.check.failing",
            "vigil.app.failure",
            "vigil.app.recovery.start",
            "vigil.app.recovery.end",
            "vigil.app.recovery.start",
            "vigil.app.recovery.end",
            "vigil.app.escalated",
        ]
        rungs = [
            e.payload["vigil_object.data"]["rung"]
            for e in events
            if e.event_type == "vigil.app.recovery.start"
        ]
        assert rungs == ["restart-app", "soft-reboot"]
        starts = [e.timestamp for e in events if e.event_type == "vigil.app.recovery.start"]
        assert starts[1] - starts[0] >= 5.0  # the restart was given its settle time
        assert stack.cloud.calls("reboot", iid) == 1
        assert not httpd_runs(guest.agent, guest.dom)  # "true" restarted nothing

        # Escalated: the checks still fail, vigil acts no more (several settle times).
        time.sleep(12)
        assert stack.event_types(iid) == [e.event_type for e in events]
        assert stack.cloud.calls("reboot", iid) == 1
        inst = stack.instance(iid)
        assert inst.checks["web"].health == Health.FAILING
        assert inst.episode is not None and inst.episode.status == AppEpisodeStatus.ESCALATED
        assert inst.episode.attempts == 2
    assert guest.agent.exec(guest.dom, START_HTTPD, timeout=10).ok
    assert httpd_runs(guest.agent, guest.dom)


def test_a_paused_guest_has_its_checks_suspended_and_is_not_recovered(
    guest: Any, tmp_path: Path
) -> None:
    iid = guest.dom.UUIDString()
    with started(tmp_path, iid, f"{RESTART} restarts=2 reboots=1 settle=30") as stack:
        guest.dom.suspend()
        try:
            wait_until(
                lambda: health(stack, iid) == Health.SUSPENDED,
                "the check reported SUSPENDED",
                30,
                every=0.2,
            )
            detail = stack.instance(iid).checks["web"].detail
            assert detail == "paused", detail
            # Paused well past what would fail a check that ran (threshold x interval).
            time.sleep(THRESHOLD * INTERVAL * 2 + 2)
            assert health(stack, iid) == Health.SUSPENDED
        finally:
            guest.dom.resume()
        wait_until(
            lambda: health(stack, iid) == Health.HEALTHY,
            "the check reported healthy after the guest resumed",
            30,
            every=0.2,
        )
        assert stack.event_types(iid) == []
        inst = stack.instance(iid)
        assert inst.episode is None
        assert stack.cloud.calls("reboot", iid) == 0


class RebootsTheGuest(SimCompute):
    """Nova's side simulated, its reboots done to the real guest (a reset through
    libvirt, as a hard reboot by a real Nova would)."""

    def __init__(self, cloud: SimCloud, dom: Any) -> None:
        super().__init__(cloud)
        self._dom = dom

    def reboot(self, server_id: str, hard: bool = True) -> None:
        super().reboot(server_id, hard)
        self._dom.reset(0)


def test_a_guest_agent_that_stops_answering_is_detected_and_the_ladder_reboots_the_guest(
    guest: Any, tmp_path: Path
) -> None:
    iid = guest.dom.UUIDString()
    checks = {
        "vigil:check:agent": "type=guest-agent interval=2 timeout=1 threshold=2 grace=0",
        # No restart command (it would run through the very agent that hangs); the
        # reboot is given two minutes for the software-emulated guest to boot.
        "vigil:app_recovery": "reboots=1 settle=120 backoff=0",
    }

    def agent_health(stack: AppStack) -> Health | None:
        inst = stack.store.get_app_instance(iid)
        state = None if inst is None else inst.checks.get("agent")
        return None if state is None else state.health

    with AppStack(
        tmp_path, {iid: checks}, compute=lambda cloud: RebootsTheGuest(cloud, guest.dom)
    ) as stack:
        wait_until(lambda: agent_health(stack) == Health.HEALTHY, "the agent answering", 60)
        with contextlib.suppress(GuestAgentError):  # its status is never read: it stopped
            guest.agent.exec(guest.dom, [BUSYBOX, "killall", "-STOP", "qemu-ga"], timeout=3)
        wait_until(
            lambda: "vigil.app.resolved" in stack.event_types(iid),
            "the failure detected, the guest rebooted and its agent answering again",
            150,
            every=0.5,
        )
        events = stack.events(iid)
        assert [e.event_type for e in events] == [
            "vigil.app.check.failing",
            "vigil.app.failure",
            "vigil.app.recovery.start",
            "vigil.app.recovery.end",
            "vigil.app.check.healthy",
            "vigil.app.resolved",
        ]
        data = {e.event_type: e.payload["vigil_object.data"] for e in events}
        assert data["vigil.app.recovery.start"]["rung"] == "soft-reboot"
        assert stack.cloud.calls("reboot", iid) == 1
    guest.agent.ping(guest.dom, timeout=5)  # the rebooted guest's own agent
