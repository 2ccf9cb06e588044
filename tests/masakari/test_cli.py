"""python-masakariclient's ``openstack segment … / notification …`` commands (in their own
virtualenv, tools/masakari/setup-clients) drive vigil, authenticated with
``--os-auth-type admin_token`` (endpoint + vigil's API token, no Keystone)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from services import require
from support import wait_until

from .conftest import OPENSTACK_CLI, installed
from .vigil_masakari import Running

pytestmark = pytest.mark.masakari

DOWN = '{"event": "STOPPED", "cluster_status": "OFFLINE", "host_status": "NORMAL"}'


class Cli:
    def __init__(self, vigil: Running) -> None:
        self.env = {
            **os.environ,
            "OS_AUTH_TYPE": "admin_token",
            "OS_ENDPOINT": vigil.endpoint,
            "OS_TOKEN": vigil.token,
        }
        for name in ("OS_CLOUD", "OS_CLIENT_CONFIG_FILE", "OS_AUTH_URL"):
            self.env.pop(name, None)

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(OPENSTACK_CLI), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if ok:
            assert result.returncode == 0, f"openstack {' '.join(args)}: {result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-f", "json").stdout)


@pytest.fixture
def cli(vigil: Running) -> Cli:
    require(
        "python-masakariclient (tools/masakari/setup-clients)", lambda: installed(OPENSTACK_CLI)
    )
    return Cli(vigil)


def test_segments_and_hosts_with_the_cli(vigil: Running, cli: Cli) -> None:
    a = cli.json("segment", "create", "zone-a", "auto", "COMPUTE", "--description", "rack 1")
    assert (a["name"], a["recovery_method"], a["description"]) == ("zone-a", "auto", "rack 1")
    b = cli.json(
        "--os-ha-api-version", "1.2",
        "segment", "create", "zone-b", "reserved_host", "COMPUTE", "--is_enabled", "False",
    )  # fmt: skip
    assert b["is_enabled"] is False
    cli.json("segment", "create", "zone-c", "rh_priority", "COMPUTE")

    names = [s["name"] for s in cli.json("segment", "list", "--sort", "name:asc")]
    assert names == ["zone-a", "zone-b", "zone-c"]
    # --limit is the page size: the SDK under the CLI follows the pages with markers.
    paged = cli.json("segment", "list", "--sort", "name:asc", "--limit", "1")
    assert [s["name"] for s in paged] == names
    after = cli.json("segment", "list", "--sort", "name:asc", "--marker", paged[0]["uuid"])
    assert [s["name"] for s in after] == ["zone-b", "zone-c"]
    reserved = cli.json("segment", "list", "--filters", "recovery_method=reserved_host")
    assert [s["name"] for s in reserved] == ["zone-b"]

    for name in ("compute-1", "compute-2"):
        cli.json("segment", "host", "create", name, "COMPUTE", "SSH", a["uuid"])
    cli.json("segment", "host", "create", "compute-3", "COMPUTE", "SSH", a["uuid"],
             "--reserved", "True")  # fmt: skip
    refused = cli.run("segment", "host", "create", "ghost", "COMPUTE", "SSH", a["uuid"], ok=False)
    assert refused.returncode != 0 and "ghost" in refused.stderr
    hosts = cli.json("segment", "host", "list", a["uuid"])
    assert sorted(h["name"] for h in hosts) == ["compute-1", "compute-2", "compute-3"]
    only = cli.json("segment", "host", "list", a["uuid"], "--filters", "reserved=True")
    assert [h["name"] for h in only] == ["compute-3"]
    updated = cli.json(
        "segment", "host", "update", a["uuid"], "compute-2", "--on_maintenance", "True"
    )
    assert updated["on_maintenance"] is True
    shown = cli.json("segment", "host", "show", a["uuid"], "compute-1")
    assert shown["failover_segment_id"] == a["uuid"]
    assert vigil.api.get("/v1/hosts/compute-2").json()["maintenance"] is True
    cli.run("segment", "delete", b["uuid"])
    assert len(cli.json("segment", "list")) == 2


def test_notifications_and_vmoves_with_the_cli(vigil: Running, cli: Cli) -> None:
    assert vigil.cloud is not None
    seg = cli.json("segment", "create", "zone", "auto", "COMPUTE")
    for name in vigil.cloud.hosts():
        cli.json("segment", "host", "create", name, "COMPUTE", "", seg["uuid"])
        vigil.api.patch(f"/v1/hosts/{name}", json={"fencing": [{"driver": "sim"}]})
    vigil.cloud.power_loss("compute-3")
    n = cli.json("notification", "create", "COMPUTE_HOST", "compute-3",
                 "2026-08-01T10:00:00.123456", DOWN)  # fmt: skip
    assert n["status"] == "new"
    uuid = n["notification_uuid"]

    def finished() -> dict[str, Any] | None:
        shown: dict[str, Any] = cli.json("notification", "show", uuid)
        return shown if shown["status"] in ("finished", "error", "failed") else None

    shown = wait_until(finished, "the notification to finish", 60)
    assert shown["status"] == "finished"
    tasks = {t["name"]: t["state"] for t in shown["recovery_workflow_details"]}
    assert tasks["FenceHostTask"] == "SUCCESS"
    assert tasks["EvacuateInstancesTask"] == "SUCCESS"
    moves = cli.json("notification", "vmove", "list", uuid)
    assert moves and {m["status"] for m in moves} == {"succeeded"}
    one = cli.json("notification", "vmove", "show", uuid, moves[0]["uuid"])
    assert one["source_host"] == "compute-3" and one["dest_host"] != "compute-3"
    listed = cli.json("notification", "list", "--filters", "status=finished")
    assert [x["notification_uuid"] for x in listed] == [uuid]
