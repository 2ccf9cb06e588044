"""The generated configuration, run for real (issue 19): vigil builds a three-member
cluster on the simulated cloud; each member is stood in for by namespaces running
Debian's corosync and pacemaker (``support.guest_cluster``) over exactly the files of the
user data vigil booted it with. The cluster forms with quorum and runs the VIP; the
hypervisor of the VIP's member loses power; Pacemaker's fence device, ``fence_vigil``,
gets "off" only once vigil has fenced that host — while vigil cannot (its BMC does not
answer) the VIP stays where it was — and then Pacemaker moves the VIP, which answers on
another member. One set-up for the whole story: starting a cluster costs seconds."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from services import require
from support import wait_until
from support.guest_cluster import check_can_run
from support.incluster import ClusterWorld, answers, cluster_world

pytestmark = pytest.mark.pacemaker

SCHEMA = Path("/usr/share/cluster/relaxng/metadata.rng")


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterWorld]:
    require("corosync and pacemaker in namespaces (root; tools/pacemaker/setup)", check_can_run)
    with cluster_world(tmp_path_factory.mktemp("vigil")) as world:
        yield world


def test_the_generated_cluster_forms_with_quorum_and_runs_the_vip(story: ClusterWorld) -> None:
    story.guests.wait_for_quorum(timeout=60)
    vip = story.cluster["vip"]
    wait_until(lambda: story.guests.resource_node("vip") is not None, "the VIP started", 60)
    wait_until(lambda: answers(vip), f"the VIP {vip} answering", 30)
    # the fence device vigil configured is running too, and its monitor tells vigil what
    # the members see: vigil cluster verify passes on the members' own word
    wait_until(lambda: story.guests.resource_node("fence-vigil") is not None, "fence-vigil", 60)
    verify = f"/v1/clusters/{story.cluster['id']}/verify"
    verified = wait_until(
        lambda: (v := story.api.get(verify).json())["ok"] and v, "the cluster verified", 90
    )
    reported = next(c for c in verified["checks"] if c["name"].startswith("members report"))
    assert "quorate, online: db-1, db-2, db-3" in reported["detail"]


def test_fence_vigil_metadata_is_a_fence_agents_one(story: ClusterWorld) -> None:
    member = story.cluster["members"][0]["name"]
    # the agent's own, as every fence_* prints it, against fence-agents' schema
    own = story.guests.run(member, ["fence_vigil", "-o", "metadata"], timeout=30)
    assert own.returncode == 0, own.stderr
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    root = etree.fromstring(own.stdout.encode())
    assert schema.validate(root), schema.error_log
    assert root.get("name") == "fence_vigil"
    assert {a.get("name") for a in root.iter("action")} >= {
        *("on", "off", "reboot", "status", "list", "monitor", "metadata", "validate-all")
    }
    assert {p.get("name") for p in root.iter("parameter")} >= {
        *("vigil_url", "cluster", "token_file", "port", "power_timeout")
    }
    # and as Pacemaker reads it (as its hacluster user, which holds no secret)
    shown = story.guests.run(
        member,
        ["stonith_admin", "--metadata", "--agent", "fence_vigil"],
        timeout=30,
        user="hacluster",
    )
    assert shown.returncode == 0, shown.stderr
    assert etree.fromstring(shown.stdout.encode()).get("name") == "fence_vigil"


def test_the_vip_moves_only_once_vigil_has_fenced_the_dead_hypervisor(story: ClusterWorld) -> None:
    guests, cloud = story.guests, story.cloud
    guests.wait_for_quorum(timeout=60)
    owner = wait_until(lambda: guests.resource_node("vip"), "the VIP placed", 60)
    host = story.host_of(owner)
    others = [m["name"] for m in story.cluster["members"] if m["name"] != owner]

    # The hypervisor loses power, and its BMC does not answer: vigil cannot fence it,
    # gives up after its attempts and records the recovery failed (S1: no fence, no move).
    cloud.bmc_unreachable(host, True)
    cut = time.monotonic()
    cloud.power_loss(host)
    guests.power_cut(owner)
    failed = wait_until(
        lambda: [r for r in story.api.get("/v1/recoveries").json() if r["status"] == "failed"],
        "vigil giving up the fence",
        30,
    )[0]
    while time.monotonic() - cut < 15:
        assert guests.resource_node("vip") in (owner, None), "the VIP moved before a fence"
        time.sleep(0.5)
    unfenced = story.fence_vigil("status", owner)
    assert unfenced.returncode == 1, unfenced.stdout + unfenced.stderr  # not "off" (2)
    assert guests.resource_node("vip") in (owner, None)

    # The operator mends the BMC and retries: vigil fences, fence_vigil says off (the
    # call Pacemaker is waiting in), the VIP moves and answers on another member.
    cloud.bmc_unreachable(host, False)
    back = time.monotonic()
    story.api.post(f"/v1/recoveries/{failed['id']}/retry").raise_for_status()
    moved = wait_until(
        lambda: (n := guests.resource_node("vip")) in others and n,
        "the VIP moved",
        90,
        every=0.2,
    )
    wait_until(lambda: answers(story.cluster["vip"]), "the VIP answering on " + moved, 30)
    took = time.monotonic() - back
    fenced = story.api.get(f"/v1/recoveries/{failed['id']}").json()
    step = next(s for s in fenced["steps"] if s["kind"] == "fence")
    assert fenced["host"] == host and step["status"] == "succeeded"
    assert story.fence_vigil("status", owner).returncode == 2  # off, confirmed
    history = guests.run(moved, ["stonith_admin", "--history", owner], timeout=30)
    # Pacemaker's own record: the member fenced (its reboot is fence_vigil's off), done
    done = re.search(rf"(reboot|turning off) of {re.escape(owner)} successful", history.stdout)
    assert done, history.stdout
    print(f"VIP moved to {moved} {took:.1f}s after the BMC answered again")


def test_off_on_a_live_member_powers_it_off_through_nova(story: ClusterWorld) -> None:
    # a member of a live host that does not run the VIP; it leaves the cluster after
    vip_at = story.guests.resource_node("vip")
    live = [
        m
        for m in story.cluster["members"]
        if m["name"] != vip_at and story.cloud.is_powered(story.host_of(m["name"]))
    ]
    target = live[0]
    assert story.fence_vigil("status", target["name"]).returncode == 0  # on
    off = story.fence_vigil("off", target["name"])
    assert off.returncode == 0, off.stderr
    assert story.cloud.get_server(target["instance_id"]).status == "SHUTOFF"
    assert story.fence_vigil("status", target["name"]).returncode == 2
    listed = story.fence_vigil("list")
    assert listed.returncode == 0 and target["name"] in listed.stdout
