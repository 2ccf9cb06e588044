"""Fencing configuration without any BMC: option checks, secrets, the factory.

No emulator is needed here: these run everywhere, in every CI run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from vigil.api.schemas import FenceMethodOut
from vigil.clock import SystemClock
from vigil.drivers import fence_agent, ipmi, redfish
from vigil.drivers.errors import PermanentError
from vigil.drivers.fence_factory import (
    KNOWN_FENCE_DRIVERS,
    UnavailableFenceDevice,
    build_fence_devices,
    fence_device_factory,
    validate_fence_options,
    validate_fencing,
)
from vigil.drivers.fence_options import Secret, is_secret_name, scrub
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.model import FenceMethod, Host
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimFenceDevice, sim_fence_builder

SECRET = "Tr0ub4dor-and-3"

REDFISH = {"address": "https://bmc-1.example", "username": "admin", "password": SECRET}
IPMI = {"address": "10.1.2.3", "username": "admin", "password": SECRET}
AGENT = {"agent": "fence_ipmilan", "ip": "10.1.2.3", "username": "admin", "password": SECRET}


def no_secret_in(problems: list[str]) -> None:
    for problem in problems:
        assert SECRET not in problem


def test_every_driver_vigil_says_it_knows_validates_and_builds() -> None:
    """What the API lists as known (and names in its errors) can be configured."""
    good = {"redfish": REDFISH, "ipmi": IPMI, "fence-agent": AGENT, "sim": {}}
    assert sorted(KNOWN_FENCE_DRIVERS) == sorted(good)
    cloud = SimCloud(SystemClock())
    cloud.add_host("compute-1")
    for driver in KNOWN_FENCE_DRIVERS:
        assert validate_fence_options(driver, good[driver]) == [], driver
        (device,) = build_fence_devices(
            "compute-1",
            [FenceMethod(driver, good[driver])],
            extra_builders={"sim": sim_fence_builder(cloud)},
        )
        assert isinstance(device, FenceDevice), driver


@pytest.mark.parametrize(
    ("driver", "options"),
    [("redfish", REDFISH), ("ipmi", IPMI), ("fence-agent", AGENT), ("sim", {})],
)
def test_a_good_configuration_has_no_problems(driver: str, options: dict[str, str]) -> None:
    assert validate_fence_options(driver, options) == []


def test_unknown_driver() -> None:
    (problem,) = validate_fence_options("stonith", {"password": SECRET})
    assert "stonith" in problem and "redfish" in problem
    no_secret_in([problem])
    with pytest.raises(PermanentError, match="unknown fencing driver 'stonith'") as caught:
        build_fence_devices("compute-1", [FenceMethod("stonith", {"password": SECRET})])
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("driver", "options", "missing"),
    [
        ("redfish", {k: v for k, v in REDFISH.items() if k != "address"}, "address"),
        ("redfish", {k: v for k, v in REDFISH.items() if k != "username"}, "username"),
        ("redfish", {k: v for k, v in REDFISH.items() if k != "password"}, "password"),
        ("ipmi", {k: v for k, v in IPMI.items() if k != "address"}, "address"),
        ("ipmi", {k: v for k, v in IPMI.items() if k != "password"}, "password"),
        ("fence-agent", {k: v for k, v in AGENT.items() if k != "agent"}, "agent"),
    ],
)
def test_a_missing_option_is_named(driver: str, options: dict[str, str], missing: str) -> None:
    problems = validate_fence_options(driver, options)
    assert any(f"option {missing}" in p and "required" in p for p in problems), problems
    no_secret_in(problems)
    with pytest.raises(PermanentError, match=f"level 1: {driver}: option {missing}") as caught:
        build_fence_devices("compute-1", [FenceMethod(driver, options)])
    assert SECRET not in str(caught.value)
    assert "compute-1" in str(caught.value)


@pytest.mark.parametrize(
    ("driver", "change", "expected"),
    [
        ("redfish", {"ipport": "http"}, "ipport must be a TCP/UDP port"),
        ("redfish", {"ssl_verify": "maybe"}, "ssl_verify must be true or false"),
        ("redfish", {"timeout": "-1"}, "timeout must be a number"),
        ("redfish", {"auth": "kerberos"}, "auth must be one of auto, session, basic"),
        ("redfish", {"ca_bundle": "ca.pem"}, "ca_bundle must be an absolute path"),
        ("redfish", {"ca_bundle": "/ca.pem", "ssl_verify": "false"}, "ssl_verify is false"),
        ("redfish", {"address": f"https://admin:{SECRET}@bmc"}, "must not contain a user"),
        ("redfish", {"address": "ftp://bmc"}, "https://"),
        ("redfish", {"address": "https://bmc/redfish/v1"}, "scheme, host and port only"),
        ("redfish", {"password_file": "/etc/bmc.pw"}, "password or password_file, not both"),
        ("redfish", {"systemid": "1"}, "unknown option 'systemid'"),
        ("ipmi", {"username": "a-very-long-ipmi-username"}, "at most 16 bytes"),
        ("ipmi", {"privilege": "user"}, "privilege must be one of operator, administrator"),
        ("ipmi", {"kg_key": SECRET, "kg_key_file": "/k"}, "kg_key or kg_key_file, not both"),
        ("ipmi", {"address": "https://x/"}, "host name or IP address"),
        ("fence-agent", {"agent": "ipmitool"}, "fence_* name or an absolute path"),
        ("fence-agent", {"action": "reboot"}, "action is set by vigil"),
        ("fence-agent", {"plug": "a\nb"}, "plug must be one line"),
        ("fence-agent", {"Bad-Name": "x"}, "lower-case words"),
        ("fence-agent", {"agent_timeout": "soon"}, "agent_timeout must be a number"),
    ],
)
def test_malformed_options_are_named_never_quoted(
    driver: str, change: dict[str, str], expected: str
) -> None:
    base = {"redfish": REDFISH, "ipmi": IPMI, "fence-agent": AGENT}[driver]
    problems = validate_fence_options(driver, {**base, **change})
    assert any(expected in p for p in problems), problems
    no_secret_in(problems)


def test_levels_are_numbered() -> None:
    problems = validate_fencing(
        [FenceMethod("ipmi", IPMI), FenceMethod("redfish", {"address": "https://b"})]
    )
    assert problems and all(p.startswith("level 2: redfish:") for p in problems)


def test_secret_option_names() -> None:
    for name in ("password", "password_file", "passwd", "kg_key", "kg_key_file", "api_token"):
        assert is_secret_name(name), name
    assert is_secret_name("hexadecimal_kg")  # fence_ipmilan's K_g key
    for name in ("address", "username", "ipport", "ca_bundle", "system_id", "agent", "plug"):
        assert not is_secret_name(name), name


@pytest.mark.parametrize("module", [redfish, ipmi, fence_agent])
def test_the_api_masks_every_secret_option_of_the_drivers(module: object) -> None:
    """The API's masking (by option name) hides every secret option the drivers define."""
    driver = module.DRIVER  # type: ignore[attr-defined]
    for option in module.OPTIONS:  # type: ignore[attr-defined]
        shown = FenceMethodOut.of(FenceMethod(driver, {option.name: "x"})).options[option.name]
        assert (shown == "***") == option.secret, option.name


