"""In-guest clusters through the API on the simulated cloud (issue 19): a cluster built
whole (ports with their addresses first, an anti-affinity group, members booted on their
ports with the generated cloud-init), verified, fenced through its own token, deleted.
The generated configuration runs for real in tests/pacemaker; Neutron and Nova for real
in tests/nova."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import wait_until
from support.cli import InProcess, Result
from support.incluster import cluster_cloud
from support.served import TOKEN

from vigil.cli.main import main
from vigil.drivers.compute import CLUSTER_KEY, POLICY_KEY
from vigil.engine.clusters import TOKEN_HEADER, fence_agent_source
from vigil.model import ClusterStatus, HaPolicy, RequestKind
from vigil.server import VigilServer
from vigil.sim.cloud import SimCloud
from vigil.sim.network import SimNetwork

DOC_HEAT = Path(__file__).resolve().parents[2] / "doc" / "heat"
HOSTS = ("compute-1", "compute-2", "compute-3", "compute-4")
VIGIL_URL = "http://10.20.0.1:8675"
BODY = {"name": "db", "size": 3, "image": "debian-12", "flavor": "m1.small", "network": "private"}


@dataclass
class World:
    server: VigilServer
    cloud: SimCloud
    network: SimNetwork
    api: httpx.Client

    def fence(
        self,
        cluster: dict[str, Any],
        action: str,
        member: str | None = None,
        token: str | None = None,
    ) -> httpx.Response:
        return self.api.post(
            f"/v1/clusters/{cluster['id']}/fence",
            json={"action": action, "member": member},
            # token "": no header at all
            headers={} if token == "" else {TOKEN_HEADER: token or self.token(cluster)},
        )

    def report(self, cluster: dict[str, Any], *, online: list[str], quorate: bool = True) -> None:
        """What fence_vigil's monitor sends: the member's view of its cluster."""
        sent = self.api.post(
            f"/v1/clusters/{cluster['id']}/fence",
            json={
                "action": "list",
                "report": {"quorate": quorate, "online": online, "dc": online[0], "by": online[0]},
            },
            headers={TOKEN_HEADER: self.token(cluster)},
        )
        assert sent.status_code == 200, sent.text

    def token(self, cluster: dict[str, Any]) -> str:
        return self.server.clusters.token(cluster["id"])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with cluster_cloud(tmp_path, subnet="10.20.0.0/24", vigil_url=VIGIL_URL) as (
        server,
        cloud,
        network,
        api,
    ):
        yield World(server, cloud, network, api)


def _created(world: World, **changes: Any) -> dict[str, Any]:
    made = world.api.post("/v1/clusters", json={**BODY, **changes})
    assert made.status_code == 201, made.text
    return dict(made.json())


def test_a_cluster_is_built_whole_and_verified(world: World) -> None:
    cluster = _created(world)
    assert cluster["status"] == "active"
    members = cluster["members"]
    assert [m["name"] for m in members] == ["db-1", "db-2", "db-3"]
    addresses = [m["address"] for m in members]
    subnet = ipaddress.ip_network("10.20.0.0/24")
    assert all(ipaddress.ip_address(a) in subnet for a in [*addresses, cluster["vip"]])
    assert len({*addresses, cluster["vip"]}) == 4

    # Each member on its own port, booted there; the VIP allowed on every member's port.
    hosts = set()
    for m in members:
        port = world.network.get_port(m["port_id"])
        assert port.fixed_ips == (m["address"],)
        assert port.device_id == m["instance_id"]
        assert port.allowed_address_pairs == (cluster["vip"],)
        assert port.security_groups == (cluster["security_group_id"],)
        instance = world.cloud.instance(m["instance_id"])
        hosts.add(instance.host)
        # the members' HA policy is the cluster's (notify by default)
        assert world.cloud.get_server(m["instance_id"]).policy == HaPolicy.NOTIFY
    assert len(hosts) == 3  # anti-affinity: each on its own host
    # corosync and pcsd from the members only
    rules = world.network.rules(cluster["security_group_id"])
    assert {(r.protocol, r.port_min, r.remote_group_id) for r in rules} == {
        ("udp", 5405, cluster["security_group_id"]),
        ("tcp", 2224, cluster["security_group_id"]),
    }

    # before the members said anything of themselves: not verified
    unheard = world.api.get(f"/v1/clusters/{cluster['id']}/verify").json()
    assert not unheard["ok"]
    assert [c["name"] for c in unheard["checks"] if not c["ok"]] == [
        "members report quorum, all online"
    ]
    # fence_vigil's monitor (every minute, on the member running the fence device)
    world.report(cluster, online=["db-1", "db-2"])
    partial = world.api.get(f"/v1/clusters/{cluster['id']}/verify").json()
    assert not partial["ok"] and "offline: db-3" in str(partial["checks"])
    world.report(cluster, online=["db-1", "db-2", "db-3"])
    verified = world.api.get(f"/v1/clusters/{cluster['id']}/verify").json()
    assert verified["ok"], verified
    assert {c["name"] for c in verified["checks"]} >= {
        "members on distinct hosts",
        "ports ACTIVE",
        "instances ACTIVE",
    }
    assert world.api.get("/v1/clusters").json() == [
        world.api.get(f"/v1/clusters/{cluster['id']}").json()
    ]


def test_the_members_boot_with_the_generated_configuration(world: World) -> None:
    cluster = _created(world)
    text = world.api.get(f"/v1/clusters/{cluster['id']}/user-data").text
    assert text.startswith("#cloud-config\n")
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    corosync = files["/etc/corosync/corosync.conf"]["content"]
    for i, m in enumerate(cluster["members"], start=1):
        assert f"ring0_addr: {m['address']}\n        name: {m['name']}\n        nodeid: {i}" in (
            corosync
        )
    cib = files["/var/lib/pacemaker/cib/cib.xml"]["content"]
    assert f'value="{cluster["vip"]}"' in cib and 'type="fence_vigil"' in cib
    assert files["/etc/vigil/fence_vigil.token"]["content"].strip() == world.token(cluster)
    assert files["/usr/sbin/fence_vigil"]["permissions"] == "0755"
    # what each member was booted with is what the API hands out
    booted = {sid: data for sid, (_port, data) in world.server.compute.booted.items()}
    assert {booted[m["instance_id"]] for m in cluster["members"]} == {text}
    # the secrets are in the user data only, never in the cluster's record
    shown = world.api.get(f"/v1/clusters/{cluster['id']}").text
    assert world.token(cluster) not in shown
    assert files["/etc/corosync/authkey"]["content"] not in shown


def test_fencing_answers_off_for_a_dead_hypervisor_only_once_vigil_fenced_it(
    world: World,
) -> None:
    cluster = _created(world)
    member = cluster["members"][0]
    host = world.cloud.instance(member["instance_id"]).host
    status = world.fence(cluster, "status", member["name"])
    assert status.status_code == 200 and status.json()["power"] == "on"

    world.cloud.hang(host)  # no heartbeat, the BMC still reads on: not fenced at once
    answers: list[int] = []

    def fenced() -> bool:
        answer = world.fence(cluster, "status", member["name"])
        answers.append(answer.status_code)
        return answer.status_code == 200 and answer.json()["power"] == "off"

    wait_until(fenced, "the member off once its host is fenced", 20, every=0.02)
    # before that: never "off", but "not known" (409) while the host is not fenced
    assert 409 in answers
    recoveries = world.api.get("/v1/recoveries").json()
    fence = next(s for s in recoveries[0]["steps"] if s["kind"] == "fence")
    assert fence["status"] == "succeeded"
    assert world.cloud.power_offs()  # vigil powered the host off through its BMC
    # notify: the cluster recovers the service; vigil moved nothing
    assert world.cloud.instance(member["instance_id"]).host == host


def test_off_on_a_live_member_powers_it_off_through_nova(world: World) -> None:
    cluster = _created(world)
    member = cluster["members"][1]
    asked = world.fence(cluster, "off", member["name"])
    assert asked.status_code in (200, 202), asked.text
    wait_until(
        lambda: world.fence(cluster, "status", member["name"]).json()["power"] == "off",
        "the member powered off",
    )
    assert world.cloud.get_server(member["instance_id"]).status == "SHUTOFF"
    assert world.cloud.calls("stop", member["instance_id"]) == 1  # asked once, polled after
    others = [m for m in cluster["members"] if m["name"] != member["name"]]
    assert all(world.cloud.get_server(m["instance_id"]).status == "ACTIVE" for m in others)


def test_the_fence_token_is_the_clusters_own(world: World) -> None:
    one, two = _created(world), _created(world, name="web", size=2, vip=False)
    member = one["members"][0]["name"]
    assert world.fence(one, "status", member, token="").status_code == 401
    assert world.fence(one, "status", member, token=world.token(two)).status_code == 401
    # an operator's token is not a fence token either
    assert world.fence(one, "status", member, token="static-token").status_code == 401
    assert world.fence(one, "status", "nobody").status_code == 404
    listed = world.fence(one, "list").json()["members"]
    assert [m["name"] for m in listed] == [m["name"] for m in one["members"]]
    assert world.fence(one, "monitor").status_code == 200


def test_bad_input_names_the_field_and_builds_nothing(world: World) -> None:
    for body, field in (
        ({**BODY, "size": 9}, "size"),
        ({**BODY, "size": 1}, "size"),
        ({**BODY, "name": "Bad_Name"}, "name"),
    ):
        refused = world.api.post("/v1/clusters", json=body)
        assert refused.status_code == 422, refused.text
        assert field in str(refused.json()["detail"])
    # an image is the stack's for an external cluster only
    imageless = world.api.post("/v1/clusters", json={k: v for k, v in BODY.items() if k != "image"})
    assert imageless.status_code == 400 and "image" in imageless.json()["detail"], imageless.text
    unknown = world.api.post("/v1/clusters", json={**BODY, "name": "lost", "network": "nowhere"})
    assert unknown.status_code in (201, 202)
    assert unknown.json()["status"] == "error" and "nowhere" in unknown.json()["detail"]
    assert world.network.list_ports(name_prefix="") == []
    _created(world)
    again = world.api.post("/v1/clusters", json=BODY)
    assert again.status_code == 409 and "db" in again.json()["detail"]


def test_delete_removes_members_ports_and_groups(world: World) -> None:
    cluster = _created(world)
    assert world.api.delete(f"/v1/clusters/{cluster['id']}").status_code == 204
    assert world.api.get(f"/v1/clusters/{cluster['id']}").status_code == 404
    assert world.network.list_ports(name_prefix="") == []
    assert all(
        m["instance_id"] not in {i.id for i in world.cloud.instances()} for m in cluster["members"]
    )


def test_a_resumed_build_takes_the_member_nova_made_before_a_crash(world: World) -> None:
    cluster = _created(world)
    store = world.server.store
    c = store.get_cluster(cluster["id"])
    # vigil crashed after Nova's create of the last member, before recording it
    lost = replace(c.members[2], instance_id="")
    store.update_cluster(
        c.id, at=c.updated_at, status=ClusterStatus.BUILDING, members=(*c.members[:2], lost)
    )
    requests = world.server.engine.requests  # the build, resumed as on restart
    resumed = requests.submit(RequestKind.BUILD_CLUSTER, c.id, host=None, reason="restart")
    requests.outcome(resumed.id, 10)
    rebuilt = store.get_cluster(c.id)
    assert rebuilt.status == ClusterStatus.ACTIVE
    assert rebuilt.members == c.members  # the same instance taken back, none made twice
    assert len(world.server.compute.server_group_members(c.server_group_id)) == 3


def test_an_evacuation_never_puts_two_members_on_one_host(world: World) -> None:
    cluster = _created(world, size=2, vip=False, policy="keep-running")
    first, second = cluster["members"]
    source = world.cloud.instance(first["instance_id"]).host
    peer = world.cloud.instance(second["instance_id"]).host
    others = sorted(set(HOSTS) - {source, peer})
    # One free host left besides the peer's: the spread alone would try the peer's
    # first (the least aimed at, then by name) if it sorts before the free one.
    world.api.patch(f"/v1/hosts/{others[0]}", json={"maintenance": True}).raise_for_status()
    free = others[1]

    world.cloud.power_loss(source)
    wait_until(
        lambda: (
            world.cloud.get_server(first["instance_id"]).host == free
            and world.cloud.get_server(first["instance_id"]).status == "ACTIVE"
        ),
        f"{first['name']} evacuated to {free}",
        20,
    )
    # asked of Nova once, to the free host: never to the host of the other member
    assert world.cloud.attempts("evacuate", first["instance_id"]) == 1
    assert [e.dest for e in world.cloud.evacuations() if e.instance == first["instance_id"]] == [
        free
    ]


def test_the_cli_builds_verifies_and_deletes_a_cluster(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = InProcess(world.server.api_url, capsys)

    def vigil(*args: str) -> Result:
        return cli.run(lambda: main(["--url", world.server.api_url, "--token", TOKEN, *args]))

    made = vigil(
        "cluster",
        "create",
        "db",
        "--size",
        "2",
        "--image",
        "debian-12",
        "--flavor",
        "m1.small",
        "--network",
        "private",
        "--no-vip",
    )
    assert made.code == 0, made.err
    shown = made.fields()
    assert shown["status"] == "active" and shown["vip"] == "-"
    assert shown["members"].startswith("db-1@10.20.0.")
    cluster_id = shown["id"]
    world.report(world.api.get(f"/v1/clusters/{cluster_id}").json(), online=["db-1", "db-2"])
    verified = vigil("cluster", "verify", cluster_id)
    assert verified.code == 0, verified.err
    assert {row[0]: row[1] for row in verified.rows()}["members on distinct hosts"] == "yes"
    data = vigil("cluster", "user-data", cluster_id)
    assert data.code == 0 and data.out.startswith("#cloud-config\n")
    assert [r[1] for r in vigil("cluster", "list").rows()] == ["db"]

    # a member gone: verify says which check fails and exits 1
    first = world.api.get(f"/v1/clusters/{cluster_id}").json()["members"][0]
    world.cloud.delete_instance(first["instance_id"])
    failed = vigil("cluster", "verify", cluster_id)
    assert failed.code == 1 and "instances ACTIVE" in failed.err

    assert vigil("cluster", "delete", cluster_id).out.strip() == f"cluster {cluster_id} deleted"
    assert vigil("cluster", "show", cluster_id).code == 1


# --- an external cluster: made by a Heat stack (doc/heat/), adopted by vigil ----------------


def _stack(world: World, cluster_id: str, *, name: str = "web", size: int = 3) -> str:
    """What doc/heat/vigil-cluster.yaml makes, made as Heat makes it (the real stack is
    tests/nova/test_heat_nova.py): a VIP port, the members' ports with the VIP allowed,
    an anti-affinity group, the members booted on their ports with the cluster's id in
    their metadata. The group's id."""
    compute, net = world.server.compute, world.network
    network = net.get_network("private")
    vip = net.create_port(name=f"{name}-vip", network_id=network.id)
    group = compute.create_server_group(f"vigil-{name}")
    for i in range(1, size + 1):
        port = net.create_port(
            name=f"{name}-{i}", network_id=network.id, allowed_address_pairs=vip.fixed_ips
        )
        compute.create_server(
            name=f"{name}-{i}",
            image="debian-12",
            flavor="m1.small",
            port_id=port.id,
            user_data="#cloud-config\n",
            server_group=group,
            metadata={CLUSTER_KEY: cluster_id, POLICY_KEY: "notify"},
        )
    return group


