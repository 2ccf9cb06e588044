"""Issue 13's bad inputs, each a 4xx naming the field in the one declared error shape —
never a 5xx, never a silently coerced value — against a real vigil-server on the
simulated cloud."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from vigil.cli.demo import DemoOptions, Harness

HUGE = 2**63  # one more than SQLite's INTEGER (and BIGINT) holds
HUGER = 10**30


@pytest.fixture(scope="module")
def h() -> Iterator[Harness]:
    with Harness(DemoOptions(hosts=2, instances=2)) as harness:
        yield harness


def field_named(response: httpx.Response, field: str) -> None:
    """A 422 in the declared shape: a list of {loc, msg, type}, one naming ``field``."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert all(set(d) == {"loc", "msg", "type"} for d in detail), detail
    assert any(field in [str(part) for part in d["loc"]] for d in detail), detail


@pytest.mark.parametrize("big", [HUGE, HUGER])
@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/v1/recoveries/{}", "recovery_id"),
        ("POST", "/v1/recoveries/{}/retry", "recovery_id"),
        ("GET", "/v1/failures/{}", "failure_id"),
        ("POST", "/v1/failures/{}/handled", "failure_id"),
        ("POST", "/v1/failures/{}/dismiss", "failure_id"),
        ("GET", "/v1/guest-failures/{}", "failure_id"),
        ("POST", "/v1/guest-failures/{}/handled", "failure_id"),
    ],
)
def test_an_id_no_store_can_hold_is_a_422_naming_it(
    h: Harness, method: str, path: str, field: str, big: int
) -> None:
    body = {} if method == "POST" else None
    field_named(h.client.request(method, path.format(big), json=body), field)


def test_the_largest_id_a_store_holds_is_just_not_found(h: Harness) -> None:
    response = h.client.get(f"/v1/recoveries/{HUGE - 1}")
    assert response.status_code == 404 and isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("bad", [HUGE, -1, "x"])
def test_an_events_cursor_out_of_range_is_a_422(h: Harness, bad: Any) -> None:
    field_named(h.client.get("/v1/events", params={"after": bad}), "after")


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [
        ({"after": HUGE}, {}, "after"),
        ({"after": -1}, {}, "after"),
        ({}, {"Last-Event-ID": str(HUGE)}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ],
)
def test_the_event_stream_validates_before_it_starts(
    h: Harness, params: dict[str, Any], headers: dict[str, str], field: str
) -> None:
    """A 422 at once, not a 200 whose stream then breaks."""
    with h.client.stream("GET", "/v1/events/stream", params=params, headers=headers) as r:
        r.read()
        field_named(r, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "s9", "max_failed_share": False}, "max_failed_share"),
        ({"name": "s9", "max_failed_share": "0.5"}, "max_failed_share"),
        ({"name": "s9", "max_parallel_evacuations": True}, "max_parallel_evacuations"),
        ({"name": "s9", "max_parallel_evacuations": "4"}, "max_parallel_evacuations"),
        ({"name": "s9", "max_parallel_evacuations": 4.5}, "max_parallel_evacuations"),
        ({"name": 9}, "name"),
    ],
)
def test_wrongly_typed_values_are_refused_not_coerced(
    h: Harness, body: dict[str, Any], field: str
) -> None:
    field_named(h.client.post("/v1/segments", json=body), field)
    assert h.client.get("/v1/segments/s9").status_code == 404  # nothing stored


@pytest.mark.parametrize(
    ("body", "field"),
    [({"paused": "false"}, "paused"), ({"max_failed_share": False}, "max_failed_share")],
)
def test_a_patch_is_strict_too(h: Harness, body: dict[str, Any], field: str) -> None:
    before = h.client.get("/v1/segments/demo").json()
    field_named(h.client.patch("/v1/segments/demo", json=body), field)
    assert h.client.get("/v1/segments/demo").json() == before


def test_host_flags_and_priorities_are_strict(h: Harness) -> None:
    field_named(h.client.patch("/v1/hosts/compute-1", json={"reserved": 1}), "reserved")
    field_named(
        h.client.put("/v1/instances/x/policy", json={"policy": "off", "priority": "5"}),
        "priority",
    )


def test_an_integer_share_is_still_a_number(h: Harness) -> None:
    """Strict is not pedantic: JSON's 1 is a valid share."""
    made = h.client.post("/v1/segments", json={"name": "whole", "max_failed_share": 1})
    assert made.status_code == 201 and made.json()["max_failed_share"] == 1.0
    assert h.client.delete("/v1/segments/whole").status_code == 204


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"url": "ftp://noc.example/x"}, ["body", "url"]),
        ({"event_types": ["vigil.nothing"]}, ["body", "event_types", 0]),
    ],
)
def test_a_subscription_refusal_has_the_declared_shape(
    h: Harness, body: dict[str, Any], loc: list[Any]
) -> None:
    full = {"name": "noc", "url": "https://noc.example/x", "secret": "s" * 16, **body}
    response = h.client.post("/v1/subscriptions", json=full)
    field_named(response, str(loc[1]))
    assert response.json()["detail"][0]["loc"] == loc


def test_every_refusal_a_route_answers_is_in_the_openapi_document(h: Harness) -> None:
    doc = httpx.get(f"{h.server.api_url}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["Problem"]["properties"]["detail"]["type"] == "string"
    retry = doc["paths"]["/v1/recoveries/{recovery_id}/retry"]["post"]
    assert {"401", "404", "409", "422"} <= set(retry["responses"])
    param = retry["parameters"][0]["schema"]
    assert (param["minimum"], param["maximum"]) == (1, HUGE - 1)
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            if path.startswith("/v1/") and not path.startswith("/v1/agents/"):
                assert "401" in op["responses"], (method, path)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/segments/nowhere", 404),
        ("DELETE", "/v1/segments/demo", 409),
        ("POST", "/v1/hosts/compute-1/restore", 409),
    ],
)
def test_other_refusals_are_a_detail_string(
    h: Harness, method: str, path: str, status: int
) -> None:
    response = h.client.request(method, path)
    assert response.status_code == status
    assert set(response.json()) == {"detail"} and isinstance(response.json()["detail"], str)


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/segments/a%00b", None, "name"),
        ("/v1/hosts/a%01b", None, "name"),
        ("/v1/instances/x%00", None, "instance_id"),
        ("/v1/hosts", {"segment": "a\x00b"}, "segment"),
        ("/v1/failures", {"host": "a\x00"}, "host"),
    ],
)
def test_a_control_character_in_a_name_is_a_422_not_a_database_error(
    h: Harness, path: str, params: dict[str, str] | None, field: str
) -> None:
    """PostgreSQL refuses a NUL in text: it must never reach the store."""
    field_named(h.client.get(path, params=params), field)
