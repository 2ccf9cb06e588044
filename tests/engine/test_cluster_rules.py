"""The in-guest cluster's pure parts: a member's power as fence_vigil is told it, and the
generated corosync configuration. "off" is the one answer that lets Pacemaker take a
member's resources: it must come only from a confirmed fence or Nova's own SHUTOFF."""

from __future__ import annotations

import pytest

from vigil.drivers.compute import Server
from vigil.engine.clusters import MemberFacts, corosync_conf, member_power
from vigil.model import Cluster, ClusterMember, ClusterStatus, Host, HostState

MEMBER = ClusterMember("db-1", "10.0.0.11", "port-1", "vm-1")


def facts(
    state: HostState | None,
    status: str = "ACTIVE",
    *,
    fenced: str | None = None,
    power_state: int | None = 1,
) -> MemberFacts:
    server = Server("vm-1", "db-1", "compute-1", status, power_state=power_state)
    host = None if state is None else Host("compute-1", "s", state)
    return MemberFacts(MEMBER, server, host, fenced)


@pytest.mark.parametrize(
    ("given", "power", "may_act"),
    [
        (facts(HostState.UP), "on", True),
        (facts(HostState.UP, "SHUTOFF", power_state=4), "off", True),
        # Nova says SHUTOFF but its compute still reports the guest running: not off
        (facts(HostState.UP, "SHUTOFF", power_state=1), None, False),
        (facts(None), "on", True),  # a host vigil does not watch: Nova's word
        (facts(HostState.SUSPECT), None, False),
        (facts(HostState.FAILED), None, False),  # failed, not fenced yet: never off
        (facts(HostState.FAILED, fenced="powered off, confirmed by the BMC"), "off", False),
        (facts(HostState.RECOVERED, fenced="confirmed"), "off", False),
        (facts(HostState.RECOVERED), None, False),
        (facts(HostState.UP, "ERROR"), None, False),
    ],
)
def test_a_members_power(given: MemberFacts, power: str | None, may_act: bool) -> None:
    answer = member_power(given)
    assert (answer.state, answer.may_act) == (power, may_act)
    assert "db-1" in answer.detail


def test_an_instance_nova_does_not_know_is_not_off() -> None:
    # a deleted instance may still run on a host that is not fenced
    assert member_power(MemberFacts(MEMBER, None, None, None)).state is None


def _cluster(size: int) -> Cluster:
    members = tuple(ClusterMember(f"db-{i}", f"10.0.0.{10 + i}") for i in range(1, size + 1))
    return Cluster(
        "c1", "db", None, ClusterStatus.ACTIVE, size, "img", "fl", "net", members=members
    )


def test_corosync_lists_every_member_and_a_pair_keeps_quorum_alone() -> None:
    three = corosync_conf(_cluster(3))
    assert three.count("node {") == 3 and "nodeid: 3" in three and "two_node" not in three
    assert "transport: knet" in three and "crypto_cipher: aes256" in three
    assert "two_node: 1" in corosync_conf(_cluster(2))
