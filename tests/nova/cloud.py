"""The minicloud (tools/minicloud) as the nova tier's tests see it: start it once per
session, kill and restart its processes, boot servers, and put every host back the way
the next test expects it (up, enabled, not forced down, no servers).

A test talks to Nova through openstacksdk with the minicloud's clouds.yaml (its admin on
the real Keystone), exactly like vigil's driver does; process control goes through the
tool's pid files.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kombu
import openstack.connection
import pytest
from keystoneauth1.identity.base import BaseIdentityPlugin
from openstack.config import OpenStackConfig
from support import wait_until
from support.keystone import Keystone

from vigil import config
from vigil.agent.heartbeat import HeartbeatSender
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.drivers.network import NetworkDriver
from vigil.drivers.neutron import build_openstack_network
from vigil.drivers.openstack import OpenStackCompute, build_openstack_compute
from vigil.model import Host
from vigil.server import VigilServer

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "minicloud" / "minicloud"
HOME = Path(os.environ.get("MINICLOUD_HOME") or REPO / ".minicloud").resolve()
CLOUDS_YAML = HOME / "clouds.yaml"
COMPUTES = ("compute1", "compute2", "compute3")
IMAGE = "155d900f-4e14-4e4c-a73d-069cbf4541e6"  # "cirros", no properties
HA_IMAGE = "a7c1d0b4-6a56-4b8e-9a55-2f0c3e7d9b10"  # "cirros-ha": vigil:ha_policy keep-running
FLAVOR = "1"  # m1.tiny
BOOT_MICROVERSION = "2.74"  # "host" in the create request: boot onto a chosen compute
# keystoneauth takes a new token when the one it holds expires within 120 s. The tier's
# Keystone issues the identity tier's 20-second tokens: every request would log in again
# (some 40 logins a second, a busy Keystone, the tier twice as slow). Production tokens
# last an hour; with this margin keystoneauth renews here about as rarely as there.
TOKEN_MARGIN = 5  # seconds


def renew_tokens_late(patch: pytest.MonkeyPatch | None = None) -> None:
    """keystoneauth renews a token TOKEN_MARGIN seconds before it expires, not 120."""
    if patch is None:
        BaseIdentityPlugin.MIN_TOKEN_LIFE_SECONDS = TOKEN_MARGIN
    else:
        patch.setattr(BaseIdentityPlugin, "MIN_TOKEN_LIFE_SECONDS", TOKEN_MARGIN)


def report(config: pytest.Config, text: str) -> None:
    """Print past pytest's output capture: timings belong in the CI log."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print(f"[nova] {text}")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"[nova] {text}")


def installed() -> None:
    """A check for services.require: the tool and its virtualenv are there."""
    if not TOOL.exists():
        raise FileNotFoundError(f"{TOOL} is missing")
    if not (HOME / "venv" / ".minicloud-requirements").exists():
        raise FileNotFoundError(f"minicloud is not installed: run {TOOL} install")


