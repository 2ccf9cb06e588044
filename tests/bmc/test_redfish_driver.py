"""The ``redfish`` driver against a small fake Redfish service (``FakeRedfish``): Redfish
sessions, system selection, a BMC that is too slow, one that says "done" and leaves the
power on. Needs sushy only (no emulator); the real emulator is in the other test files.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from services import require

from vigil.drivers.errors import NotFound, PermanentError, TemporaryError
from vigil.drivers.fence_factory import build_fence_devices
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.drivers.redfish import RedfishFenceDevice
from vigil.engine.steps import fence
from vigil.model import FenceMethod

from .emulators import FakeRedfish, SilentPort
from .helpers import HOST, step_context

USER, SECRET = "admin", "redfish-s3cret"


def _sushy() -> None:
    import sushy  # type: ignore[import-untyped]  # noqa: F401


@pytest.fixture
def bmc() -> Iterator[FakeRedfish]:
    require("sushy (the redfish driver's library)", _sushy)
    with FakeRedfish({USER: SECRET}) as fake:
        yield fake


def redfish(address: str, **options: str) -> FenceDevice:
    base = {"address": address, "username": USER, "password": SECRET, "timeout": "5"}
    (device,) = build_fence_devices("compute-1", [FenceMethod("redfish", {**base, **options})])
    return device


def test_session_auth_logs_in_once_and_logs_out(bmc: FakeRedfish) -> None:
    device = redfish(bmc.address, auth="session")
    assert device.power_status() == PowerState.ON
    device.power_off()
    assert device.power_status() == PowerState.OFF
    kinds = [kind for _, path, kind in bmc.state.log if path != "/redfish/v1"]
    assert kinds[0] == "login" and kinds.count("login") == 1
    assert set(kinds[1:]) == {"session"}
    assert len(bmc.state.sessions) == 1
    assert isinstance(device, RedfishFenceDevice)
    device.close()
    assert bmc.state.sessions == {}


def test_auto_auth_prefers_a_session(bmc: FakeRedfish) -> None:
    redfish(bmc.address).power_status()
    assert any(kind == "login" for _, _, kind in bmc.state.log)


def test_basic_auth_makes_no_session(bmc: FakeRedfish) -> None:
    redfish(bmc.address, auth="basic").power_status()
    kinds = {kind for _, path, kind in bmc.state.log if path != "/redfish/v1"}
    assert kinds == {"basic"}


@pytest.mark.parametrize("auth", ["session", "basic", "auto"])
def test_a_wrong_password_is_a_clear_permanent_error(bmc: FakeRedfish, auth: str) -> None:
    device = redfish(bmc.address, auth=auth, password="not-the-password")
    with pytest.raises(PermanentError, match="check username and password") as caught:
        device.power_off()
    assert "not-the-password" not in str(caught.value)
    assert bmc.state.resets == []


def test_the_only_system_or_the_one_named(bmc: FakeRedfish) -> None:
    only = redfish(bmc.address)
    assert only.power_status() == PowerState.ON
    # Ended here, not whenever the garbage collector gets to it: a session closed by
    # sushy's __del__ in the middle of the next device's power-off has timed it out.
    assert isinstance(only, RedfishFenceDevice)
    only.close()
    by_id = redfish(bmc.address, system_id="node-1")
    by_path = redfish(bmc.address, system_id="/redfish/v1/Systems/node-1")
    by_id.power_off()
    assert by_path.power_status() == PowerState.OFF
    with pytest.raises(NotFound, match="no system node-9"):
        redfish(bmc.address, system_id="node-9").power_status()


def test_several_systems_need_a_system_id() -> None:
    require("sushy (the redfish driver's library)", _sushy)
    with FakeRedfish({USER: SECRET}, systems=("node-1", "node-2")) as fake:
        with pytest.raises(PermanentError, match="has 2 systems: set the option system_id"):
            redfish(fake.address).power_status()
        device = redfish(fake.address, system_id="node-2")
        device.power_off()
        assert fake.state.power == {"node-1": "On", "node-2": "Off"}


def test_a_slow_bmc_is_a_temporary_error_within_the_timeout(bmc: FakeRedfish) -> None:
    bmc.state.delay = 3.0
    device = redfish(bmc.address, timeout="1")
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="did not answer in time"):
        device.power_status()
    assert time.monotonic() - started < 2.9


def test_a_bmc_that_accepts_and_never_answers() -> None:
    require("sushy (the redfish driver's library)", _sushy)
    with SilentPort(socket.SOCK_STREAM) as silent:
        device = redfish(f"http://127.0.0.1:{silent.port}", timeout="1", connect_timeout="1")
        started = time.monotonic()
        for call in (device.power_status, device.power_off, device.power_on):
            with pytest.raises(TemporaryError, match="did not answer in time"):
                call()
        assert time.monotonic() - started < 6


def test_a_bmc_that_says_done_while_the_power_stays_on_fences_nothing(bmc: FakeRedfish) -> None:
    bmc.state.lies = True
    device = redfish(bmc.address)
    with pytest.raises(TemporaryError, match="not fenced") as caught:
        fence(step_context([device], confirm_timeout=1.5), HOST)
    assert "power still on" in str(caught.value)
    assert "ForceOff" in bmc.state.resets  # it was asked, it said yes...
    assert device.power_status() == PowerState.ON  # ...and the host still runs
    assert SECRET not in str(caught.value)


def test_a_lying_level_then_an_honest_one(bmc: FakeRedfish) -> None:
    bmc.state.lies = True
    with FakeRedfish({USER: SECRET}) as honest:
        done = fence(
            step_context([redfish(bmc.address), redfish(honest.address)], confirm_timeout=1.0),
            HOST,
        )
        assert done.result["level"] == 2
        assert honest.state.power["node-1"] == "Off"