def test_an_external_cluster_is_adopted_from_its_stack(world: World) -> None:
    made = world.api.post("/v1/clusters", json={"name": "web", "external": True})
    assert made.status_code == 201, made.text
    cluster = made.json()
    assert cluster["status"] == "waiting" and cluster["external"] and cluster["members"] == []
    # nothing to boot with yet: the stack makes the files from vigil's parameters
    assert world.api.get(f"/v1/clusters/{cluster['id']}/user-data").status_code == 409
    parameters = world.api.get(f"/v1/clusters/{cluster['id']}/stack-parameters").json()
    given = parameters["parameters"]
    assert given["cluster_id"] == cluster["id"] and given["cluster_name"] == "web"
    assert given["cluster_token"] == world.token(cluster) and given["vigil_url"] == VIGIL_URL
    assert given["fence_agent"] == fence_agent_source() and len(given["authkey"]) > 300
    # a template's parameters are the Heat template's, no more, no fewer
    template = yaml.safe_load((DOC_HEAT / "vigil-cluster.yaml").read_text())
    assert set(template["parameters"]) == set(given) | {"image", "flavor", "network"}

    group = _stack(world, cluster["id"])
    adopted = world.api.post(f"/v1/clusters/{cluster['id']}/adopt", json={"server_group": group})
    assert adopted.status_code == 200, adopted.text
    c = adopted.json()
    assert c["status"] == "active" and c["size"] == 3 and c["server_group_id"] == group
    assert [m["name"] for m in c["members"]] == ["web-1", "web-2", "web-3"]
    for m in c["members"]:
        port = world.network.get_port(m["port_id"])
        assert port.device_id == m["instance_id"] and port.fixed_ips == (m["address"],)
        assert port.allowed_address_pairs == (c["vip"],)
    # the generated files now carry the adopted members: what the stack rendered
    corosync = next(
        f["content"]
        for f in yaml.safe_load(world.api.get(f"/v1/clusters/{c['id']}/user-data").text)[
            "write_files"
        ]
        if f["path"] == "/etc/corosync/corosync.conf"
    )
    assert all(
        f"ring0_addr: {m['address']}\n        name: {m['name']}" in corosync for m in c["members"]
    )

    world.report(c, online=["web-1", "web-2", "web-3"])
    verified = world.api.get(f"/v1/clusters/{c['id']}/verify").json()
    assert verified["ok"], verified
    assert world.fence(c, "status", "web-2").json()["power"] == "on"
    # an evacuation keeps adopted members apart as it does vigil's own
    member = c["members"][0]["instance_id"]
    assert set(world.server.clusters.peers(member)) == {m["instance_id"] for m in c["members"][1:]}
    again = world.api.post(f"/v1/clusters/{c['id']}/adopt", json={"server_group": group})
    assert again.status_code == 409 and "adopted already" in again.json()["detail"]

    # deleting the record leaves the stack's resources to the stack
    assert world.api.delete(f"/v1/clusters/{c['id']}").status_code == 204
    assert world.api.get(f"/v1/clusters/{c['id']}").status_code == 404
    assert {m["instance_id"] for m in c["members"]} <= {i.id for i in world.cloud.instances()}
    assert len(world.network.list_ports(name_prefix="web-")) == 4


