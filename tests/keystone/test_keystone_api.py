"""vigil's APIs behind the real Keystone: keystonemiddleware validates every token,
oslo.policy decides (``vigil.api.policies``). Missing, wrong, revoked and expired tokens
are 401; a cloud reader reads and changes nothing (403); a project member gets nothing
yet (403, until tenancy); an admin may. Every route of both APIs is walked from the
OpenAPI documents, so a route added without a rule is found here too."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import openstack
import pytest
from fastapi.routing import APIRoute

from vigil.api import policies

from .conftest import EXPIRATION, Keystone, Served

pytestmark = pytest.mark.keystone


def _routes(served: Served, prefix: str = "") -> list[tuple[str, str, bool]]:
    """(method, path, a project's route?) of every route of an OpenAPI document that takes
    credentials, path parameters filled in. A project's route is one a project's reader
    or member may call on their own project's records (``policies.project_access``)."""
    doc = httpx.get(f"{served.server.api_url}{prefix}/openapi.json", timeout=10).json()
    endpoints = {
        (method, r.path): r.name
        for r in served.server.app.routes
        if isinstance(r, APIRoute)
        for method in r.methods
    }
    out = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            name = op.get("operationId", "")
            if (
                path in ("/healthz", "/metrics", "/", "/v1", "/v1/", "/v1/{project_id}")
                or "/agents/" in path  # signed by the agent key, not a caller's token
                or path.endswith("/app/heartbeat")  # the application's own credential
                or path.endswith("/fence")  # a cluster's own token (fence_vigil)
                or name.endswith("_in_project")  # the same handlers as /v1
            ):
                continue
            endpoint = endpoints.get((method.upper(), path), "") if not prefix else ""
            project = policies.project_access(endpoint) is not None
            out.append((method.upper(), prefix + re.sub(r"\{[^}]+\}", "x-1", path), project))
    return out


@pytest.fixture(scope="module")
def tokens(keystone: Keystone) -> dict[str, str]:
    return {
        "admin": keystone.token("admin"),
        "cloud-reader": keystone.token("cloud-reader", system=True),
        "alpha-reader": keystone.token("alpha-reader"),
        "alpha-member": keystone.token("alpha-member"),
    }


def test_without_a_valid_token_every_route_is_401(served: Served) -> None:
    routes = _routes(served) + _routes(served, "/instance-ha")
    assert len(routes) > 50
    for method, path, _ in routes:
        for token in (None, "not-a-token", uuid.uuid4().hex):
            answer = served.call(method, path, token, json={})
            assert answer.status_code == 401, (method, path, token, answer.text)
    # Said as Keystone's services say it: where to get a token.
    answer = served.call("GET", "/v1/hosts")
    assert answer.headers["www-authenticate"] == f'Keystone uri="{served.keystone.auth_url}"'


def test_who_may_call_what_on_every_route(served: Served, tokens: dict[str, str]) -> None:
    """A cloud reader reads every collection and changes nothing; a project's reader or
    member gets nothing but a project's routes (test_tenancy_keystone: their own
    project's records there); an admin passes every rule."""
    routes = _routes(served) + _routes(served, "/instance-ha")
    assert sum(project for _, _, project in routes) == 21
    for method, path, project in routes:
        masakari = path.startswith("/instance-ha")
        for who in () if project else ("alpha-reader", "alpha-member"):
            answer = served.call(method, path, tokens[who], json={})
            assert answer.status_code == 403, (who, method, path, answer.text)
        if path.endswith("/stream"):
            continue  # an allowed caller's stream would last for ever: below
        reader = served.call(method, path, tokens["cloud-reader"], json={})
        # a secret (an application's credential, a cluster's user data or stack
        # parameters) is an admin's
        if (
            method == "GET"
            and not masakari
            and not path.endswith(("/credential", "/user-data", "/stack-parameters"))
        ):
            assert reader.status_code not in (401, 403), (method, path, reader.text)
        else:
            assert reader.status_code == 403, (method, path, reader.text)
        if method == "GET":
            admin = served.call(method, path, tokens["admin"])
            assert admin.status_code not in (401, 403), (method, path, admin.text)


def test_a_cloud_reader_follows_the_event_stream(served: Served, tokens: dict[str, str]) -> None:
    url = f"{served.server.api_url}/v1/events/stream"
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", url, headers={"X-Auth-Token": tokens["cloud-reader"]}) as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")


