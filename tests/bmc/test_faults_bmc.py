"""Faults against real BMCs, fencing levels through the engine's fence step, and the
search for the BMC password in everything a run leaves behind.

Faults: wrong credentials (Redfish emulator, virtualbmc, both fence agents), TLS that
does not verify, a system that does not exist, an unknown IPMI user, a BMC that does not
answer (a silent UDP port), an agent that runs too long, and BMCs that say "done" while
the power stays on (an IPMI BMC and a Redfish BMC behind fence_redfish).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from support import wait_until

from vigil.drivers.errors import NotFound, PermanentError, TemporaryError
from vigil.drivers.fence_factory import build_fence_devices
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.engine.steps import Done, fence
from vigil.model import FenceMethod

from .conftest import Lab
from .emulators import FakeRedfish, LyingIpmiBmc, SilentPort, free_port
from .helpers import HOST, exception_texts, record_texts, secret_forms, step_context

pytestmark = pytest.mark.bmc

WRONG = "wrong-pw-0123456"


def one(method: FenceMethod) -> FenceDevice:
    (device,) = build_fence_devices(HOST.name, [method])
    return device


@pytest.fixture
def levels_domain_on(lab: Lab) -> Iterator[None]:
    """The "levels" domain runs at the start of the test, and again afterwards."""
    domain = lab.domains["levels"]
    domain.start()
    wait_until(domain.is_running, f"{domain.name} running", 30, every=0.1, ignoring=(Exception,))
    yield
    domain.start()


# ------------------------------------------------------------------- wrong credentials


def test_redfish_wrong_password(lab: Lab) -> None:
    device = one(FenceMethod("redfish", lab.redfish_options("levels", password=WRONG)))
    with pytest.raises(PermanentError, match=r"refused the login \(HTTP 401\)") as caught:
        device.power_off()
    for text in exception_texts(caught.value):
        assert WRONG not in text and lab.password not in text


def test_ipmi_wrong_password(lab: Lab) -> None:
    device = one(FenceMethod("ipmi", lab.ipmi_options("levels", password=WRONG)))
    with pytest.raises(PermanentError, match="wrong password") as caught:
        device.power_off()
    assert WRONG not in str(caught.value)


def test_ipmi_unknown_user_is_reported_not_waited_for(lab: Lab) -> None:
    # virtualbmc ignores a login by an unknown user instead of refusing it
    device = one(FenceMethod("ipmi", lab.ipmi_options("levels", username="nobody")))
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="stopped answering the login"):
        device.power_status()
    assert time.monotonic() - started < 8


@pytest.mark.parametrize("agent", ["fence_ipmilan", "fence_redfish"])
def test_fence_agent_wrong_password(lab: Lab, fence_agents: None, agent: str) -> None:
    options = (
        lab.fence_ipmilan_options("levels", password=WRONG)
        if agent == "fence_ipmilan"
        else lab.fence_redfish_options("levels", password=WRONG)
    )
    device = one(FenceMethod("fence-agent", options))
    with pytest.raises((TemporaryError, PermanentError)) as caught:
        device.power_off()
    assert f"fence-agent {agent}" in str(caught.value)
    assert WRONG not in str(caught.value) and lab.password not in str(caught.value)


# ------------------------------------------------------------------- TLS, systems


def test_redfish_tls_is_verified(lab: Lab) -> None:
    other_ca = one(
        FenceMethod("redfish", lab.redfish_options("levels", ca_bundle=str(lab.tls.other_ca)))
    )
    with pytest.raises(PermanentError, match="TLS verification failed"):
        other_ca.power_status()
    options = lab.redfish_options("levels")
    del options["ca_bundle"]
    system_cas = one(FenceMethod("redfish", options))
    with pytest.raises(PermanentError, match="TLS verification failed"):
        system_cas.power_status()
    unverified = one(FenceMethod("redfish", {**options, "ssl_verify": "false"}))
    assert unverified.power_status() in (PowerState.ON, PowerState.OFF)


def test_redfish_systems(lab: Lab) -> None:
    options = lab.redfish_options("levels")
    del options["system_id"]
    with pytest.raises(PermanentError, match=f"has {len(lab.domains)} systems"):
        one(FenceMethod("redfish", options)).power_status()
    with pytest.raises(NotFound, match="no system"):
        one(FenceMethod("redfish", {**options, "system_id": "no-such-system"})).power_status()


# ------------------------------------------------------------------- no answer


def test_ipmi_bmc_that_does_not_answer() -> None:
    with SilentPort(socket.SOCK_DGRAM) as silent:
        options = {
            "address": "127.0.0.1",
            "ipport": str(silent.port),
            "username": "admin",
            "password": WRONG,
            "timeout": "2",
        }
        device = one(FenceMethod("ipmi", options))
        started = time.monotonic()
        with pytest.raises(TemporaryError, match=r"within 2s|does not answer"):
            device.power_status()
        assert time.monotonic() - started < 4


def test_fence_agent_that_runs_too_long_is_killed(lab: Lab, fence_agents: None) -> None:
    with SilentPort(socket.SOCK_DGRAM) as silent:
        options = lab.fence_ipmilan_options(
            "levels", ipport=str(silent.port), agent_timeout="1.5", login_timeout="30"
        )
        device = one(FenceMethod("fence-agent", options))
        started = time.monotonic()
        with pytest.raises(TemporaryError, match="agent killed"):
            device.power_off()
        assert time.monotonic() - started < 5


# ------------------------------------------------------------------- BMCs that lie


def test_ipmi_bmc_that_says_done_while_the_power_stays_on() -> None:
    with LyingIpmiBmc("admin", "liar-password") as liar:
        options = {
            "address": "127.0.0.1",
            "ipport": str(liar.port),
            "username": "admin",
            "password": "liar-password",
        }
        device = one(FenceMethod("ipmi", options))
        assert device.power_status() == PowerState.ON
        device.power_off()  # "done"
        with pytest.raises(TemporaryError, match="not fenced") as caught:
            fence(step_context([device], confirm_timeout=1.5), HOST)
        assert "power still on" in str(caught.value)
        assert device.power_status() == PowerState.ON


def test_fence_redfish_agent_against_a_lying_bmc(lab: Lab, fence_agents: None) -> None:
    with FakeRedfish({lab.username: lab.password}, tls=lab.tls) as liar:
        liar.state.lies = True
        options = {
            "agent": "fence_redfish",
            "ip": "127.0.0.1",
            "ipport": str(liar.port),
            "username": lab.username,
            "password": lab.password,
            "ssl_insecure": "1",
            "systems_uri": "/redfish/v1/Systems/node-1",
            "power_timeout": "2",
        }
        device = one(FenceMethod("fence-agent", options))
        assert device.power_status() == PowerState.ON
        with pytest.raises(TemporaryError, match="not fenced") as caught:
            fence(step_context([device], confirm_timeout=1.0), HOST)
        assert "ForceOff" in liar.state.resets
        assert "Timed out waiting to power OFF" in str(caught.value)
        assert lab.password not in str(caught.value)


# ------------------------------------------------------------------- fencing levels


@pytest.mark.parametrize("level1", ["ipmi-wrong-password", "ipmi-unreachable"])
def test_level_1_fails_level_2_fences_for_real(
    lab: Lab, levels_domain_on: None, level1: str
) -> None:
    if level1 == "ipmi-wrong-password":
        first = FenceMethod("ipmi", lab.ipmi_options("levels", password=WRONG))
    else:
        closed = str(free_port(socket.SOCK_DGRAM))
        first = FenceMethod("ipmi", lab.ipmi_options("levels", ipport=closed, timeout="2"))
    second = FenceMethod("redfish", lab.redfish_options("levels"))
    devices = build_fence_devices(HOST.name, [first, second])
    before = time.time()
    done = fence(step_context(devices, confirm_timeout=30), HOST)
    assert done.result is not None
    # a power-off, not a reset: what landed on the host before it is off moves
    assert done.result == {
        "level": 2,
        "device": devices[1].description,
        "resets": False,
        "confirmed_at": done.result["confirmed_at"],
    }
    assert before <= done.result["confirmed_at"] <= time.time()
    assert "confirmed by redfish" in done.detail
    assert lab.domains["levels"].state() == "shut off"


def test_every_level_failing_is_one_error_naming_each(lab: Lab) -> None:
    closed = str(free_port(socket.SOCK_DGRAM))
    devices = build_fence_devices(
        HOST.name,
        [
            FenceMethod("ipmi", lab.ipmi_options("levels", password=WRONG)),
            FenceMethod("redfish", lab.redfish_options("levels", password=WRONG)),
            FenceMethod("ipmi", lab.ipmi_options("levels", ipport=closed, timeout="2")),
        ],
    )
    with pytest.raises(TemporaryError) as caught:
        fence(step_context(devices, confirm_timeout=5), HOST)
    text = str(caught.value)
    assert "level 1 (ipmi" in text and "wrong password" in text
    assert "level 2 (redfish" in text and "HTTP 401" in text
    assert "level 3 (ipmi" in text
    assert WRONG not in text


# ------------------------------------------------------------------- secrets (S5)


def test_no_bmc_password_in_any_log_record_or_message(
    lab: Lab,
    fence_agents: None,
    levels_domain_on: None,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: vigil's, sushy's, urllib3's...
    texts: list[str] = []
    wrong_levels = build_fence_devices(
        HOST.name,
        [
            FenceMethod("redfish", lab.redfish_options("levels", password=WRONG)),
            FenceMethod("ipmi", lab.ipmi_options("levels", password=WRONG)),
            FenceMethod("fence-agent", lab.fence_ipmilan_options("levels", password=WRONG)),
            FenceMethod("fence-agent", lab.fence_redfish_options("levels", password=WRONG)),
        ],
    )
    with pytest.raises(TemporaryError) as failed:
        fence(step_context(wrong_levels, confirm_timeout=5), HOST)
    texts += exception_texts(failed.value)

    good_levels = build_fence_devices(
        HOST.name,
        [
            FenceMethod("ipmi", lab.ipmi_options("levels", password=WRONG)),
            FenceMethod("fence-agent", lab.fence_ipmilan_options("levels", password=WRONG)),
            FenceMethod("redfish", lab.redfish_options("levels", auth="basic")),
        ],
    )
    done = fence(step_context(good_levels, confirm_timeout=30), HOST)
    assert isinstance(done, Done) and done.result["level"] == 3
    texts += [done.detail, repr(done.result)]
    for device in [*wrong_levels, *good_levels]:
        texts += [device.description, repr(vars(device))]
    # the same BMCs once more, through every driver, with the right password
    for method in (
        FenceMethod("ipmi", lab.ipmi_options("levels")),
        FenceMethod("fence-agent", lab.fence_ipmilan_options("levels")),
        FenceMethod("fence-agent", lab.fence_redfish_options("levels")),
        FenceMethod("redfish", lab.redfish_options("levels")),  # auto: session, else basic
    ):
        device = one(method)
        device.power_on()
        texts.append(str(device.power_status()))

    texts += record_texts(caplog.records)
    captured = capfd.readouterr()
    texts += [captured.out, captured.err]
    assert len(caplog.records) > 10, "the run logged next to nothing: the search proves little"
    for form in secret_forms(lab.username, [lab.password, WRONG]):
        leaks = [t for t in texts if form in t]
        assert not leaks, f"a BMC secret appears in: {leaks[0][:300]}"
