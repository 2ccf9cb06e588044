"""openstacksdk's ``instance_ha`` proxy (code nobody here wrote) drives vigil: segments and
hosts with filters and paging, notifications, their status and recovery details, vmoves.

Authenticated as Masakari's clients are without Keystone: keystoneauth's ``admin_token``
plugin, which sends vigil's API token as X-Auth-Token to the given endpoint."""

from __future__ import annotations

import openstack.exceptions
import pytest
from support import wait_until

from .vigil_masakari import Running

pytestmark = pytest.mark.masakari

GENERATED = "2026-08-01T10:00:00.123456"
DOWN = {"event": "STOPPED", "cluster_status": "OFFLINE", "host_status": "NORMAL"}


def test_segments_and_hosts_through_the_sdk(vigil: Running) -> None:
    ha = vigil.sdk()
    made = [
        ha.create_segment(
            name=f"zone-{i}",
            recovery_method=("auto", "reserved_host", "auto_priority", "rh_priority")[i % 4],
            service_type="COMPUTE",
            description=f"zone {i}",
        )
        for i in range(6)
    ]
    assert [s.name for s in ha.segments(sort_key="name", sort_dir="asc")] == [
        f"zone-{i}" for i in range(6)
    ]
    # The SDK pages by itself: limit 2 means three requests with a marker.
    assert len(list(ha.segments(limit=2))) == 6
    assert {s.name for s in ha.segments(recovery_method="reserved_host")} == {"zone-1", "zone-5"}
    updated = ha.update_segment(made[0].uuid, description="renamed rack", is_enabled=False)
    assert updated.description == "renamed rack" and updated.is_enabled is False
    assert [s.name for s in ha.segments(is_enabled=False)] == ["zone-0"]
    assert ha.get_segment(made[0].uuid).is_enabled is False

    seg = made[1]
    for name in ("compute-1", "compute-2", "compute-3"):
        ha.create_host(
            seg.uuid,
            name=name,
            type="COMPUTE",
            control_attributes="SSH",
            reserved=name == "compute-3",
        )
    hosts = list(ha.hosts(seg.uuid))
    assert sorted(h.name for h in hosts) == ["compute-1", "compute-2", "compute-3"]
    assert [h.name for h in ha.hosts(seg.uuid, reserved=True)] == ["compute-3"]
    first = ha.get_host(hosts[0].uuid, seg.uuid)
    assert first.failover_segment_id == seg.uuid
    changed = ha.update_host(first.uuid, seg.uuid, on_maintenance=True)
    assert changed.on_maintenance is True
    with pytest.raises(openstack.exceptions.BadRequestException):
        ha.create_host(seg.uuid, name="not-a-compute", type="COMPUTE", control_attributes="x")
    with pytest.raises(openstack.exceptions.ConflictException):
        ha.create_host(made[2].uuid, name="compute-2", type="COMPUTE", control_attributes="x")
    ha.delete_host(first.uuid, seg.uuid)
    assert len(list(ha.hosts(seg.uuid))) == 2
    ha.delete_segment(made[5].uuid)
    assert len(list(ha.segments())) == 5
    with pytest.raises(openstack.exceptions.NotFoundException):
        ha.get_segment(made[5].uuid)


def test_notifications_status_details_and_vmoves_through_the_sdk(vigil: Running) -> None:
    assert vigil.cloud is not None
    ha = vigil.sdk()
    seg = ha.create_segment(name="zone", recovery_method="auto", service_type="COMPUTE")
    for name in vigil.cloud.hosts():
        ha.create_host(seg.uuid, name=name, type="COMPUTE", control_attributes="")
        vigil.api.patch(f"/v1/hosts/{name}", json={"fencing": [{"driver": "sim"}]})

    process = ha.create_notification(
        type="PROCESS",
        hostname="compute-2",
        generated_time=GENERATED,
        payload={"event": "STOPPED", "process_name": "nova-compute"},
    )
    assert process.status == "ignored"
    with pytest.raises(openstack.exceptions.ConflictException):  # a duplicate
        ha.create_notification(
            type="PROCESS",
            hostname="compute-2",
            generated_time=GENERATED,
            payload={"event": "STOPPED", "process_name": "nova-compute"},
        )
    with pytest.raises(openstack.exceptions.BadRequestException):  # an unknown host
        ha.create_notification(
            type="COMPUTE_HOST", hostname="compute-9", generated_time=GENERATED, payload=DOWN
        )

    vigil.cloud.power_loss("compute-1")
    n = ha.create_notification(
        type="COMPUTE_HOST", hostname="compute-1", generated_time=GENERATED, payload=DOWN
    )
    assert n.status == "new"
    done = wait_until(
        lambda: (
            (got := ha.get_notification(n.notification_uuid)).status
            in ("finished", "error", "failed")
            and got
        ),
        "the notification to finish",
        20.0,
    )
    assert done.status == "finished"
    details = {d.name: d for d in done.recovery_workflow_details or []}
    if details:  # the SDK asks for the newest version it knows; 1.1+ shows the workflow
        assert details["FenceHostTask"].state == "SUCCESS"
        assert details["EvacuateInstancesTask"].progress == 1.0
    statuses = [x.status for x in ha.notifications(type="COMPUTE_HOST")]
    assert statuses == ["finished"]
    assert [x.type for x in ha.notifications(status="ignored")] == ["PROCESS"]

    moves = list(ha.vmoves(n.notification_uuid))
    assert moves and {m.status for m in moves} == {"succeeded"}
    assert {m.source_host for m in moves} == {"compute-1"}
    assert all(m.dest_host and m.dest_host != "compute-1" for m in moves)
    one = ha.get_vmove(moves[0].uuid, n.notification_uuid)
    assert one.server_id == moves[0].server_id
    assert len(list(ha.vmoves(n.notification_uuid, status="failed"))) == 0