def test_adopt_takes_only_the_clusters_own_members(world: World) -> None:
    cluster = world.api.post("/v1/clusters", json={"name": "web", "external": True}).json()
    other = world.api.post("/v1/clusters", json={"name": "other", "external": True}).json()
    group = _stack(world, other["id"])  # the wrong cluster's stack
    refused = world.api.post(f"/v1/clusters/{cluster['id']}/adopt", json={"server_group": group})
    assert refused.status_code == 409, refused.text
    assert "not a member of cluster web" in refused.json()["detail"]
    assert "vigil:cluster" in refused.json()["detail"]
    unknown = world.api.post(f"/v1/clusters/{cluster['id']}/adopt", json={"server_group": "no"})
    assert unknown.status_code == 404, unknown.text
    still = world.api.get(f"/v1/clusters/{cluster['id']}").json()
    assert still["status"] == "waiting" and still["members"] == []
    # a cluster vigil builds hands out user data, not a stack's parameters, and adopts nothing
    built = _created(world)
    for answer in (
        world.api.get(f"/v1/clusters/{built['id']}/stack-parameters"),
        world.api.post(f"/v1/clusters/{built['id']}/adopt", json={"server_group": group}),
    ):
        assert answer.status_code == 409 and "built by vigil" in answer.json()["detail"]


def test_the_cli_hands_out_the_stack_parameters_and_adopts(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli = InProcess(world.server.api_url, capsys)

    def vigil(*args: str) -> Result:
        return cli.run(lambda: main(["--url", world.server.api_url, "--token", TOKEN, *args]))

    made = vigil("cluster", "create", "web", "--external")
    assert made.code == 0, made.err
    cluster_id = made.fields()["id"]
    env = tmp_path / "web-env.json"
    written = vigil("cluster", "stack-parameters", cluster_id, "-o", str(env))
    assert written.code == 0, written.err
    assert env.stat().st_mode & 0o777 == 0o600  # the cluster's secrets
    assert json.loads(env.read_text())["parameters"]["cluster_id"] == cluster_id
    adopted = vigil("cluster", "adopt", cluster_id, "--server-group", _stack(world, cluster_id))
    assert adopted.code == 0, adopted.err
    assert adopted.fields()["status"] == "active"
    assert adopted.fields()["members"].startswith("web-1@10.20.0.")
    missing = vigil("cluster", "create", "db", "--size", "2")  # no image: not external
    assert missing.code == 1 and "image" in missing.err