def test_secrets_do_not_show_themselves() -> None:
    secret = Secret(SECRET)
    assert SECRET not in repr(secret) and SECRET not in str(secret) and SECRET not in f"{secret}"
    assert secret.reveal() == SECRET
    assert (
        scrub(f"login {SECRET} failed for {SECRET}", [secret, None]) == "login *** failed for ***"
    )


def test_devices_keep_their_secrets_out_of_sight() -> None:
    devices = build_fence_devices(
        "compute-1",
        [FenceMethod("redfish", REDFISH), FenceMethod("ipmi", IPMI)],
    )
    for device in devices:
        assert SECRET not in device.description
        assert SECRET not in repr(vars(device))


def test_password_from_a_file(tmp_path: Path) -> None:
    file = tmp_path / "bmc.pw"
    file.write_text(SECRET + "\n")
    options = {k: v for k, v in REDFISH.items() if k != "password"}
    (device,) = build_fence_devices(
        "compute-1", [FenceMethod("redfish", {**options, "password_file": str(file)})]
    )
    assert isinstance(device, redfish.RedfishFenceDevice)
    assert device._password.reveal() == SECRET


def test_an_unreadable_password_file_fails_that_level_only(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    options = {k: v for k, v in IPMI.items() if k != "password"}
    cloud = SimCloud(SystemClock())
    cloud.add_host("compute-1")
    level1, level2 = build_fence_devices(
        "compute-1",
        [FenceMethod("ipmi", {**options, "password_file": str(missing)}), FenceMethod("sim")],
        extra_builders={"sim": sim_fence_builder(cloud)},
    )
    assert isinstance(level1, UnavailableFenceDevice)
    with pytest.raises(PermanentError, match="option password_file") as caught:
        level1.power_status()
    assert str(missing) not in str(caught.value)  # the path is masked by the API too
    assert level2.power_status() == PowerState.ON


def test_sim_levels_need_the_simulated_cloud() -> None:
    with pytest.raises(PermanentError, match="simulated cloud"):
        build_fence_devices("compute-1", [FenceMethod("sim")])
    cloud = SimCloud(SystemClock())
    cloud.add_host("compute-1")
    cloud.add_host("compute-9")
    (own,) = build_fence_devices(
        "compute-1", [FenceMethod("sim")], extra_builders={"sim": sim_fence_builder(cloud)}
    )
    (other,) = build_fence_devices(
        "compute-1",
        [FenceMethod("sim", {"host": "compute-9", "password": SECRET})],
        extra_builders={"sim": sim_fence_builder(cloud)},
    )
    assert isinstance(own, SimFenceDevice) and own.host == "compute-1"
    assert isinstance(other, SimFenceDevice) and other.host == "compute-9"


def test_the_factory_the_server_takes() -> None:
    cloud = SimCloud(SystemClock())
    cloud.add_host("compute-1")
    factory = fence_device_factory(extra_builders={"sim": sim_fence_builder(cloud)})
    host = Host("compute-1", "az1", fencing=(FenceMethod("sim"), FenceMethod("ipmi", IPMI)))
    sim, bmc = factory(host)
    assert isinstance(sim, SimFenceDevice)
    assert isinstance(bmc, ipmi.IpmiFenceDevice) and bmc.description == "ipmi 10.1.2.3:623"


def test_a_missing_fence_agent_fails_that_level_only() -> None:
    (device,) = build_fence_devices(
        "compute-1", [FenceMethod("fence-agent", {**AGENT, "agent": "fence_no_such_agent"})]
    )
    assert isinstance(device, UnavailableFenceDevice)
    with pytest.raises(PermanentError, match="fence_no_such_agent not found"):
        device.power_off()


def test_drivers_defined_elsewhere_are_built_by_their_owner() -> None:
    """vigil-server's ``self-fence`` level lives in the engine: it hands in its builder."""
    cloud = SimCloud(SystemClock())
    cloud.add_host("compute-1")
    built: list[tuple[str, dict[str, str]]] = []

    def self_fence(host: str, options: Mapping[str, str]) -> FenceDevice:
        built.append((host, dict(options)))
        return SimFenceDevice(cloud, host)

    assert validate_fence_options("self-fence", {}) != []
    assert validate_fence_options("self-fence", {}, extra_drivers=("self-fence",)) == []
    levels = [FenceMethod("ipmi", IPMI), FenceMethod("self-fence", {"margin": "2"})]
    assert validate_fencing(levels, extra_drivers=["self-fence"]) == []
    devices = build_fence_devices("compute-1", levels, extra_builders={"self-fence": self_fence})
    assert [type(d) for d in devices] == [ipmi.IpmiFenceDevice, SimFenceDevice]
    assert built == [("compute-1", {"margin": "2"})]
    with pytest.raises(PermanentError, match="unknown fencing driver 'self-fence'"):
        build_fence_devices("compute-1", levels)


@pytest.mark.parametrize(
    ("address", "extra", "url"),
    [
        ("bmc-1.example", {}, "https://bmc-1.example:443"),
        ("bmc-1.example:8443", {}, "https://bmc-1.example:8443"),
        ("https://10.0.0.5", {"ipport": "8000"}, "https://10.0.0.5:8000"),
        ("http://127.0.0.1:8000", {}, "http://127.0.0.1:8000"),
        ("https://[fd00::5]", {}, "https://[fd00::5]:443"),
    ],
)
def test_redfish_addresses(address: str, extra: dict[str, str], url: str) -> None:
    options = {**REDFISH, "address": address, **extra}
    (device,) = build_fence_devices("compute-1", [FenceMethod("redfish", options)])
    assert device.description == f"redfish {url}"


def test_ipmi_logs_in_again_when_pyghmi_loses_the_logins_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pyghmi sometimes fails a refused login with AttributeError ('errormsg') instead of
    its own error: the driver logs in once more and reports the BMC's answer."""
    logins: list[int] = []

    class IpmiException(Exception):
        pass

    class FlakySession:
        def __init__(self, **kw: object) -> None:
            logins.append(1)
            if len(logins) == 1:
                raise AttributeError("'_Session' object has no attribute 'errormsg'")
            raise IpmiException("Incorrect password provided")

    monkeypatch.setattr(ipmi, "_SESSION_CLASS", FlakySession)
    device = ipmi.IpmiFenceDevice(address="127.0.0.1", username="admin", password=Secret("x"))
    with pytest.raises(PermanentError, match="wrong password"):
        device.power_status()
    assert len(logins) == 2
