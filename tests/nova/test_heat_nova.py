"""The Heat template of in-guest clusters (doc/heat/vigil-cluster.yaml, issue 19) on a
real Heat engine (tools/heat) over the real Nova, Neutron and Keystone of the minicloud:
vigil records an external cluster and hands out the stack's parameters; the stack makes
the security group, the VIP's and the members' ports, the anti-affinity group and three
members booted with the files the template renders over its ports' addresses — which
must be, file for file, what vigil generates for the same cluster; vigil adopts the
members from the stack's server group and verifies the cluster (the members' own report
sent as fence_vigil's monitor sends it: Nova's fake driver runs nothing in the VMs);
forgetting the cluster leaves the stack's resources to the stack, whose delete removes
them."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack.exceptions
import pytest
import yaml
from services import require

from vigil.drivers.errors import NotFound
from vigil.drivers.neutron import build_openstack_network
from vigil.engine.clusters import TOKEN_HEADER

from .cloud import FLAVOR, IMAGE, Minicloud, Vigil, cluster_vigil

pytestmark = [pytest.mark.nova, pytest.mark.neutron, pytest.mark.heat]

REPO = Path(__file__).resolve().parents[2]
HEAT = REPO / "tools" / "heat" / "heat"
TEMPLATE = REPO / "doc" / "heat" / "vigil-cluster.yaml"


@pytest.fixture(scope="module")
def heat(minicloud: Minicloud) -> Iterator[None]:
    """Heat's API and engine on the minicloud's Keystone, for this module."""

    def start() -> None:
        subprocess.run([str(HEAT), "start"], check=True, capture_output=True, text=True)

    require("heat (tools/heat/heat install)", start)
    minicloud.reconnect()  # the catalog with orchestration in it
    try:
        yield
    finally:
        subprocess.run([str(HEAT), "stop"], check=False, capture_output=True)


@pytest.fixture
def vigil(minicloud: Minicloud, heat: None, tmp_path: Path) -> Iterator[Vigil]:
    with cluster_vigil(minicloud, tmp_path) as v:
        yield v


def _stack_status(minicloud: Minicloud, stack_id: str) -> tuple[str, str]:
    stack = minicloud.conn.orchestration.get_stack(stack_id)
    return str(stack.status), str(stack.status_reason or "")


def _settled(minicloud: Minicloud, stack_id: str, timeout: float = 240) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        status, reason = _stack_status(minicloud, stack_id)
        if not status.endswith("IN_PROGRESS") or time.monotonic() > deadline:
            return status, reason
        time.sleep(1)


def _deleted(minicloud: Minicloud, stack_id: str) -> bool:
    try:
        status, reason = _stack_status(minicloud, stack_id)
    except openstack.exceptions.NotFoundException:
        return True
    assert status != "DELETE_FAILED", reason
    return status == "DELETE_COMPLETE"


def _booted_with(minicloud: Minicloud, instance_id: str) -> dict[str, Any]:
    server = minicloud.nova("GET", f"/servers/{instance_id}", mv="2.3")["server"]
    text = base64.b64decode(server["OS-EXT-SRV-ATTR:user_data"]).decode()
    assert text.startswith("#cloud-config\n"), text[:200]
    return dict(yaml.safe_load(text))


def test_the_heat_template_makes_a_cluster_vigil_adopts(minicloud: Minicloud, vigil: Vigil) -> None:
    made = vigil.api.post("/v1/clusters", json={"name": "web", "external": True})
    assert made.status_code == 201, made.text
    cluster = made.json()
    given = vigil.api.get(f"/v1/clusters/{cluster['id']}/stack-parameters").json()["parameters"]

    orchestration = minicloud.conn.orchestration
    stack = orchestration.create_stack(
        name="web",
        template=TEMPLATE.read_text(),  # Heat parses it (PyYAML would make its version a date)
        parameters={**given, "image": IMAGE, "flavor": FLAVOR, "network": "private"},
    )
    try:
        status, reason = _settled(minicloud, stack.id)
        assert status == "CREATE_COMPLETE", reason
        outputs = {
            o["output_key"]: o["output_value"] for o in orchestration.get_stack(stack.id).outputs
        }

        adopted = vigil.api.post(
            f"/v1/clusters/{cluster['id']}/adopt", json={"server_group": outputs["server_group"]}
        )
        assert adopted.status_code == 200, adopted.text
        c = adopted.json()
        members = c["members"]
        names = [m["name"] for m in members]
        assert names == ["web-1", "web-2", "web-3"]
        assert [m["address"] for m in members] == outputs["addresses"]
        assert c["vip"] == outputs["vip"] and c["status"] == "active"

        # Every member booted with exactly the files vigil generates for these addresses.
        expected = yaml.safe_load(vigil.api.get(f"/v1/clusters/{c['id']}/user-data").text)
        for m in members:
            booted = _booted_with(minicloud, m["instance_id"])
            for key in ("packages", "runcmd"):
                assert booted[key] == expected[key], key
            theirs = {f["path"]: f for f in booted["write_files"]}
            ours = {f["path"]: f for f in expected["write_files"]}
            assert set(theirs) == set(ours)
            for path, wanted in ours.items():
                assert theirs[path] == wanted, path

        # The members' own word, as fence_vigil's monitor sends it; then verified.
        vigil.api.post(
            f"/v1/clusters/{c['id']}/fence",
            json={
                "action": "list",
                "report": {"quorate": True, "online": ["web-1", "web-2", "web-3"]},
            },
            headers={TOKEN_HEADER: vigil.server.clusters.token(c["id"])},
        ).raise_for_status()
        verified = vigil.api.get(f"/v1/clusters/{c['id']}/verify").json()
        assert verified["ok"], verified
        hosts = {minicloud.server(m["instance_id"])["OS-EXT-SRV-ATTR:host"] for m in members}
        assert hosts == {"compute1", "compute2", "compute3"}

        # Forgotten by vigil, the cluster's resources stay the stack's.
        assert vigil.api.delete(f"/v1/clusters/{c['id']}", timeout=60).status_code == 204
        assert all(minicloud.server(m["instance_id"])["status"] == "ACTIVE" for m in members)
    finally:
        orchestration.delete_stack(stack.id)
        deadline = time.monotonic() + 180
        while not _deleted(minicloud, stack.id) and time.monotonic() < deadline:
            time.sleep(1)
    assert _deleted(minicloud, stack.id), _stack_status(minicloud, stack.id)
    network = build_openstack_network("minicloud")
    for m in members:
        with pytest.raises(NotFound):
            network.get_port(m["port_id"])
