"""The real QEMU guest agent in a real QEMU guest, spoken to through libvirt
(``vigil.agent.guest_agent``): what the application checks of issue 17 are built on.

One tiny guest (``tinyguest.build_guest(guest_agent=True)``: Debian's ``qemu-ga`` in a
busybox initramfs, busybox ``httpd`` on 127.0.0.1:8080 inside the guest) boots once for
the session (``conftest.py``, shared with ``test_app_checks.py``; ~15 s to the agent
under software emulation)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest

from vigil.agent.guest_agent import GuestAgent, GuestAgentError

pytestmark = [pytest.mark.libvirt, pytest.mark.guest_agent, pytest.mark.slow]

# Busybox applets named through busybox itself: this static busybox's wget, run by its
# symlink with -T, died of SIGSEGV under guest-exec.
BUSYBOX = "/bin/busybox"
FETCH = [BUSYBOX, "wget", "-q", "-O", "-", "http://127.0.0.1:8080/"]


def test_a_command_runs_in_the_guest_and_a_killed_service_fails_its_check(
    agent_guest: tuple[GuestAgent, Any],
) -> None:
    agent, dom = agent_guest
    served = agent.exec(dom, FETCH, timeout=5)
    assert served.ok and served.stdout == "vigil-guest ok\n"

    assert agent.exec(dom, [BUSYBOX, "killall", "httpd"], timeout=5).ok
    failed = agent.exec(dom, FETCH, timeout=5)
    assert not failed.ok and failed.exit_code != 0  # connection refused inside the guest

    # The restart a ladder's first rung would run, then the check passes again.
    assert agent.exec(dom, [BUSYBOX, "httpd", "-p", "127.0.0.1:8080", "-h", "/www"], timeout=5).ok
    assert agent.exec(dom, FETCH, timeout=5).ok


def test_a_command_that_does_not_end_in_time_is_reported_not_waited_for(
    agent_guest: tuple[GuestAgent, Any],
) -> None:
    agent, dom = agent_guest
    started = time.monotonic()
    with pytest.raises(GuestAgentError, match="did not end within 1s"):
        agent.exec(dom, [BUSYBOX, "sleep", "30"], timeout=1)
    assert time.monotonic() - started < 3


def test_a_guest_whose_agent_stopped_does_not_answer_and_the_call_is_bounded(
    agent_guest: tuple[GuestAgent, Any],
) -> None:
    agent, dom = agent_guest
    agent.ping(dom, timeout=2)
    with contextlib.suppress(GuestAgentError):  # the agent may die before it answers
        agent.exec(dom, [BUSYBOX, "killall", "-STOP", "qemu-ga"], timeout=2)
    started = time.monotonic()
    with pytest.raises(GuestAgentError) as caught:
        agent.ping(dom, timeout=2)
    assert caught.value.unresponsive
    assert time.monotonic() - started < 8
