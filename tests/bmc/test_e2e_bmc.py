"""End to end with a real BMC: a host of the simulated cloud whose BMC is sushy-tools'
Redfish emulator over a real QEMU domain. The host is cut off from the network (its VMs
keep running: the case where evacuating unfenced would run them twice); vigil-server
detects it, fences it through Redfish — the domain is really shut off afterwards, as
libvirt says — and brings its instances back on the other hosts, once each.

Two worlds meet here. The QEMU domain is the host's hardware: its power is what the real
BMC cuts. The simulated cloud keeps the books on where each VM runs (and checks "never
twice"): its host has a power switch of its own. ``FollowTheDomain`` ties the second to
the first — see its docstring.

The API accepts only ``sim`` (and ``self-fence``) levels today, so the hosts are
registered with ``sim`` fencing and the test's fence-device factory gives compute-1 its
real Redfish level instead (``REAL_LEVELS``); once vigil-server builds devices through
``vigil.drivers.fence_factory`` by default, the host can be registered with the
``redfish`` level itself.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import wait_until

from vigil import config
from vigil.cli.demo import DemoOptions, build_cloud
from vigil.drivers.fence_factory import build_fence_devices
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.model import FenceMethod, Host
from vigil.server import VigilServer
from vigil.sim.agents import SimAgents
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimFenceDevice, sim_fence_builder

from .conftest import Lab

pytestmark = pytest.mark.bmc

VICTIM = "compute-1"
FAST_FAIL = (
    "recovery.step_attempts=2",
    "recovery.retry_backoff=0.1",
    "recovery.fence_confirm_timeout=1.0",
)


class FollowTheDomain(FenceDevice):
    """The real BMC fences the real machine; the simulated host follows it.

    ``power_off`` goes to the real BMC only. ``power_status`` reads the real BMC; once it
    reads OFF (the QEMU domain is off), the simulated host is switched off too — its VMs
    stop in the sim's books — and OFF is reported only when both are off. So vigil sees
    "off" no earlier than the real machine is off, and nothing is evacuated in the sim
    while the sim still counts the host's VMs as running. ``power_on`` turns on both.
    """

    def __init__(self, real: FenceDevice, sim: FenceDevice) -> None:
        self.real = real
        self.sim = sim
        self.description = real.description
        self.confirm_within = real.confirm_within

    def power_off(self) -> None:
        self.real.power_off()

    def power_on(self) -> None:
        self.real.power_on()
        self.sim.power_on()

    def power_status(self) -> PowerState:
        real = self.real.power_status()
        if real != PowerState.OFF:
            return real
        if self.sim.power_status() != PowerState.OFF:
            self.sim.power_off()
        return self.sim.power_status()


def fence_factory(
    cloud: SimCloud, real_levels: Mapping[str, Sequence[FenceMethod]]
) -> Callable[[Host], list[FenceDevice]]:
    """Hosts fence as registered (sim), except those given real levels here."""

    def devices(host: Host) -> list[FenceDevice]:
        if host.name not in real_levels:
            return build_fence_devices(
                host.name, host.fencing, extra_builders={"sim": sim_fence_builder(cloud)}
            )
        real = build_fence_devices(host.name, real_levels[host.name])
        return [FollowTheDomain(device, SimFenceDevice(cloud, host.name)) for device in real]

    return devices


class World:
    """vigil-server in-process, a simulated cloud with its agents, the API client."""

    def __init__(
        self, real_levels: Mapping[str, Sequence[FenceMethod]], overrides: Sequence[str] = ()
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="vigil-bmc-e2e-")
        conf = config.load([], config_files=[])
        config.apply_overrides(
            conf,
            [
                f"database.connection=sqlite:///{Path(self._tmp.name) / 'vigil.db'}",
                "api.port=0",
                "agent.listen_port=0",
                f"api.auth_token={config.random_secret()}",
                f"agent.key={config.random_secret()}",
                "agent.accept_master_key=true",  # the simulated agents sign for every host
                "notifier.drivers=memory",
                *overrides,
            ],
        )
        self.settings = config.settings_from_conf(conf)
        self.cloud = build_cloud(DemoOptions(hosts=3, instances=6))
        self.server = VigilServer(
            self.settings, cloud=self.cloud, fence_devices=fence_factory(self.cloud, real_levels)
        )
        self.agents = SimAgents(
            self.cloud,
            server=self.server.heartbeat_address,
            key=self.settings.agent_key.encode(),
            interval=self.settings.detection.heartbeat_interval,
        )
        self.api: httpx.Client | None = None

    def __enter__(self) -> World:
        self.server.start()
        api = self.api = httpx.Client(
            base_url=self.server.api_url,
            headers={"Authorization": f"Bearer {self.settings.api_token}"},
        )
        api.post("/v1/segments", json={"name": "az1"}).raise_for_status()
        for name in self.cloud.hosts():
            api.post(
                "/v1/hosts", json={"name": name, "segment": "az1", "fencing": [{"driver": "sim"}]}
            ).raise_for_status()
        self.agents.start()
        wait_until(
            lambda: all(h["state"] == "up" for h in api.get("/v1/hosts").json()),
            "every host's first heartbeat",
            15,
            every=0.1,
            ignoring=(Exception,),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.agents.stop()
        if self.api is not None:
            self.api.close()
        self.server.stop()
        self._tmp.cleanup()

    def recovery(self, host: str, until: tuple[str, ...], timeout: float) -> dict[str, Any]:
        assert self.api is not None
        api = self.api
        found: dict[str, Any] = {}

        def ended() -> bool:
            recoveries = api.get("/v1/recoveries", params={"host": host}).json()
            if recoveries:
                found.update(recoveries[0])
            return bool(recoveries) and recoveries[0]["status"] in until

        wait_until(
            ended, f"the recovery of {host} to end", timeout, every=0.2, ignoring=(Exception,)
        )
        return found


@pytest.fixture
def e2e_domain_on(lab: Lab) -> Iterator[None]:
    domain = lab.domains["e2e"]
    domain.start()
    wait_until(domain.is_running, f"{domain.name} running", 30, every=0.1, ignoring=(Exception,))
    yield
    domain.start()


def test_isolated_host_is_fenced_for_real_and_its_instances_recovered(
    lab: Lab, e2e_domain_on: None
) -> None:
    domain = lab.domains["e2e"]
    real = {VICTIM: [FenceMethod("redfish", lab.redfish_options("e2e"))]}
    with World(real) as world:
        victims = [i.id for i in world.cloud.instances() if i.host == VICTIM]
        assert victims and domain.state() == "running"
        t0 = time.monotonic()
        world.cloud.isolate(VICTIM)  # cut off; the host and its VMs keep running
        recovery = world.recovery(VICTIM, ("succeeded", "failed"), timeout=90)
        elapsed = time.monotonic() - t0
        assert recovery["status"] == "succeeded", recovery

        steps = recovery["steps"]
        (fence_step,) = [s for s in steps if s["kind"] == "fence"]
        assert fence_step["status"] == "succeeded"
        assert f"confirmed by redfish {lab.redfish.url}" in fence_step["detail"]
        evacuations = [s for s in steps if s["kind"] == "evacuate"]
        assert {s["instance_id"] for s in evacuations} == set(victims)
        assert all(fence_step["finished_at"] <= s["started_at"] for s in evacuations)

        # the machine is really off, as libvirt sees it
        assert domain.state() == "shut off"
        assert not domain.is_running()
        # and in the sim's books: the host is off, each VM runs once, elsewhere
        assert not world.cloud.is_powered(VICTIM)
        assert world.cloud.double_running() == []
        for iid in victims:
            inst = world.cloud.instance(iid)
            assert inst.status == "ACTIVE"
            assert inst.running_on == {inst.host} != {VICTIM}
        assert world.cloud.calls("evacuate") == len(victims)
        assert elapsed < 60, f"recovered in {elapsed:.1f}s"


def test_a_bmc_that_refuses_means_nothing_moves(lab: Lab, e2e_domain_on: None) -> None:
    domain = lab.domains["e2e"]
    real = {VICTIM: [FenceMethod("redfish", lab.redfish_options("e2e", password="wrong-pw"))]}
    with World(real, overrides=FAST_FAIL) as world:
        world.cloud.isolate(VICTIM)
        recovery = world.recovery(VICTIM, ("failed",), timeout=60)
        assert recovery["reason"].startswith("fence failed")
        (fence_step,) = [s for s in recovery["steps"] if s["kind"] == "fence"]
        assert "check username and password" in fence_step["detail"]
        assert "wrong-pw" not in str(recovery) and lab.password not in str(recovery)
        assert world.cloud.calls("evacuate") == 0
        assert world.cloud.calls("set_forced_down") == 0
        assert domain.state() == "running"  # never touched
        assert world.cloud.is_powered(VICTIM)
        assert world.cloud.double_running() == []
