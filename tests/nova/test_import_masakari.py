"""``vigil import masakari`` against the real Masakari 22 (tools/masakari-server) on the
minicloud's real Nova: a deployment's segment (recovery method, description) and hosts
(reserved, on maintenance, control attributes) read through openstacksdk's instance_ha
proxy and created in vigil, every host vigil cannot protect yet named; run twice, nothing
is created twice."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import openstack
import pytest
from masakari.vigil_masakari import running_vigil
from services import require

from vigil.cli.main import main
from vigil.drivers.fencing import FenceDevice
from vigil.drivers.openstack import build_openstack_compute
from vigil.model import Host

from .cloud import REPO, Minicloud, ProcessFence, report

pytestmark = [pytest.mark.nova, pytest.mark.masakari]

TOOL = REPO / "tools" / "masakari-server" / "masakari-server"
SEGMENT = "import-rack"


def _tool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def masakari(minicloud: Minicloud, pytestconfig: pytest.Config) -> Iterator[str]:
    """The real Masakari API's endpoint; started here if it was not running."""

    def installed() -> None:
        done = _tool("status", timeout=60)
        if "not installed" in (done.stdout + done.stderr):
            raise RuntimeError("run tools/masakari-server/masakari-server install")

    require("masakari-server (tools/masakari-server: Masakari 22)", installed)
    already = _tool("status", timeout=60).returncode == 0
    started = _tool("start")
    if started.returncode != 0:
        pytest.fail(f"masakari-server start failed: {started.stderr[-2000:]}")
    report(pytestconfig, f"masakari-server {'already running' if already else 'started'}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        if not already:
            _tool("stop", timeout=120)


@pytest.fixture
def deployment(masakari: str, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A Masakari segment with three hosts, and a clouds.yaml naming Masakari's endpoint
    (noauth2 there: keystoneauth's admin_token plugin with Masakari's test token)."""
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  masakari-old:\n    auth_type: admin_token\n    auth:\n"
        f"      token: 'admin:admin'\n      endpoint: {masakari}\n"
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        conn = openstack.connect(cloud="masakari-old")
    hosts = {
        "compute1": {"control_attributes": "SSH"},
        "compute2": {"control_attributes": "SSH", "reserved": True},
        "compute3": {"control_attributes": "IPMI", "on_maintenance": True},
    }
    # Masakari's host names are unique across segments: take them from any segment (the
    # Masakari benchmark puts them back in its own when it runs).
    for seg in list(conn.instance_ha.segments()):
        for h in conn.instance_ha.hosts(seg.uuid):
            if h.name in hosts or seg.name == SEGMENT:
                conn.instance_ha.delete_host(h.uuid, segment_id=seg.uuid, ignore_missing=False)
        if seg.name == SEGMENT:  # left by an earlier run
            conn.instance_ha.delete_segment(seg.uuid)
    seg = conn.instance_ha.create_segment(
        name=SEGMENT,
        recovery_method="rh_priority",
        service_type="COMPUTE",
        description="moved from Masakari",
    )
    for name, extra in hosts.items():
        conn.instance_ha.create_host(seg.uuid, name=name, type="COMPUTE", **extra)
    try:
        yield conn, clouds
    finally:
        for h in conn.instance_ha.hosts(seg.uuid):
            conn.instance_ha.delete_host(h.uuid, segment_id=seg.uuid, ignore_missing=False)
        conn.instance_ha.delete_segment(seg.uuid)


def _import(url: str, token: str, clouds: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    env = os.environ.copy()
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(clouds)
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            args = ["--url", url, f"--token={token}", "--json", "import", "masakari"]
            code = main([*args, "--os-cloud", "masakari-old", *extra])
    finally:
        os.environ.clear()
        os.environ.update(env)
    return code, json.loads(buf.getvalue()) if buf.getvalue() else {}


def test_a_masakari_deployment_moves_over_and_unprotected_hosts_are_named(
    minicloud: Minicloud, deployment: tuple[Any, Path], tmp_path: Path
) -> None:
    _, clouds = deployment

    def fences(host: Host) -> list[FenceDevice]:
        return [ProcessFence(minicloud, host.name)]

    driver = build_openstack_compute("minicloud")
    with running_vigil(tmp_path, compute=driver, fence_devices=fences) as vigil:
        url = vigil.server.api_url
        code, dry = _import(url, vigil.token, clouds, "--dry-run")
        assert code == 0
        assert {o["result"] for o in dry["outcomes"]} == {"would create"}
        assert vigil.api.get("/v1/segments").json() == []  # a dry run creates nothing

        code, done = _import(url, vigil.token, clouds)
        assert code == 0, done
        rows = {(o["kind"], o["name"]): o for o in done["outcomes"]}
        assert rows[("segment", SEGMENT)]["result"] == "created"
        for name in ("compute1", "compute2", "compute3"):
            row = rows[("host", name)]
            assert row["result"] == "created"
            # vigil cannot protect them yet, and says what is missing
            assert row["missing"] == ["fencing", "agent"], row
            assert "vigil host update" in row["detail"]
        assert "3 hosts not yet protected by vigil" in done["summary"]

        # As Masakari had them, read back through vigil's Masakari API
        ha = vigil.sdk()
        (seg,) = [s for s in ha.segments() if s.name == SEGMENT]
        assert seg.recovery_method == "rh_priority"
        assert seg.description == "moved from Masakari"
        hosts = {h.name: h for h in ha.hosts(seg.uuid)}
        assert hosts["compute2"].reserved and not hosts["compute1"].reserved
        assert hosts["compute3"].on_maintenance
        assert hosts["compute3"].control_attributes == "IPMI"
        native = {h["name"]: h for h in vigil.api.get("/v1/hosts").json()}
        assert native["compute2"]["reserved"] and native["compute3"]["maintenance"]

        # Once fenced, a host is no longer named; nothing is created twice.
        vigil.api.patch("/v1/hosts/compute1", json={"fencing": [{"driver": "sim"}]})
        code, again = _import(url, vigil.token, clouds)
        assert code == 0
        assert {o["result"] for o in again["outcomes"]} == {"exists"}
        rows = {(o["kind"], o["name"]): o for o in again["outcomes"]}
        assert rows[("host", "compute1")]["missing"] == ["agent"]
        assert [s.name for s in ha.segments()].count(SEGMENT) == 1


def test_an_unreachable_masakari_is_one_clear_line(tmp_path: Path) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  masakari-old:\n    auth_type: admin_token\n    auth:\n"
        "      token: x\n      endpoint: http://127.0.0.1:9/v1\n"
    )
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(clouds)}
    cmd = [sys.executable, "-m", "vigil.cli.main", "--url", "http://127.0.0.1:9"]
    done = subprocess.run(
        [*cmd, "--token", "t", "import", "masakari", "--os-cloud", "masakari-old"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot read Masakari (cloud masakari-old):")
    assert "Traceback" not in done.stderr
