"""Masakari's way, on a real Nova: a COMPUTE_HOST notification posted with openstacksdk's
``instance_ha`` proxy (as masakari-monitors' host monitor posts it) ends in a fenced host
and its instances evacuated by Nova, the notification ``finished`` and every vmove
``succeeded``; then the operator's Masakari gesture (``on_maintenance=false``) restores it.

vigil runs with Masakari's API mounted and NO heartbeat agents — a Masakari deployment
moving over: the notification makes the host suspect, the "BMC" (the compute's
nova-compute process, as in test_e2e_nova) reads off, vigil fences, forces the compute
service down and evacuates. The notification alone would not have done it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from masakari.vigil_masakari import running_vigil
from support import wait_until

from vigil.drivers.compute import MASAKARI_KEY, POLICY_KEY
from vigil.drivers.fencing import FenceDevice
from vigil.drivers.openstack import build_openstack_compute
from vigil.model import Host

from .cloud import COMPUTES, Minicloud, ProcessFence, report

pytestmark = [pytest.mark.nova, pytest.mark.masakari]

DOWN = {"event": "STOPPED", "cluster_status": "OFFLINE", "host_status": "NORMAL"}


@pytest.fixture
def cloud(minicloud: Minicloud) -> Iterator[Minicloud]:
    try:
        yield minicloud
    finally:
        minicloud.restore()


def test_compute_host_notification_fences_and_evacuates_on_real_nova(
    cloud: Minicloud, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    specs: dict[str, dict[str, str] | None] = {
        "legacy": {MASAKARI_KEY: "True"},  # Masakari's tag, understood as is
        "plain": None,  # Masakari evacuates every instance by default: so does the segment
        "scratch": {POLICY_KEY: "off"},  # an owner's opt-out
    }
    ids = cloud.boot_many(
        "compute1",
        {name: cloud.server_body(name, "compute1", meta) for name, meta in specs.items()},
    )
    moved = {n: ids[n] for n in ("legacy", "plain")}

    def fences(host: Host) -> list[FenceDevice]:
        return [ProcessFence(cloud, host.name)]

    driver = build_openstack_compute("minicloud")
    with running_vigil(tmp_path, compute=driver, fence_devices=fences) as vigil:
        ha = vigil.sdk()
        seg = ha.create_segment(name="minicloud", recovery_method="auto", service_type="COMPUTE")
        hosts = {
            name: ha.create_host(seg.uuid, name=name, type="COMPUTE", control_attributes="")
            for name in COMPUTES
        }

        cloud.kill("compute1")  # the host dies; the monitor tells
        t0 = time.monotonic()
        n = ha.create_notification(
            type="COMPUTE_HOST",
            hostname="compute1",
            generated_time="2026-08-01T10:00:00.123456",
            payload=DOWN,
        )
        assert n.status == "new"

        def finished() -> Any:
            got = ha.get_notification(n.notification_uuid)
            return got if got.status in ("finished", "error", "failed") else None

        done = wait_until(finished, "the notification to finish", 120, every=0.2)
        took = time.monotonic() - t0
        assert done.status == "finished", done
        report(request.config, f"masakari notification -> finished in {took:.2f}s")

        moves = list(ha.vmoves(n.notification_uuid))
        assert {m.server_id for m in moves} == set(moved.values())
        assert {m.status for m in moves} == {"succeeded"}
        for m in moves:
            server = cloud.server(m.server_id)
            assert server["status"] == "ACTIVE", server
            assert server["OS-EXT-SRV-ATTR:host"] == m.dest_host != "compute1"
            assert len(cloud.evacuations(m.server_id)) == 1
            report(request.config, f"  vmove {m.server_name:8} {m.source_host} -> {m.dest_host}")
        assert cloud.server(ids["scratch"])["OS-EXT-SRV-ATTR:host"] == "compute1"
        assert not cloud.evacuations(ids["scratch"])

        # Fenced before anything moved; the compute service forced down.
        (recovery,) = vigil.api.get("/v1/recoveries", params={"host": "compute1"}).json()
        kinds = [s["kind"] for s in recovery["steps"]]
        assert kinds[:4] == ["record-instances", "fence", "force-down", "list-instances"]
        fence = recovery["steps"][1]
        first_move = min(s["started_at"] for s in recovery["steps"] if s["kind"] == "evacuate")
        assert fence["status"] == "succeeded" and fence["finished_at"] <= first_move
        failure = vigil.api.get("/v1/failures", params={"host": "compute1"}).json()[0]
        assert failure["sources"] == ["masakari", "bmc"]
        service = cloud.services()["compute1"]
        assert service["forced_down"] and service["status"] == "disabled"
        assert not cloud.running("compute1")

        # Repaired: Masakari's operators clear on_maintenance; vigil restores the host.
        cloud.start("compute1")

        def restored() -> bool:
            try:
                ha.update_host(hosts["compute1"].uuid, seg.uuid, on_maintenance=False)
            except Exception:  # 409 until nova-compute has cleaned up the evacuated copies
                return False
            return True

        wait_until(restored, "the restore of compute1", 90, every=0.5)
        wait_until(
            lambda: cloud.services()["compute1"]["state"] == "up",
            "compute1 up in Nova",
            30,
            every=0.2,
        )
        service = cloud.services()["compute1"]
        assert not service["forced_down"] and service["status"] == "enabled"
        assert vigil.api.get("/v1/hosts/compute1").json()["state"] == "new"
