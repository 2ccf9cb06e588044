"""The REST API as a client sees it: auth, 4xx for bad input naming the field, and a
refused request changing nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from vigil.cli.demo import DemoOptions, Harness


@pytest.fixture(scope="module")
def h() -> Iterator[Harness]:
    with Harness(DemoOptions(hosts=2, instances=2)) as harness:
        yield harness


def state(api: httpx.Client) -> Any:
    return (
        api.get("/v1/segments").json(),
        api.get("/v1/hosts").json(),
        api.get("/v1/instances").json(),
    )


def _without_ages(s: Any) -> Any:
    segments, hosts, instances = s
    return segments, [{**x, "heartbeat_age": None} for x in hosts], instances


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "names"),
    [
        ("post", "/v1/segments", {"name": "bad name!"}, 422, "name"),
        ("post", "/v1/segments", {"name": "s2", "max_failed_share": 2}, 422, "max_failed_share"),
        ("post", "/v1/segments", {"name": "s2", "colour": "red"}, 422, "colour"),
        (
            "post",
            "/v1/segments",
            {"name": "s2", "default_policy": "sometimes"},
            422,
            "default_policy",
        ),
        ("post", "/v1/segments", {"name": "demo"}, 409, "demo"),
        ("post", "/v1/hosts", {"name": "compute-9", "segment": "nowhere"}, 404, "nowhere"),
        ("post", "/v1/hosts", {"name": "compute-1", "segment": "demo"}, 409, "compute-1"),
        (
            "post",
            "/v1/hosts",
            {"name": "compute-9", "segment": "demo", "fencing": [{"driver": "magic"}]},
            422,
            "driver",
        ),
        (  # a batch is all or none: the good host in it is not created either
            "post",
            "/v1/host-batches",
            {
                "hosts": [
                    {"name": "compute-8", "segment": "demo"},
                    {"name": "compute-9", "segment": "nowhere"},
                ]
            },
            404,
            "nowhere",
        ),
        (
            "post",
            "/v1/host-batches",
            {
                "hosts": [
                    {"name": "compute-8", "segment": "demo"},
                    {"name": "compute-2", "segment": "demo"},
                ]
            },
            409,
            "compute-2",
        ),
        (
            "post",
            "/v1/host-batches",
            {"hosts": [{"name": "twin", "segment": "demo"}, {"name": "twin", "segment": "demo"}]},
            400,
            "twin",
        ),
        ("post", "/v1/host-batches", {"hosts": []}, 422, "hosts"),
        ("patch", "/v1/hosts/compute-1", {"maintenance": "perhaps"}, 422, "maintenance"),
        ("patch", "/v1/hosts/compute-1", {"state": "up"}, 422, "state"),
        ("patch", "/v1/hosts/compute-9", {"maintenance": True}, 404, "compute-9"),
        (
            "patch",
            "/v1/segments/demo",
            {"max_parallel_evacuations": 0},
            422,
            "max_parallel_evacuations",
        ),
        ("delete", "/v1/segments/demo", None, 409, "demo"),
        ("post", "/v1/hosts/compute-1/restore", None, 409, "only a recovered host"),
        ("put", "/v1/instances/x/policy", {"policy": "always"}, 422, "policy"),
        ("post", "/v1/control/pause", {}, 422, "reason"),
        ("get", "/v1/recoveries/999", None, 404, "999"),
        ("get", "/v1/failures", {"limit": 0}, 422, "limit"),
    ],
)
def test_bad_request_is_refused_naming_the_problem_and_changes_nothing(
    h: Harness, method: str, path: str, body: Any, status: int, names: str
) -> None:
    before = _without_ages(state(h.client))
    if method == "get":
        response = h.client.get(path, params=body)
    elif body is None:
        response = h.client.request(method.upper(), path)
    else:
        response = h.client.request(method.upper(), path, json=body)
    assert response.status_code == status, response.text
    assert names in response.text
    assert _without_ages(state(h.client)) == before


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_every_v1_route_needs_the_token_and_refusals_are_logged(
    h: Harness, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    anon = httpx.Client(base_url=h.server.api_url, headers=headers)
    with caplog.at_level(logging.WARNING, logger="vigil.api"):
        assert anon.get("/v1/hosts").status_code == 401
        assert anon.post("/v1/segments", json={"name": "sneaky"}).status_code == 401
        assert anon.post("/v1/control/pause", json={"reason": "x"}).status_code == 401
    assert "refused" in caplog.text
    assert all(s["name"] != "sneaky" for s in h.client.get("/v1/segments").json())
    assert not h.client.get("/v1/control").json()["paused"]
    assert anon.get("/healthz").status_code == 200


def test_hosts_registered_in_a_batch_come_up_like_any(h: Harness) -> None:
    api = h.client
    created = api.post(
        "/v1/host-batches",
        json={"hosts": [{"name": f"late-{i}", "segment": "demo"} for i in range(3)]},
    )
    assert created.status_code == 201, created.text
    assert [x["name"] for x in created.json()] == ["late-0", "late-1", "late-2"]
    assert {x["state"] for x in created.json()} == {"new"}
    hosts = {x["name"]: x for x in api.get("/v1/hosts").json()}
    assert {"late-0", "late-1", "late-2"} <= set(hosts)
    for i in range(3):
        assert api.delete(f"/v1/hosts/late-{i}").status_code == 204


def test_crud_round_trip_and_secrets_never_returned(h: Harness) -> None:
    api = h.client
    created = api.post("/v1/segments", json={"name": "edge", "default_policy": "notify"})
    assert created.status_code == 201 and created.json()["default_policy"] == "notify"
    host = api.post(
        "/v1/hosts",
        json={
            "name": "edge-1",
            "segment": "edge",
            "reserved": True,
            "fencing": [{"driver": "sim", "options": {"host": "edge-1", "password": "s3cret"}}],
        },
    )
    assert host.status_code == 201, host.text
    assert "s3cret" not in host.text and "s3cret" not in api.get("/v1/hosts").text
    assert api.get("/v1/hosts/edge-1").json()["fencing"][0]["options"]["password"] == "***"
    # a refused request does not echo the secret either
    refused = api.patch(
        "/v1/hosts/edge-1",
        json={"fencing": [{"driver": "sim", "options": {"password": ["s3cret"]}}]},
    )
    assert refused.status_code == 422 and "password" in refused.text
    assert "s3cret" not in refused.text
    patched = api.patch("/v1/hosts/edge-1", json={"maintenance": True})
    assert patched.json()["maintenance"] is True
    assert api.delete("/v1/segments/edge").status_code == 409  # it has a host
    assert api.delete("/v1/hosts/edge-1").status_code == 204
    assert api.delete("/v1/segments/edge").status_code == 204
    assert api.get("/v1/segments/edge").status_code == 404


def test_instance_policy_override_wins_over_metadata(h: Harness) -> None:
    api = h.client
    (listed,) = api.get("/v1/instances", params={"host": "compute-1"}).json()
    assert listed["policy"] == "keep-running" and listed["policy_source"] == "metadata"
    api.put(f"/v1/instances/{listed['id']}/policy", json={"policy": "off", "priority": 5})
    shown = api.get(f"/v1/instances/{listed['id']}").json()
    assert (shown["policy"], shown["priority"], shown["policy_source"]) == ("off", 5, "override")
    assert api.delete(f"/v1/instances/{listed['id']}/policy").status_code == 204
    assert api.get(f"/v1/instances/{listed['id']}").json()["policy_source"] == "metadata"


def test_openapi_document_describes_the_api(h: Harness) -> None:
    doc = httpx.get(f"{h.server.api_url}/openapi.json").json()
    assert doc["info"]["title"] == "vigil"
    for path in (
        "/v1/segments",
        "/v1/hosts/{name}/restore",
        "/v1/recoveries/{recovery_id}",
        "/v1/control/pause",
    ):
        assert path in doc["paths"]
