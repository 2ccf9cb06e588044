"""Masakari's API as vigil serves it, over plain HTTP: wrapping, status codes, validation,
microversions, paging, sorting, filters, the project id in the path, authentication."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from support import wait_until

from .vigil_masakari import Running

GENERATED = "2026-08-01T10:00:00.123456"


def segment(client: httpx.Client, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "recovery_method": "auto", "service_type": "COMPUTE", **extra}
    response = client.post("/segments", json={"segment": body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()["segment"]
    return created


def host(client: httpx.Client, seg: str, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "type": "COMPUTE", "control_attributes": "SSH", **extra}
    response = client.post(f"/segments/{seg}/hosts", json={"host": body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()["host"]
    return created


def notify(
    client: httpx.Client, hostname: str, kind: str, payload: dict[str, str]
) -> httpx.Response:
    body = {"type": kind, "hostname": hostname, "generated_time": GENERATED, "payload": payload}
    return client.post("/notifications", json={"notification": body})


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    ((key, fault),) = response.json().items()
    assert fault["code"] == status
    message: str = fault["message"]
    return f"{key}: {message}"


def test_segment_lifecycle_wrapped_like_masakari(vigil: Running) -> None:
    with vigil.masakari("1.2") as c:
        seg = segment(c, "zone-a", description="rack 1", enabled=True)
        assert seg["recovery_method"] == "auto" and seg["service_type"] == "COMPUTE"
        assert seg["enabled"] is True and seg["description"] == "rack 1"
        assert set(seg) >= {"id", "uuid", "created_at", "updated_at"}
        assert c.get(f"/segments/{seg['uuid']}").json()["segment"]["name"] == "zone-a"
        assert c.get(f"/segments/{seg['id']}").json()["segment"]["uuid"] == seg["uuid"]
        updated = c.put(
            f"/segments/{seg['uuid']}", json={"segment": {"recovery_method": "rh_priority"}}
        )
        assert updated.json()["segment"]["recovery_method"] == "rh_priority"
        assert updated.json()["segment"]["updated_at"]
        assert "conflictingRequest" in error(
            segment_dup := c.post(
                "/segments",
                json={
                    "segment": {"name": "zone-a", "recovery_method": "auto", "service_type": "C"}
                },
            ),
            409,
        )
        assert segment_dup.status_code == 409
        assert c.delete(f"/segments/{seg['uuid']}").status_code == 204
        assert "itemNotFound" in error(c.get(f"/segments/{seg['uuid']}"), 404)
    # It is vigil's segment: its own API sees it come and go.
    assert vigil.api.get("/v1/segments").json() == []


def test_segment_made_through_vigils_api_is_seen_with_masakari_defaults(vigil: Running) -> None:
    vigil.api.post("/v1/segments", json={"name": "native"}).raise_for_status()
    with vigil.masakari() as c:
        (seg,) = c.get("/segments").json()["segments"]
    assert seg["name"] == "native"
    assert (seg["recovery_method"], seg["service_type"], seg["enabled"]) == (
        "auto",
        "COMPUTE",
        True,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"segment": {"name": "x", "recovery_method": "auto"}},  # service_type missing
        {"segment": {"name": "x", "recovery_method": "fast", "service_type": "COMPUTE"}},
        {"segment": {"name": "", "recovery_method": "auto", "service_type": "COMPUTE"}},
        {"segment": {"name": "x", "recovery_method": "auto", "service_type": "C", "color": "red"}},
        {"name": "x", "recovery_method": "auto", "service_type": "COMPUTE"},  # not wrapped
        # enabled is 1.2: at 1.0 it is an unknown field
        {"segment": {"name": "x", "recovery_method": "auto", "service_type": "C", "enabled": True}},
    ],
)
def test_segment_validation_is_400(vigil: Running, body: dict[str, Any]) -> None:
    with vigil.masakari("1.0") as c:
        assert "badRequest" in error(c.post("/segments", json=body), 400)
        assert c.get("/segments").json() == {"segments": []}


def test_microversions(vigil: Running) -> None:
    with vigil.masakari() as c:
        response = c.get("/segments")
        assert response.headers["OpenStack-API-Version"] == "instance-ha 1.0"
        assert "OpenStack-API-Version" in response.headers["Vary"]
        for asked, answered in (("1.2", "1.2"), ("latest", "1.3"), ("1.3", "1.3")):
            headers = {"OpenStack-API-Version": f"instance-ha {asked}"}
            assert c.get("/segments", headers=headers).headers["OpenStack-API-Version"] == (
                f"instance-ha {answered}"
            )
        for out_of_range in ("1.4", "2.0"):
            headers = {"OpenStack-API-Version": f"instance-ha {out_of_range}"}
            assert "notAcceptable" in error(c.get("/segments", headers=headers), 406)
        for malformed in ("one", "0.9", "1.02"):  # Masakari's format: no 0 major, no 0 padding
            bad = {"OpenStack-API-Version": f"instance-ha {malformed}"}
            assert "badRequest" in error(c.get("/segments", headers=bad), 400)


def test_version_documents_are_public(vigil: Running) -> None:
    root = httpx.get(vigil.endpoint.removesuffix("/v1") + "/")
    # Masakari's versions controller answers / with 300 Multiple Choices.
    assert root.status_code == 300
    assert root.headers["OpenStack-API-Version"] == "instance-ha 1.0"
    (choice,) = root.json()["choices"]
    assert (choice["id"], choice["status"]) == ("v1.0", "CURRENT")
    assert choice["links"] == [{"rel": "self", "href": vigil.endpoint + "/"}]
    assert choice["media-types"][0]["type"] == "application/vnd.openstack.masakari+json;version=1"
    version = httpx.get(vigil.endpoint).json()["version"]
    assert (version["id"], version["min_version"], version["version"]) == ("v1.0", "1.0", "1.3")
    assert [link["rel"] for link in version["links"]] == ["self", "describedby"]
    assert version["links"][1]["href"] == "https://docs.openstack.org/"


def test_authentication(vigil: Running) -> None:
    assert httpx.get(f"{vigil.endpoint}/segments").status_code == 401
    wrong = httpx.get(f"{vigil.endpoint}/segments", headers={"X-Auth-Token": "nope"})
    assert "unauthorized" in error(wrong, 401)
    bearer = httpx.get(
        f"{vigil.endpoint}/segments", headers={"Authorization": f"Bearer {vigil.token}"}
    )
    assert bearer.status_code == 200


def test_project_id_in_the_path_or_not(vigil: Running) -> None:
    project = "6d1b9e7c5f3a4c0e9b8a7d6c5b4a3f21"
    with vigil.masakari() as c:
        seg = segment(c, "zone-a")
        with_project = c.get(f"/{project}/segments/{seg['uuid']}")
        assert with_project.json()["segment"]["uuid"] == seg["uuid"]
        body = {"host": {"name": "compute-1", "type": "COMPUTE", "control_attributes": "SSH"}}
        created = c.post(f"/{project}/segments/{seg['uuid']}/hosts", json=body)
        assert created.status_code == 201, created.text
        h = created.json()["host"]
        assert c.get(f"/segments/{seg['uuid']}/hosts/{h['uuid']}").json()["host"]["name"] == (
            "compute-1"
        )
        assert c.get(f"/{project}").json()["version"]["id"] == "v1.0"
        assert "itemNotFound" in error(c.get(f"/{project}/segments/{seg['uuid']}/racks"), 404)


def test_paging_sorting_and_filters_of_segments(vigil: Running) -> None:
    with vigil.masakari("1.2") as c:
        for i in range(7):
            segment(
                c,
                f"seg-{i}",
                recovery_method="auto" if i % 2 else "reserved_host",
                enabled=i != 3,
            )
        newest_first = [s["name"] for s in c.get("/segments").json()["segments"]]
        assert newest_first == [f"seg-{i}" for i in reversed(range(7))]
        by_name = c.get("/segments", params={"sort_key": "name", "sort_dir": "asc", "limit": 3})
        page1 = [s["name"] for s in by_name.json()["segments"]]
        assert page1 == ["seg-0", "seg-1", "seg-2"]
        marker = by_name.json()["segments"][-1]["uuid"]
        page2 = c.get(
            "/segments",
            params={"sort_key": "name", "sort_dir": "asc", "limit": 3, "marker": marker},
        ).json()["segments"]
        assert [s["name"] for s in page2] == ["seg-3", "seg-4", "seg-5"]
        reserved = c.get("/segments", params={"recovery_method": "reserved_host"}).json()
        assert sorted(s["name"] for s in reserved["segments"]) == [
            "seg-0",
            "seg-2",
            "seg-4",
            "seg-6",
        ]
        disabled = c.get("/segments", params={"enabled": "false"}).json()["segments"]
        assert [s["name"] for s in disabled] == ["seg-3"]
        assert len(c.get("/segments", params={"limit": 5000}).json()["segments"]) == 7
        assert "badRequest" in error(c.get("/segments", params={"marker": "nope"}), 400)
        assert "badRequest" in error(c.get("/segments", params={"limit": -1}), 400)
        assert "badRequest" in error(c.get("/segments", params={"sort_key": "colour"}), 400)
        assert "badRequest" in error(c.get("/segments", params={"sort_dir": "up"}), 400)
    # enabled=false is vigil's segment pause: automatic recovery held there.
    paused = {s["name"]: s["paused"] for s in vigil.api.get("/v1/segments").json()}
    assert paused["seg-3"] is True and paused["seg-2"] is False


def test_hosts_must_be_nova_computes_and_unique(vigil: Running) -> None:
    with vigil.masakari() as c:
        a = segment(c, "a")
        b = segment(c, "b")
        h = host(c, a["uuid"], "compute-1", reserved=True)
        assert h["failover_segment_id"] == a["uuid"]
        assert h["failover_segment"]["name"] == "a"
        assert h["reserved"] is True and h["on_maintenance"] is False
        unknown = {"host": {"name": "nowhere", "type": "COMPUTE", "control_attributes": "x"}}
        assert "badRequest" in error(c.post(f"/segments/{a['uuid']}/hosts", json=unknown), 400)
        again = {"host": {"name": "compute-1", "type": "COMPUTE", "control_attributes": "x"}}
        error(c.post(f"/segments/{b['uuid']}/hosts", json=again), 409)
        bad_type = {"host": {"name": "compute-2", "type": "COM PUTE", "control_attributes": "x"}}
        error(c.post(f"/segments/{a['uuid']}/hosts", json=bad_type), 400)
        error(c.get(f"/segments/{b['uuid']}/hosts/{h['uuid']}"), 404)
        host(c, a["uuid"], "compute-2", type="SSH")
        host(c, a["uuid"], "compute-3", on_maintenance=True)

        def names(**q: str) -> list[str]:
            hosts = c.get(f"/segments/{a['uuid']}/hosts", params=q).json()["hosts"]
            return sorted(x["name"] for x in hosts)

        assert names() == ["compute-1", "compute-2", "compute-3"]
        assert names(type="SSH") == ["compute-2"]
        assert names(reserved="true") == ["compute-1"]
        assert names(on_maintenance="True") == ["compute-3"]
        assert names(name="compute-2") == ["compute-2"]
        error(c.get(f"/segments/{a['uuid']}/hosts", params={"reserved": "maybe"}), 400)
        changed = c.put(
            f"/segments/{a['uuid']}/hosts/{h['uuid']}",
            json={"host": {"on_maintenance": True, "control_attributes": "IPMI"}},
        ).json()["host"]
        assert changed["on_maintenance"] is True and changed["control_attributes"] == "IPMI"
    vigil_host = vigil.api.get("/v1/hosts/compute-1").json()
    assert vigil_host["maintenance"] is True and vigil_host["reserved"] is True
    assert vigil_host["segment"] == "a"


def test_notifications_validated_like_masakari(vigil: Running) -> None:
    with vigil.masakari() as c:
        seg = segment(c, "a")
        host(c, seg["uuid"], "compute-1")
        host(c, seg["uuid"], "compute-2", on_maintenance=True)
        stopped = {"event": "STOPPED", "process_name": "nova-compute"}
        assert "badRequest" in error(notify(c, "compute-9", "PROCESS", stopped), 400)
        assert "conflictingRequest" in error(notify(c, "compute-2", "PROCESS", stopped), 409)
        error(notify(c, "compute-1", "PROCESS", {"event": "STOPPED"}), 400)
        error(notify(c, "compute-1", "PROCESS", {**stopped, "event": "GONE"}), 400)
        error(notify(c, "compute-1", "COMPUTE_HOST", {"event": "STOPPED", "extra": "x"}), 400)
        error(
            notify(
                c,
                "compute-1",
                "VM",
                {"event": "LIFECYCLE", "vir_domain_event": "x", "instance_uuid": "nope"},
            ),
            400,
        )
        error(notify(c, "compute-1", "DISK", stopped), 400)
        bad_time = {
            "type": "PROCESS",
            "hostname": "compute-1",
            "generated_time": "yesterday",
            "payload": stopped,
        }
        error(c.post("/notifications", json={"notification": bad_time}), 400)
        first = notify(c, "compute-1", "PROCESS", stopped)
        assert first.status_code == 202, first.text
        n = first.json()["notification"]
        assert n["status"] == "ignored" and "vigil does not act" in n["message"]
        assert n["generated_time"] == GENERATED
        # the same report again within the detection interval
        assert "conflictingRequest" in error(notify(c, "compute-1", "PROCESS", stopped), 409)
        started = notify(c, "compute-1", "PROCESS", {**stopped, "event": "STARTED"})
        assert started.status_code == 202
        vm = notify(
            c,
            "compute-1",
            "VM",
            {
                "event": "LIFECYCLE",
                "vir_domain_event": "STOPPED_FAILED",
                "instance_uuid": "21ecef7a-0000-4000-8000-000000000001",
            },
        )
        assert vm.status_code == 202
        listed = c.get("/notifications").json()["notifications"]
        assert [x["type"] for x in listed] == ["VM", "PROCESS", "PROCESS"]
        assert [
            x["type"]
            for x in c.get("/notifications", params={"type": "VM"}).json()["notifications"]
        ] == ["VM"]
        since = c.get("/notifications", params={"generated-since": "2026-08-01T10:00:01"}).json()
        assert since == {"notifications": []}
        error(c.get("/notifications", params={"generated-since": "soon"}), 400)
        only_first = c.get(
            "/notifications", params={"sort_key": "id", "sort_dir": "asc", "limit": 1}
        )
        assert only_first.json()["notifications"][0]["notification_uuid"] == n["notification_uuid"]
        error(c.get("/notifications/not-a-uuid"), 404)
        error(c.get(f"/notifications/{n['notification_uuid']}/vmoves"), 400)  # not a host failure


DOWN = {"event": "STOPPED", "cluster_status": "OFFLINE", "host_status": "NORMAL"}


def masakari_hosts(vigil: Running, c: httpx.Client) -> None:
    """Every simulated compute in a segment, with its (simulated) BMC as fencing."""
    assert vigil.cloud is not None
    seg = segment(c, "a")
    for name in vigil.cloud.hosts():
        host(c, seg["uuid"], name)
        vigil.api.patch(f"/v1/hosts/{name}", json={"fencing": [{"driver": "sim"}]})


def test_compute_host_notification_alone_fences_nothing(vigil: Running) -> None:
    assert vigil.cloud is not None
    with vigil.masakari("1.3") as c:
        masakari_hosts(vigil, c)
        # The host is hung, not off: its BMC reads on, and vigil hears no heartbeats of
        # its own to agree with the monitor.
        vigil.cloud.hang("compute-2")
        n = notify(c, "compute-2", "COMPUTE_HOST", DOWN).json()["notification"]
        wait_until(
            lambda: vigil.api.get("/v1/hosts/compute-2").json()["state"] == "suspect",
            "compute-2 suspect",
            20.0,
        )
        time.sleep(1.5)  # several engine cycles and BMC reads
        shown = c.get(f"/notifications/{n['notification_uuid']}").json()["notification"]
        # Still open, or already closed as not corroborated (once the report is
        # detection.failed_after old with the BMC reading on: which one depends on how
        # soon "suspect" was seen above); never acted on.
        assert shown["status"] in ("new", "ignored"), shown
        assert shown["recovery_workflow_details"] == []
        assert c.get(f"/notifications/{n['notification_uuid']}/vmoves").json() == {"vmoves": []}
        assert vigil.api.get("/v1/recoveries").json() == []
        assert vigil.cloud.bmc_power_status("compute-2").value == "on"
        # The monitor says it is back: the report is withdrawn.
        back = {"event": "STARTED", "cluster_status": "ONLINE", "host_status": "NORMAL"}
        assert notify(c, "compute-2", "COMPUTE_HOST", back).json()["notification"]["status"] == (
            "finished"
        )
        time.sleep(1.0)  # and its silence alone (no vigil agent on it) declares nothing
        assert vigil.api.get("/v1/recoveries").json() == []


def test_compute_host_notification_is_one_signal_fenced_then_evacuated(vigil: Running) -> None:
    assert vigil.cloud is not None
    with vigil.masakari("1.3") as c:
        masakari_hosts(vigil, c)
        down = DOWN

        # Power lost: the BMC agrees, vigil fences, then evacuates.
        vigil.cloud.power_loss("compute-1")
        response = notify(c, "compute-1", "COMPUTE_HOST", down)
        assert response.status_code == 202
        n = response.json()["notification"]
        assert n["status"] == "new"

        def finished() -> dict[str, Any] | None:
            shown = c.get(f"/notifications/{n['notification_uuid']}").json()["notification"]
            return shown if shown["status"] in ("finished", "error", "failed") else None

        shown = wait_until(finished, "the notification to finish", 20.0)
        assert shown["status"] == "finished", shown
        tasks = [t["name"] for t in shown["recovery_workflow_details"]]
        assert tasks[0] == "FenceHostTask" and "EvacuateInstancesTask" in tasks
        assert all(t["state"] == "SUCCESS" for t in shown["recovery_workflow_details"])
        vmoves = c.get(f"/notifications/{n['notification_uuid']}/vmoves").json()["vmoves"]
        assert vmoves and all(v["status"] == "succeeded" for v in vmoves)
        assert all(
            v["source_host"] == "compute-1" and v["dest_host"] not in (None, "compute-1")
            for v in vmoves
        )
        one = c.get(f"/notifications/{n['notification_uuid']}/vmoves/{vmoves[0]['uuid']}")
        assert one.json()["vmove"]["instance_uuid"] == vmoves[0]["instance_uuid"]
        at10 = c.get(
            f"/notifications/{n['notification_uuid']}",
            headers={"OpenStack-API-Version": "instance-ha 1.0"},
        )
        assert "recovery_workflow_details" not in at10.json()["notification"]
    (recovery,) = vigil.api.get("/v1/recoveries", params={"host": "compute-1"}).json()
    fence = next(s for s in recovery["steps"] if s["kind"] == "fence")
    assert fence["status"] == "succeeded"
    failure = vigil.api.get("/v1/failures", params={"host": "compute-1"}).json()[0]
    assert failure["sources"] == ["masakari", "bmc"]


def test_a_guest_agent_error_is_an_application_failure_where_checks_are_declared(
    vigil: Running,
) -> None:
    """The introspective monitor's QEMU_GUEST_AGENT_ERROR maps to vigil's application
    checks; an instance that declares none is told so (the mapping itself:
    tests/engine/test_app_engine.py)."""
    with vigil.masakari() as c:
        seg = segment(c, "a")
        host(c, seg["uuid"], "compute-1")
        payload = {
            "event": "QEMU_GUEST_AGENT_ERROR",
            "vir_domain_event": "guest agent did not answer guest-ping",
            "instance_uuid": "21ecef7a-0000-4000-8000-000000000002",
        }
        n = notify(c, "compute-1", "VM", payload).json()["notification"]
        assert n["status"] == "ignored"
        assert "vigil runs no application checks for instance" in n["message"]
