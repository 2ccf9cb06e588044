"""What the openstack driver does at start-up and beyond the contract, on the real Nova:
credentials checked with a clear sentence, an unreachable cloud left to the retries,
host discovery from an aggregate or an availability zone, evacuation records read back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_until

from vigil.drivers.errors import NotFound, PermanentError, TemporaryError
from vigil.drivers.openstack import (
    MICROVERSION,
    OpenStackCompute,
    build_openstack_compute,
    discover_hosts,
)

from .cloud import CLOUDS_YAML, COMPUTES, HA_IMAGE, Minicloud

pytestmark = pytest.mark.nova


def _clouds_yaml(tmp_path: Path, old: str, new: str) -> Path:
    text = CLOUDS_YAML.read_text()
    assert old in text
    path = tmp_path / "clouds.yaml"
    path.write_text(text.replace(old, new))
    return path


def _password() -> str:
    line = next(x for x in CLOUDS_YAML.read_text().splitlines() if "password:" in x)
    return line.split(":", 1)[1].strip()


def test_start_up_check_passes_and_pins_the_microversion(minicloud: Minicloud) -> None:
    compute = build_openstack_compute("minicloud")
    assert compute.microversion() == MICROVERSION
    assert "3 compute services" in compute.check()


def test_wrong_credentials_are_refused_at_start_up_without_the_secret(
    minicloud: Minicloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = _password()
    wrong = f"not-{password}"
    bad = _clouds_yaml(tmp_path, f"password: {password}", f"password: {wrong}")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(bad))
    with pytest.raises(PermanentError) as caught:
        build_openstack_compute("minicloud")
    assert "credentials" in str(caught.value)
    assert wrong not in str(caught.value) and password not in str(caught.value)


def test_unknown_cloud_is_refused(minicloud: Minicloud) -> None:
    with pytest.raises(PermanentError, match="no-such-cloud"):
        build_openstack_compute("no-such-cloud")


def test_unreachable_cloud_starts_and_every_call_is_temporary(
    minicloud: Minicloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = CLOUDS_YAML.read_text()
    port = text.split("auth_url: http://127.0.0.1:", 1)[1].split("/", 1)[0]
    monkeypatch.setenv(
        "OS_CLIENT_CONFIG_FILE", str(_clouds_yaml(tmp_path, f"127.0.0.1:{port}", "127.0.0.1:9"))
    )
    compute = build_openstack_compute("minicloud", timeout=5)  # logged, not fatal
    with pytest.raises(TemporaryError, match="unreachable"):
        compute.list_services()


@pytest.fixture
def aggregate(minicloud: Minicloud) -> Iterator[str]:
    body = minicloud.nova("POST", "/os-aggregates", {"aggregate": {"name": "rack-a"}})
    agg_id = body["aggregate"]["id"]
    for host in COMPUTES[:2]:
        minicloud.nova("POST", f"/os-aggregates/{agg_id}/action", {"add_host": {"host": host}})
    try:
        yield "rack-a"
    finally:
        for host in COMPUTES[:2]:
            minicloud.nova(
                "POST", f"/os-aggregates/{agg_id}/action", {"remove_host": {"host": host}}
            )
        minicloud.nova("DELETE", f"/os-aggregates/{agg_id}")


def test_discover_hosts_from_an_aggregate_or_a_zone(minicloud: Minicloud, aggregate: str) -> None:
    assert discover_hosts(minicloud.conn) == list(COMPUTES)
    assert discover_hosts(minicloud.conn, aggregate=aggregate) == list(COMPUTES[:2])
    assert discover_hosts(minicloud.conn, availability_zone="nova") == list(COMPUTES)
    with pytest.raises(NotFound):
        discover_hosts(minicloud.conn, aggregate="no-such-aggregate")
    with pytest.raises(NotFound):
        discover_hosts(minicloud.conn, availability_zone="no-such-zone")


def test_image_properties_give_the_policy_on_a_real_nova(minicloud: Minicloud) -> None:
    try:
        sid = minicloud.boot("ct-image", "compute3", image=HA_IMAGE)
        server = OpenStackCompute(minicloud.conn).get_server(sid)
        assert (server.policy and server.policy.value, server.priority) == ("keep-running", 5)
        sid2 = minicloud.boot("ct-image-md", "compute3", {"vigil:ha_policy": "off"}, image=HA_IMAGE)
        server = OpenStackCompute(minicloud.conn).get_server(sid2)
        assert (server.policy and server.policy.value, server.priority) == ("off", 5)
    finally:
        minicloud.delete_all_servers()


def test_the_watchdog_key_from_a_flavor_then_metadata_on_a_real_nova(
    minicloud: Minicloud,
) -> None:
    """Nova takes ``vigil:watchdog_action`` as an extra spec beside its own
    ``hw:watchdog_action`` (which refuses "notify"); the driver reads it back embedded in
    the server, and the owner's metadata overrides it."""
    flavor = minicloud.nova(
        "POST",
        "/flavors",
        {"flavor": {"name": "ct-watchdog-notify", "ram": 512, "vcpus": 1, "disk": 1}},
    )["flavor"]["id"]
    try:
        minicloud.nova(
            "POST",
            f"/flavors/{flavor}/os-extra_specs",
            {"extra_specs": {"hw:watchdog_action": "none", "vigil:watchdog_action": "notify"}},
        )
        compute = OpenStackCompute(minicloud.conn)
        sid = minicloud.boot("ct-wd", "compute3", flavor=flavor)
        assert compute.get_server(sid).watchdog_action == "notify"
        sid = minicloud.boot(
            "ct-wd-md", "compute3", {"vigil:watchdog_action": "none"}, flavor=flavor
        )
        assert compute.get_server(sid).watchdog_action == "none"
        assert compute.get_server(minicloud.boot("ct-wd-plain", "compute3")).watchdog_action is None
    finally:
        minicloud.delete_all_servers()
        minicloud.nova("DELETE", f"/flavors/{flavor}")


def test_a_refused_evacuation_surfaces_as_error_on_the_source_with_nova_s_fault(
    minicloud: Minicloud,
) -> None:
    """What the engine must recognise to retry: a server group's anti-affinity (here by
    the scheduler; in a race, by the destination's late check) makes Nova give up, and
    the instance is left ERROR on the failed host, no task, with Nova's fault."""
    compute = OpenStackCompute(minicloud.conn)
    group = minicloud.nova(
        "POST",
        "/os-server-groups",
        {"server_group": {"name": "ct-anti", "policy": "anti-affinity"}},
        mv="2.64",
    )["server_group"]["id"]
    try:
        a = minicloud.boot("ct-aa-a", "compute1", hints={"group": group})
        minicloud.boot("ct-aa-b", "compute2", hints={"group": group})
        assert compute.get_server(a).server_group == group
        minicloud.kill("compute1")
        compute.set_forced_down("compute1", True)
        compute.evacuate(a, "compute2")  # accepted: the scheduler says no afterwards

        def gave_up() -> bool:
            server = compute.get_server(a)
            return server.status == "ERROR" and not server.task_state

        wait_until(gave_up, "Nova to give up the evacuation", 30, every=0.2)
        server = compute.get_server(a)
        assert server.host == "compute1"
        assert server.fault and "No valid host" in server.fault
        assert [m["status"] for m in compute.migrations(a)] == ["error"]
    finally:
        minicloud.restore()
        minicloud.nova("DELETE", f"/os-server-groups/{group}")
