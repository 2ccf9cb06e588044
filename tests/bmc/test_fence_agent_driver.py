"""The ``fence-agent`` driver with a stand-in agent (``fake_fence_agent.py``): how it is
run, what its exit codes mean, timeouts, and an agent that claims success while the power
stays on. Needs no BMC; the real agents are tried in test_contract_bmc / test_faults_bmc.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from vigil.drivers.errors import PermanentError, TemporaryError
from vigil.drivers.fence_factory import UnavailableFenceDevice, build_fence_devices
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.engine.steps import fence
from vigil.model import FenceMethod

from .helpers import HOST, fake_agent, step_context

SECRET = "agent-s3cret-value"


def device(tmp_path: Path, **options: str) -> FenceDevice:
    agent = fake_agent(tmp_path)
    base = {
        "agent": str(agent),
        "state_file": str(tmp_path / "power"),
        "record_file": str(tmp_path / "record"),
        "password": SECRET,
        "ip": "192.0.2.10",
        "plug": "node-7",
    }
    (built,) = build_fence_devices("compute-1", [FenceMethod("fence-agent", {**base, **options})])
    return built


def runs(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "record").read_text().splitlines()]


def test_options_go_on_stdin_never_on_the_command_line(tmp_path: Path) -> None:
    dev = device(tmp_path)
    assert dev.power_status() == PowerState.ON
    (run,) = runs(tmp_path)
    assert run["argv"] == [str(tmp_path / "fence_fake")]
    options = run["options"]
    assert isinstance(options, dict)
    assert options["action"] == "status"
    assert options["password"] == SECRET
    assert "agent" not in options
    assert dev.description == "fence-agent fence_fake 192.0.2.10 plug node-7"


def test_exit_codes_status_off_on(tmp_path: Path) -> None:
    dev = device(tmp_path)
    assert dev.power_status() == PowerState.ON  # exit 0
    dev.power_off()
    assert dev.power_status() == PowerState.OFF  # exit 2
    dev.power_off()  # idempotent
    dev.power_on()
    assert dev.power_status() == PowerState.ON
    assert [r["options"]["action"] for r in runs(tmp_path)] == [  # type: ignore[index]
        "status",
        "off",
        "status",
        "off",
        "on",
        "status",
    ]


def test_password_from_a_file_reaches_the_agent(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET + "\n")
    agent = fake_agent(tmp_path)
    (dev,) = build_fence_devices(
        "compute-1",
        [
            FenceMethod(
                "fence-agent",
                {
                    "agent": str(agent),
                    "state_file": str(tmp_path / "power"),
                    "record_file": str(tmp_path / "record"),
                    "password_file": str(secret_file),
                },
            )
        ],
    )
    dev.power_status()
    (run,) = runs(tmp_path)
    options = run["options"]
    assert isinstance(options, dict)
    assert options["password"] == SECRET
    assert "password_file" not in options


def test_an_error_exit_is_an_error_without_the_secret(tmp_path: Path) -> None:
    dev = device(tmp_path, mode="broken")
    for call in (dev.power_status, dev.power_off, dev.power_on):
        with pytest.raises(TemporaryError, match="agent exited 1: Failed: something broke") as e:
            call()
        assert SECRET not in str(e.value)


def test_a_refused_login_is_permanent(tmp_path: Path) -> None:
    dev = device(tmp_path, mode="login")
    with pytest.raises(PermanentError, match="refused the login: check username and password"):
        dev.power_off()


def test_a_hanging_agent_is_killed_with_its_children(tmp_path: Path) -> None:
    dev = device(tmp_path, mode="hang", agent_timeout="1.5")
    started = time.monotonic()
    with pytest.raises(TemporaryError, match=r"did not finish within 1\.5s"):
        dev.power_off()
    assert time.monotonic() - started < 10
    child = int((tmp_path / "power.child").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the agent's child outlived it"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for its parent (here: init) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_an_option_the_agent_does_not_know_is_refused(tmp_path: Path) -> None:
    dev = device(tmp_path, passwrd=SECRET)
    assert isinstance(dev, UnavailableFenceDevice)
    with pytest.raises(PermanentError, match="fence_fake has no option passwrd") as caught:
        dev.power_status()
    assert SECRET not in str(caught.value)
    assert not (tmp_path / "record").exists(), "the agent was never run with it"


def test_an_agent_that_says_done_while_the_power_stays_on_fences_nothing(tmp_path: Path) -> None:
    liar = device(tmp_path, mode="lies")
    with pytest.raises(TemporaryError, match="not fenced") as caught:
        fence(step_context([liar], confirm_timeout=1.0), HOST)
    assert "power still on" in str(caught.value)
    assert liar.power_status() == PowerState.ON
    assert SECRET not in str(caught.value)
