"""Issue 13 as a Masakari client sees it: a notification for a host vigil cannot fence
ends, with a reason, and unlocks the host and segment by Masakari's rules; only the host
under recovery is locked; the README's SDK example works as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openstack
import openstack.exceptions
import pytest
from support import wait_until

from .test_api import DOWN, error, host, notify, segment
from .vigil_masakari import Running

pytestmark = pytest.mark.masakari


def _segment_of_sim_hosts(vigil: Running, c: httpx.Client, fencing: bool) -> dict[str, Any]:
    assert vigil.cloud is not None
    seg = segment(c, "rack")
    for name in vigil.cloud.hosts():
        host(c, seg["uuid"], name)
        if fencing:
            vigil.api.patch(f"/v1/hosts/{name}", json={"fencing": [{"driver": "sim"}]})
    return seg


def _shown(c: httpx.Client, n: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = c.get(f"/notifications/{n['notification_uuid']}").json()["notification"]
    return shown


def test_a_host_vigil_cannot_fence_ends_failed_with_its_reason_and_unlocks(
    vigil: Running,
) -> None:
    """No fencing level: nothing may be evacuated (S1). The client is told at once and
    clearly, and may then change or delete the host and its segment."""
    assert vigil.cloud is not None
    with vigil.masakari("1.3") as c:
        seg = _segment_of_sim_hosts(vigil, c, fencing=False)
        vigil.cloud.power_loss("compute-1")
        n = notify(c, "compute-1", "COMPUTE_HOST", DOWN).json()["notification"]
        ended = wait_until(
            lambda: (s := _shown(c, n))["status"] not in ("new", "running") and s,
            "the notification to end",
            10,
        )
        assert ended["status"] == "failed", ended
        fence = ended["recovery_workflow_details"][0]
        assert (fence["name"], fence["state"]) == ("FenceHostTask", "FAILURE")
        assert "fenc" in fence["progress_details"][0]["message"].lower()
        assert ended["message"]  # the recovery's reason, readable without microversions
        assert c.get(f"/notifications/{n['notification_uuid']}/vmoves").json()["vmoves"] == []

        hosts = {h["name"]: h for h in c.get(f"/segments/{seg['uuid']}/hosts").json()["hosts"]}
        changed = c.put(
            f"/segments/{seg['uuid']}/hosts/{hosts['compute-1']['uuid']}",
            json={"host": {"on_maintenance": True}},
        )
        assert changed.status_code == 200, changed.text
        updated = c.put(f"/segments/{seg['uuid']}", json={"segment": {"description": "x"}})
        assert updated.status_code == 200, updated.text
        gone = c.delete(f"/segments/{seg['uuid']}/hosts/{hosts['compute-1']['uuid']}")
        assert gone.status_code == 204, gone.text
        assert c.delete(f"/segments/{seg['uuid']}").status_code == 204


def test_only_the_host_under_recovery_is_locked(vigil: Running) -> None:
    """vigil's lock is per host: another host of the segment can be changed meanwhile."""
    assert vigil.cloud is not None
    with vigil.masakari("1.3") as c:
        seg = _segment_of_sim_hosts(vigil, c, fencing=True)
        # Held by the operator's pause: the recovery waits, the notification runs.
        vigil.api.post("/v1/control/pause", json={"reason": "test holds the recovery"})
        vigil.cloud.power_loss("compute-1")
        n = notify(c, "compute-1", "COMPUTE_HOST", DOWN).json()["notification"]
        wait_until(lambda: _shown(c, n)["status"] == "running", "the notification to run", 20.0)
        hosts = {h["name"]: h for h in c.get(f"/segments/{seg['uuid']}/hosts").json()["hosts"]}
        url = f"/segments/{seg['uuid']}/hosts/"
        other = c.put(url + hosts["compute-2"]["uuid"], json={"host": {"reserved": True}})
        assert other.status_code == 200, other.text
        assert c.delete(url + hosts["compute-3"]["uuid"]).status_code == 204
        locked = c.put(url + hosts["compute-1"]["uuid"], json={"host": {"reserved": True}})
        assert "conflictingRequest" in error(locked, 409)
        assert "conflictingRequest" in error(c.delete(url + hosts["compute-1"]["uuid"]), 409)
        vigil.api.post("/v1/control/resume")


def test_renaming_a_host_to_a_name_nova_does_not_know_is_409(vigil: Running) -> None:
    with vigil.masakari() as c:
        seg = segment(c, "rack")
        made = host(c, seg["uuid"], "compute-1")
        renamed = c.put(
            f"/segments/{seg['uuid']}/hosts/{made['uuid']}", json={"host": {"name": "nowhere"}}
        )
        assert "conflictingRequest" in error(renamed, 409)


def test_the_readmes_clouds_yaml_works_as_written(
    vigil: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's example, with its placeholders filled in."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert "auth_type: admin_token" in example
    clouds = example.replace("http://vigil:8787/instance-ha/v1", vigil.endpoint).replace(
        "VIGIL_API_TOKEN", vigil.token
    )
    (tmp_path / "clouds.yaml").write_text(clouds)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    ha = openstack.connect(cloud="vigil").instance_ha
    made = ha.create_segment(name="zone", recovery_method="auto", service_type="COMPUTE")
    assert [s.name for s in ha.segments()] == ["zone"] and made.uuid


def test_auth_type_none_sends_no_token_of_vigils(vigil: Running) -> None:
    """keystoneauth's ``none`` plugin sends the token "notused": vigil refuses it (401),
    which is why the README uses ``admin_token``."""
    conn = openstack.connection.Connection(
        auth_type="none", instance_ha_endpoint_override=vigil.endpoint
    )
    with pytest.raises(openstack.exceptions.HttpException) as refused:
        list(conn.instance_ha.segments())
    assert refused.value.status_code == 401
