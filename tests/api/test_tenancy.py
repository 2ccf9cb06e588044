"""Tenancy without Keystone: the callers a Keystone token would stand for, made up
in-process (``support.tenancy`` runs the same check with a real Keystone's tokens in
tests/keystone). A project member reaches their own project's instances, events,
failures, applications and subscriptions, and nothing of another project's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.served import serving
from support.tenancy import Seeded, Tenancy

from vigil.api.auth import Caller

ALPHA, BETA = "alpha-project-id", "beta-project-id"
CALLERS = {
    "admin-token": Caller("admin", "admin-project", frozenset({"admin", "member", "reader"})),
    "alpha-member-token": Caller("am", ALPHA, frozenset({"member", "reader"})),
    "alpha-reader-token": Caller("ar", ALPHA, frozenset({"reader"})),
    "beta-member-token": Caller("bm", BETA, frozenset({"member", "reader"})),
}
PROJECT_ROUTES = {
    *("list_instances", "get_instance", "set_instance_policy", "delete_instance_policy"),
    *("evacuate_instance", "restart_instance", "list_events", "stream_events"),
    *("create_subscription", "list_subscriptions", "get_subscription", "delete_subscription"),
    *("test_subscription", "list_dead_letters", "list_guest_failures", "get_guest_failure"),
    *("guest_failure_handled", "list_apps", "get_app", "app_credential", "close_app"),
}
TOKENS = {t.removesuffix("-token"): t for t in CALLERS}


class TokenTable:
    """Tokens and who they stand for (what keystonemiddleware would say of them)."""

    challenge = "Keystone"

    def caller(self, token: str) -> Caller | None:
        return CALLERS.get(token)


@pytest.fixture(scope="module")
def tenancy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Tenancy, Seeded]]:
    tmp = tmp_path_factory.mktemp("tenancy")
    with serving(tmp, hosts=("compute-1", "compute-2")) as (
        server,
        cloud,
    ):
        server.authority.authenticator = TokenTable()
        client = httpx.Client(base_url=server.api_url, timeout=30)

        def call(token: str, method: str, path: str, body: Any) -> httpx.Response:
            return client.request(method, path, headers={"X-Auth-Token": token}, json=body)

        with client:
            t = Tenancy(server, cloud, call, TOKENS, ALPHA, BETA)
            yield t, t.seed()


def test_listings_show_a_member_their_own_project_only(tenancy: tuple[Tenancy, Seeded]) -> None:
    t, seeded = tenancy
    alpha, beta = t.listings_of("alpha-member", seeded), t.listings_of("beta-member", seeded)
    for path, text in beta.items():
        assert seeded.alpha_vm not in text and "alpha-hook" not in text, path
    for path in ("/v1/instances", "/v1/events?limit=1000", "/v1/guest-failures", "/v1/apps"):
        assert seeded.alpha_vm in alpha[path] and seeded.beta_vm not in alpha[path], path
        assert seeded.beta_vm in beta[path], path
    assert "alpha-hook" in alpha["/v1/subscriptions"]
    # Every event about an instance carries the instance's project.
    events = json.loads(t.listings_of("admin", seeded)["/v1/events?limit=1000"])
    about = [e for e in events if e["instance_id"] in (seeded.alpha_vm, seeded.beta_vm)]
    assert about and all(
        e["project_id"] == (ALPHA if e["instance_id"] == seeded.alpha_vm else BETA) for e in about
    )


def test_the_event_stream_sends_a_member_their_projects_events_only(
    tenancy: tuple[Tenancy, Seeded],
) -> None:
    t, _ = tenancy
    events = t.ok("admin", "GET", "/v1/events?limit=1000")
    assert {e["project_id"] for e in events} >= {ALPHA, BETA}  # both projects' events
    last_beta = t.ok("beta-member", "GET", "/v1/events?limit=1000")[-1]["seq"]
    seen = []
    with httpx.stream(
        "GET",
        f"{t.server.api_url}/v1/events/stream?after=0",
        headers={"X-Auth-Token": TOKENS["beta-member"]},
        timeout=10,
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["seq"] >= last_beta:
                    break
    # Alpha's events came before beta's last, in the same outbox: none was sent.
    assert seen and {e["project_id"] for e in seen} == {BETA}
    assert [e["seq"] for e in seen] == [e["seq"] for e in events if e["project_id"] == BETA]


def test_every_route_keeps_a_project_to_its_own(tenancy: tuple[Tenancy, Seeded]) -> None:
    t, seeded = tenancy
    scoped = t.check_every_route(seeded)
    # Every route of a project's records (the event stream is checked above).
    assert sorted(scoped) == sorted(PROJECT_ROUTES - {"stream_events"})
