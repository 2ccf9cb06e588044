"""A host's nova-compute down on a real Nova: disabled for scheduling, not fenced.

vigil-server runs in this process on the minicloud with the openstack compute driver;
compute2's agent keeps sending heartbeats (the host is fine) and its service watch
(``vigil.agent.services``, real HTTP) watches compute2's real nova-compute process. The
process is killed: Nova's own os-services shows compute2 disabled with vigil's reason, its
instance stays where it is, no recovery starts. nova-compute is started again: vigil
enables the service. An operator's disable set meanwhile is left alone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_until

from vigil.agent.services import ServiceWatch
from vigil.model import SERVICE_HOLD_PREFIX
from vigil.wire.keys import host_key

from .cloud import HOME, Minicloud, Vigil, report, running_vigil

pytestmark = pytest.mark.nova
HOST = "compute2"


@pytest.fixture
def cloud(minicloud: Minicloud) -> Iterator[Minicloud]:
    try:
        yield minicloud
    finally:
        minicloud.restore()


def nova_service(cloud: Minicloud) -> dict[str, object]:
    [service] = cloud.nova("GET", f"/os-services?binary=nova-compute&host={HOST}")["services"]
    return dict(service)


def watch_nova_compute(vigil: Vigil) -> ServiceWatch:
    """compute2's agent service watch: its nova-compute, told apart by its config file."""
    config = HOME / "etc" / HOST / "nova-compute.conf"
    return ServiceWatch(
        host=HOST,
        server_url=vigil.server.api_url,
        key=host_key(vigil.server.settings.agent_key, HOST).encode(),
        services={"nova-compute": rf"nova-compute .*{re.escape(str(config))}"},
        interval=0.2,
    )


def test_nova_compute_down_disables_the_host_and_does_not_fence_it(
    cloud: Minicloud, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server_id = cloud.boot("svc-watched", HOST, {"HA_Enabled": "True"})
    with running_vigil(cloud, tmp_path, alive=lambda host: True) as vigil:
        watch = watch_nova_compute(vigil)
        watch.start()
        try:
            wait_until(lambda: watch.acknowledged, "the first service snapshot", 15, every=0.2)
            assert nova_service(cloud)["status"] == "enabled"

            t0 = time.monotonic()
            cloud.kill(HOST)  # nova-compute alone dies; the host and its guests live on
            wait_until(
                lambda: nova_service(cloud)["status"] == "disabled",
                "Nova to show compute2 disabled",
                20,
                every=0.1,
            )
            disabled_in = time.monotonic() - t0
            # Nova shows the change before its answer reaches vigil, which records it then.
            wait_until(
                lambda: vigil.server.store.get_host_services(HOST).hold.value == "disabled",
                "vigil to record its hold",
                10,
                every=0.2,
            )
            service = nova_service(cloud)
            assert service["disabled_reason"] == f"{SERVICE_HOLD_PREFIX} nova-compute"
            assert service["forced_down"] is False
            assert vigil.recovery(HOST) is None  # not declared failed, not fenced
            host = vigil.api.get(f"/v1/hosts/{HOST}").json()
            assert host["state"] == "up"
            server = cloud.server(server_id)
            assert server["OS-EXT-SRV-ATTR:host"] == HOST and server["status"] == "ACTIVE"
            assert cloud.evacuations(server_id) == []
            report(
                request.config,
                f"{HOST}'s nova-compute killed -> disabled in Nova in {disabled_in:.1f}s, "
                "not fenced, its instance left running",
            )

            t1 = time.monotonic()
            cloud.start(HOST)
            wait_until(
                lambda: nova_service(cloud)["status"] == "enabled",
                "vigil to enable compute2 again",
                60,
                every=0.2,
            )
            report(
                request.config,
                f"{HOST}'s nova-compute back -> enabled again in {time.monotonic() - t1:.1f}s",
            )
            watched = {
                "vigil.host.service.down",
                "vigil.host.compute.disabled",
                "vigil.host.service.up",
                "vigil.host.compute.enabled",
            }

            def service_events() -> list[str]:
                events = vigil.api.get("/v1/events", params={"host": HOST, "limit": 1000})
                return [e["event_type"] for e in events.json() if e["event_type"] in watched]

            # The hold and its event are written right after Nova's answer.
            wait_until(lambda: len(service_events()) == 4, "the last event", 5, every=0.2)
            host_events = service_events()
            assert host_events == [
                "vigil.host.service.down",
                "vigil.host.compute.disabled",
                "vigil.host.service.up",
                "vigil.host.compute.enabled",
            ]
        finally:
            watch.stop()


def test_an_operators_disable_survives_nova_compute_coming_back(
    cloud: Minicloud, tmp_path: Path
) -> None:
    with running_vigil(cloud, tmp_path, alive=lambda host: True) as vigil:
        watch = watch_nova_compute(vigil)
        watch.start()
        try:
            wait_until(lambda: watch.acknowledged, "the first service snapshot", 15, every=0.2)
            cloud.kill(HOST)
            wait_until(
                lambda: nova_service(cloud)["status"] == "disabled",
                "compute2 disabled",
                20,
                every=0.2,
            )
            # The operator takes over: their own reason, their own decision.
            vigil.driver.disable(HOST, "operator: replacing a disk")
            cloud.start(HOST)
            wait_until(
                lambda: vigil.server.store.get_host_services(HOST).down == (),
                "nova-compute reported up",
                60,
                every=0.2,
            )
            wait_until(
                lambda: vigil.server.store.get_host_services(HOST).hold.value == "",
                "the hold released",
                15,
                every=0.2,
            )
            service = nova_service(cloud)
            assert service["status"] == "disabled"
            assert service["disabled_reason"] == "operator: replacing a disk"
        finally:
            watch.stop()
            vigil.driver.enable(HOST)