def test_an_admin_changes_and_a_reader_sees_it(served: Served, tokens: dict[str, str]) -> None:
    made = served.call("POST", "/v1/segments", tokens["admin"], json={"name": "az-ks"})
    assert made.status_code == 201, made.text
    listed = served.call("GET", "/v1/segments", tokens["cloud-reader"])
    assert "az-ks" in [s["name"] for s in listed.json()]
    refused = served.call("DELETE", "/v1/segments/az-ks", tokens["cloud-reader"])
    assert refused.status_code == 403
    assert refused.json()["detail"] == "policy does not allow vigil:segments:delete"
    assert served.call("DELETE", "/v1/segments/az-ks", tokens["admin"]).status_code == 204


def test_a_revoked_token_is_refused(served: Served, keystone: Keystone) -> None:
    token = keystone.token("admin")
    assert served.call("GET", "/v1/hosts", token).status_code == 200
    admin = keystone.token("admin")
    revoked = httpx.delete(
        f"{keystone.auth_url}/auth/tokens",
        headers={"X-Auth-Token": admin, "X-Subject-Token": token},
        timeout=10,
    )
    assert revoked.status_code == 204
    # keystonemiddleware keeps what it validated for a while (token_cache_time, 5 s
    # here): a revoked token may pass until then; then it is refused.
    deadline = time.monotonic() + 30
    while served.call("GET", "/v1/hosts", token).status_code == 200:
        assert time.monotonic() < deadline, "a revoked token still accepted"
        time.sleep(2)
    assert served.call("GET", "/v1/hosts", token).status_code == 401


def test_an_expired_token_is_refused(served: Served, keystone: Keystone) -> None:
    token = keystone.token("cloud-reader", system=True)
    assert served.call("GET", "/v1/hosts", token).status_code == 200
    time.sleep(EXPIRATION + 1)
    answer = served.call("GET", "/v1/hosts", token)
    assert answer.status_code == 401, answer.text
    answer = served.call("GET", "/instance-ha/v1/segments", token)
    assert answer.status_code == 401, answer.text


def test_openstacksdk_instance_ha_through_keystone(served: Served, keystone: Keystone) -> None:
    """A Masakari client as an operator runs it: a password, the catalog's instance-ha
    endpoint (vigil's), the admin's rights under Masakari's rule names."""
    with keystone.in_catalog("instance-ha", f"{served.server.api_url}/instance-ha/v1"):
        conn = keystone.connect("admin")
        made: Any = conn.instance_ha.create_segment(
            name="ks-seg", recovery_method="auto", service_type="COMPUTE"
        )
        assert made.name == "ks-seg"
        assert "ks-seg" in [s.name for s in conn.instance_ha.segments()]
        conn.instance_ha.delete_segment(made.id)
        member = keystone.connect("alpha-member")
        with pytest.raises(openstack.exceptions.ForbiddenException):
            list(member.instance_ha.segments())


def test_the_cli_authenticates_with_keystone(
    served: Served,
    keystone: Keystone,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``vigil --os-cloud`` as an operator runs it: clouds.yaml (the tier's), a token
    from Keystone; an admin creates, a project member is refused with the rule named."""
    from vigil.cli.main import main

    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", keystone.info["clouds_yaml"])
    monkeypatch.delenv("VIGIL_TOKEN", raising=False)
    url = served.server.api_url
    assert main(["--url", url, "--os-cloud", "keystone-admin", "segment", "create", "az-cli"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("OS_CLOUD", "keystone-admin")
    assert main(["--url", url, "--json", "segment", "list"]) == 0
    assert "az-cli" in capsys.readouterr().out
    code = main(["--url", url, "--os-cloud", "keystone-alpha-member", "segment", "list"])
    assert code == 1
    assert "policy does not allow vigil:segments:list" in capsys.readouterr().err
    assert main(["--url", url, "segment", "delete", "az-cli"]) == 0