def tool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOL), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Minicloud:
    """A running minicloud; ``conn`` is an admin openstacksdk connection to it."""

    started_here: bool
    startup_seconds: float
    keystone: Keystone | None = None  # the real Keystone it runs on (None: not told)
    conn: openstack.connection.Connection = field(init=False)

    def __post_init__(self) -> None:
        self.reconnect()

    def reconnect(self) -> None:
        """A new ``conn``: its catalog has the services registered since (tools/heat)."""
        config = OpenStackConfig(config_files=[str(CLOUDS_YAML)])
        self.conn = openstack.connection.Connection(config=config.get_one(cloud="minicloud"))

    # ------------------------------------------------------------------ processes
    def pid(self, service: str) -> int | None:
        try:
            pid = int((HOME / "run" / f"{service}.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        if stat.split(") ", 1)[-1].startswith("Z"):
            return None
        return pid if str(HOME).encode() in cmdline else None

    def running(self, service: str) -> bool:
        return self.pid(service) is not None

    def kill(self, service: str) -> None:
        result = tool("kill", service, timeout=30)
        assert result.returncode == 0, result.stderr

    def start(self, service: str) -> None:
        result = tool("start-service", service, timeout=30)
        assert result.returncode == 0, result.stderr

    def drop_queued(self, queue: str) -> int:
        """Purge a queue of Nova's RabbitMQ (e.g. ``conductor``): the requests it held are
        lost as if the API had died before sending them. The count dropped."""
        url = os.environ.get("MINICLOUD_TRANSPORT_URL", "rabbit://guest:guest@127.0.0.1:5672/")
        with kombu.Connection(url.replace("rabbit://", "amqp://", 1)) as conn:
            return int(conn.default_channel.queue_purge(queue) or 0)

    # ------------------------------------------------------------------ nova
    def nova(self, method: str, path: str, body: Any = None, mv: str = "2.94") -> Any:
        response = self.conn.compute.request(path, method, json=body, microversion=mv)
        status = response.status_code
        assert status < 400, f"{method} {path}: {status} {response.text}"
        return response.json() if response.content else None

    def server(self, server_id: str) -> dict[str, Any]:
        return dict(self.nova("GET", f"/servers/{server_id}")["server"])

    def boot(
        self,
        name: str,
        host: str,
        metadata: Mapping[str, str] | None = None,
        *,
        wait: bool = True,
        **kw: Any,
    ) -> str:
        body = self.server_body(name, host, metadata, **kw)
        if not wait:
            return self._post_server(host, body)
        return self.boot_many(host, {name: body})[name]

    @staticmethod
    def server_body(
        name: str,
        host: str,
        metadata: Mapping[str, str] | None = None,
        *,
        image: str = IMAGE,
        flavor: str = FLAVOR,
        hints: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A POST /servers body for ``host``."""
        return {
            "server": {
                "name": name,
                "imageRef": image,
                "flavorRef": flavor,
                "networks": "none",
                "host": host,
                "metadata": dict(metadata or {}),
            },
            **({"os:scheduler_hints": dict(hints)} if hints else {}),
        }

    def boot_many(
        self, host: str, bodies: Mapping[str, Mapping[str, Any]], timeout: float = 60
    ) -> dict[str, str]:
        """Boot servers in parallel (name -> ``server_body``) and wait until all are
        ACTIVE. Those Nova finds no host for are booted again, up to three times, a few
        seconds apart: a broker hiccup or a loaded machine can cost a compute one state
        report, and a compute restored by the previous test may not have given placement
        its inventory back yet (CI once saw "no allocation candidates" twice in a row,
        0.3 s apart)."""
        ids = {name: self._post_server(host, body) for name, body in bodies.items()}
        for attempt in range(3):
            try:
                self.wait_active(list(ids.values()), timeout)
                return ids
            except AssertionError as exc:
                if "No valid host" not in str(exc) or attempt == 2:
                    raise
            time.sleep(3)
            for name, sid in ids.items():
                if self.server(sid)["status"] == "ERROR":
                    self.conn.compute.request(f"/servers/{sid}", "DELETE", microversion="2.94")
                    ids[name] = self._post_server(host, bodies[name])
        return ids

    def _post_server(self, host: str, body: Mapping[str, Any]) -> str:
        # The scheduler takes only a compute it has heard from lately.
        wait_until(lambda: self.services()[host]["state"] == "up", f"{host} up", 60, every=0.2)
        return str(self.nova("POST", "/servers", body, mv=BOOT_MICROVERSION)["server"]["id"])

    def wait_active(self, ids: list[str], timeout: float = 60) -> None:
        def active() -> bool:
            servers = [self.server(i) for i in ids]
            failed = [s for s in servers if s["status"] == "ERROR"]
            assert not failed, f"boot failed: {failed[0].get('fault')}"
            return all(s["status"] == "ACTIVE" for s in servers)

        wait_until(active, f"{len(ids)} servers ACTIVE", timeout, every=0.2)

    def services(self) -> dict[str, dict[str, Any]]:
        body = self.nova("GET", "/os-services?binary=nova-compute", mv="2.53")
        return {s["host"]: s for s in body["services"]}

    def evacuations(self, server_id: str) -> list[dict[str, Any]]:
        body = self.nova("GET", f"/os-migrations?instance_uuid={server_id}", mv="2.80")
        return [m for m in body["migrations"] if m["migration_type"] == "evacuation"]

    # ------------------------------------------------------------------ restore
    def restore(self, timeout: float = 90) -> float:
        """Every compute running, up, enabled and not forced down; no server left.

        Order matters: a killed compute is started first, because Nova refuses to
        un-force a host until its restarted nova-compute has cleaned up its evacuated
        instances (and cleans up nothing for an instance already deleted)."""
        t0 = time.monotonic()
        for service in ("api", "stubs", "placement", "conductor", "scheduler", *COMPUTES):
            if not self.running(service):
                self.start(service)
        wait_until(self._api_answers, "the Nova API", timeout, every=0.2)
        for host, svc in self.services().items():
            if svc["forced_down"]:
                try:
                    wait_until(
                        lambda svc=svc: self._unforce(svc["id"]),
                        f"Nova to let {host} be un-forced",
                        timeout / 3,
                        every=0.5,
                    )
                except AssertionError:
                    # An instance evacuated twice (the first request lost) has two records;
                    # a restarted nova-compute completes one per instance, and Nova refuses
                    # while a 'done' one remains: what an operator does, restart it again.
                    self.kill(host)
                    self.start(host)
                    wait_until(
                        lambda svc=svc: self._unforce(svc["id"]),
                        f"Nova to let {host} be un-forced after a second restart",
                        timeout,
                        every=0.5,
                    )
        wait_until(
            lambda: all(s["state"] == "up" for s in self.services().values()),
            "every compute service up",
            timeout,
            every=0.2,
        )
        # Enabled only once up: Nova tells a compute that is up to drop its
        # COMPUTE_STATUS_DISABLED trait in placement; one that is down keeps it (and
        # gets no new instance) until its next periodic resource update.
        for host, svc in self.services().items():
            if svc["status"] == "disabled" or self._disabled_trait(host):
                self._set_status(svc["id"], "disabled")
                self._set_status(svc["id"], "enabled")
                # The compute drops the trait when Nova tells it; one that has only just
                # started can miss that (then "no allocation candidates" on it until its
                # periodic update): wait for it, and tell it once more if need be.
                for attempt in (1, 2):
                    try:
                        wait_until(
                            lambda host=host: not self._disabled_trait(host),
                            f"{host}'s COMPUTE_STATUS_DISABLED trait gone",
                            10 if attempt == 1 else timeout,
                            every=0.5,
                        )
                        break
                    except AssertionError:
                        if attempt == 2:
                            raise
                        self._set_status(svc["id"], "disabled")
                        self._set_status(svc["id"], "enabled")
        self.delete_all_servers(timeout)
        return time.monotonic() - t0

    def _set_status(self, service_id: str, status: str) -> None:
        self.nova("PUT", f"/os-services/{service_id}", {"status": status}, mv="2.53")

    def _disabled_trait(self, host: str) -> bool:
        # Placement through the catalog, with the admin's Keystone token.
        placement = self.conn.placement
        found = placement.get(
            "/resource_providers", params={"name": host}, microversion="1.6"
        ).json()
        for rp in found["resource_providers"]:
            path = f"/resource_providers/{rp['uuid']}/traits"
            traits = placement.get(path, microversion="1.6").json()
            if "COMPUTE_STATUS_DISABLED" in traits["traits"]:
                return True
        return False

    def _api_answers(self) -> bool:
        try:
            return bool(self.conn.compute.get("/", microversion=None).status_code == 200)
        except Exception:
            return False

    def _unforce(self, service_id: str) -> bool:
        response = self.conn.compute.request(
            f"/os-services/{service_id}", "PUT", json={"forced_down": False}, microversion="2.53"
        )
        return bool(response.status_code == 200)

    def delete_all_servers(self, timeout: float = 60) -> None:
        servers = self.nova("GET", "/servers?all_tenants=1")["servers"]
        for s in servers:
            self.conn.compute.request(f"/servers/{s['id']}", "DELETE", microversion="2.94")
        wait_until(
            lambda: not self.nova("GET", "/servers?all_tenants=1")["servers"],
            "every server deleted",
            timeout,
            every=0.2,
        )


class ProcessFence(FenceDevice):
    """The 'BMC' of a minicloud compute: its power is its nova-compute process."""

    def __init__(self, cloud: Minicloud, host: str) -> None:
        self.cloud, self.host = cloud, host
        self.description = f"minicloud process of {host}"

    def power_off(self) -> None:
        if self.cloud.running(self.host):
            self.cloud.kill(self.host)

    def power_on(self) -> None:
        self.cloud.start(self.host)

    def power_status(self) -> PowerState:
        return PowerState.ON if self.cloud.running(self.host) else PowerState.OFF


@dataclass
class Vigil:
    server: VigilServer
    api: httpx.Client
    driver: OpenStackCompute

    def recovery(self, host: str) -> dict[str, Any] | None:
        recs = self.api.get("/v1/recoveries", params={"host": host}).json()
        return recs[0] if recs else None

    def finished_recovery(self, host: str, timeout: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            rec = self.recovery(host)
            return rec if rec and rec["status"] in ("succeeded", "failed") else None

        result: dict[str, Any] = wait_until(done, f"the recovery of {host}", timeout, every=0.1)
        return result


@contextmanager
def running_vigil(
    cloud: Minicloud,
    tmp_path: Path,
    overrides: list[str] | None = None,
    *,
    max_parallel_evacuations: int | None = 4,
    alive: Callable[[str], bool] | None = None,
    network: NetworkDriver | None = None,
) -> Iterator[Vigil]:
    """vigil-server in-process on the minicloud: the openstack compute driver, compute1..3
    in one segment fenced through their processes (ProcessFence), and their heartbeats;
    returns once every host is up. ``max_parallel_evacuations`` None: the default.
    ``alive(host)``: whether the host's agent sends heartbeats; by default while its
    nova-compute runs (killing it is the host's power cut)."""
    conf = config.load([], config_files=[])
    config.apply_overrides(
        conf,
        [
            f"database.connection=sqlite:///{tmp_path / 'vigil.db'}",
            "api.port=0",
            "agent.listen_port=0",
            f"api.auth_token={config.random_secret()}",
            f"agent.key={config.random_secret()}",
            "agent.accept_master_key=true",  # one sender signs every host's heartbeats
            *(overrides or []),
        ],
    )
    settings = config.settings_from_conf(conf)
    driver = build_openstack_compute("minicloud")  # checks the credentials, like start-up

    def fences(host: Host) -> list[FenceDevice]:
        return [ProcessFence(cloud, host.name)]

    server = VigilServer(settings, compute=driver, fence_devices=fences, network=network)
    server.start()
    api = httpx.Client(
        base_url=server.api_url,
        headers={"Authorization": f"Bearer {settings.api_token}"},
        timeout=30,
    )
    # A host's agent lives and dies with its nova-compute here.
    sender = HeartbeatSender(
        COMPUTES,
        server=server.heartbeat_address,
        key=settings.agent_key.encode(),
        interval=settings.detection.heartbeat_interval,
        alive=alive or cloud.running,
    )
    try:
        api.post(
            "/v1/segments",
            json={"name": "minicloud", "default_policy": "off"}
            | (
                {"max_parallel_evacuations": max_parallel_evacuations}
                if max_parallel_evacuations
                else {}
            ),
        ).raise_for_status()
        for host in COMPUTES:
            api.post(
                "/v1/hosts",
                json={"name": host, "segment": "minicloud", "fencing": [{"driver": "sim"}]},
            ).raise_for_status()
        sender.start()
        wait_until(
            lambda: all(h["state"] == "up" for h in api.get("/v1/hosts").json()),
            "every host's first heartbeat",
            15,
            every=0.2,
        )
        yield Vigil(server, api, driver)
    finally:
        sender.stop()
        api.close()
        server.stop()


CLUSTERS_VIGIL_URL = "http://10.20.0.1:8675"  # where the members would reach vigil


@contextmanager
def cluster_vigil(cloud: Minicloud, tmp_path: Path) -> Iterator[Vigil]:
    """vigil-server for in-guest clusters on the real Nova and Neutron (issue 19), on a
    restored cloud; the servers left behind deleted on the way out."""
    cloud.restore()
    with running_vigil(
        cloud,
        tmp_path,
        [f"clusters.vigil_url={CLUSTERS_VIGIL_URL}"],
        network=build_openstack_network("minicloud"),
    ) as v:
        yield v
    cloud.delete_all_servers()
