"""Bad input on the Masakari routes: a 4xx in Masakari's fault format naming what is
wrong — never a 5xx, never a silently coerced value — and the routes' description in
their own OpenAPI document (/instance-ha/openapi.json)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .test_api import error, host, notify, segment
from .vigil_masakari import Running

pytestmark = pytest.mark.masakari
HUGE = str(2**64)


@pytest.mark.parametrize(
    "path",
    [
        f"/segments/{HUGE}",
        f"/segments/{HUGE}/hosts",
        f"/notifications/{HUGE}",
        "/segments/1%0A2",
        "/x%0Ay",  # a newline: the mount never reaches the Masakari app
    ],
)
def test_an_unknown_or_impossible_id_is_masakaris_404(vigil: Running, path: str) -> None:
    with vigil.masakari() as c:
        assert "itemNotFound" in error(c.get(path), 404)


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"sort_dir": "sideways"}, "sort_dir"),
        ({"sort_key": "colour"}, "sort_key"),
        ({"marker": "nowhere"}, "Marker"),
        ({"enabled": "perhaps"}, "enabled"),
    ],
)
def test_list_parameters_are_checked(vigil: Running, params: dict[str, str], names: str) -> None:
    with vigil.masakari() as c:
        assert names in error(c.get("/segments", params=params), 400)


def test_a_huge_limit_is_the_most_not_an_error(vigil: Running) -> None:
    with vigil.masakari() as c:
        assert c.get("/segments", params={"limit": HUGE}).json() == {"segments": []}


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not json",
        b'{"segment": {"name": 5, "recovery_method": "auto", "service_type": "COMPUTE"}}',
        b'{"segment": {"name": "s", "recovery_method": "auto", "service_type": true}}',
        b'{"segment": {"name": "s", "recovery_method": "auto", "service_type": "C"}, "x": 1}',
        b'{"segment": {"name": "s", "recovery_method": "auto", "service_type": "C", '
        b'"description": "' + b"x" * 256 + b'"}}',
    ],
)
def test_a_malformed_or_mistyped_segment_is_a_400(vigil: Running, body: bytes) -> None:
    with vigil.masakari("1.2") as c:
        response = c.post("/segments", content=body, headers={"Content-Type": "application/json"})
        assert "badRequest" in error(response, 400)
        assert c.get("/segments").json() == {"segments": []}


@pytest.mark.parametrize("enabled", ["perhaps", 2, None])
def test_enabled_is_a_boolean_not_coerced(vigil: Running, enabled: Any) -> None:
    with vigil.masakari("1.2") as c:
        body = {"name": "s", "recovery_method": "auto", "service_type": "COMPUTE"}
        response = c.post("/segments", json={"segment": {**body, "enabled": enabled}})
        assert "enabled" in error(response, 400)


@pytest.mark.parametrize(
    "generated",
    [
        "not a time",
        "9999-12-31T23:59:59-12:00",  # year 10000 in UTC: it could never be shown again
        "0001-01-01T00:00:00+14:00",  # year 0 in UTC
    ],
)
def test_a_notification_time_out_of_range_is_a_400_not_a_500(
    vigil: Running, generated: str
) -> None:
    with vigil.masakari() as c:
        seg = segment(c, "rack")
        host(c, seg["uuid"], "compute-1")
        body = {
            "type": "VM",
            "hostname": "compute-1",
            "generated_time": generated,
            "payload": {
                "instance_uuid": "6f0b7a36-1c7e-4f5c-9d55-6a0c2f1e9b11",
                "vir_domain_event": "STOPPED_FAILED",
                "event": "LIFECYCLE",
            },
        }
        response = c.post("/notifications", json={"notification": body})
        assert "generated_time" in error(response, 400)
        assert c.get("/notifications").json() == {"notifications": []}
        since = c.get("/notifications", params={"generated-since": generated})
        assert "generated-since" in error(since, 400)


def test_a_payload_value_must_be_a_string(vigil: Running) -> None:
    with vigil.masakari() as c:
        seg = segment(c, "rack")
        host(c, seg["uuid"], "compute-1")
        bad = notify(c, "compute-1", "COMPUTE_HOST", {"event": 1})  # type: ignore[dict-item]
        assert "payload" in error(bad, 400)


def test_wrong_method_names_every_method_of_the_path(vigil: Running) -> None:
    with vigil.masakari() as c:
        response = c.patch("/segments")
        assert "badMethod" in error(response, 405)
        assert set(response.headers["Allow"].split(", ")) == {"GET", "POST"}


def test_the_masakari_routes_have_their_own_openapi_document(vigil: Running) -> None:
    doc = httpx.get(f"{vigil.server.api_url}/instance-ha/openapi.json").json()
    assert doc["servers"] == [{"url": "/instance-ha"}]
    create = doc["paths"]["/v1/segments"]["post"]
    assert set(create["responses"]) == {"201", "400", "401", "404", "406", "409"}
    fault = create["responses"]["409"]["content"]["application/json"]["schema"]
    assert fault["maxProperties"] == 1
    assert "ShowSegment" in create["responses"]["201"]["links"]
    assert doc["components"]["securitySchemes"]["token"]["name"] == "X-Auth-Token"
    assert doc["paths"]["/"]["get"]["security"] == []
    hosts = doc["paths"]["/v1/{project_id}/segments/{segment_id}/hosts"]["post"]
    assert [p["name"] for p in hosts["parameters"] if p["in"] == "path"] == [
        "project_id",
        "segment_id",
    ]
    assert "503" in hosts["responses"]  # Nova did not answer
